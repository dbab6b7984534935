"""The test suite itself (issue 11): it fails loudly without the real MNIST instead of a green run
of skips, and under MPI it names the MPI once, not in a block per rank."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import REPO, WITHOUT_MNIST, clean_env, mpiexec_path


def _run_copy(tmp_path, **extra: str) -> subprocess.CompletedProcess:
    """This conftest beside one real-data test, in a folder with no MNIST anywhere it looks."""
    tests = tmp_path / "checkout" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_needs_mnist.py").write_text("def test_real(mnist_dir):\n    assert mnist_dir.is_dir()\n")
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if k != WITHOUT_MNIST}
    env.update(PNN_MPI_DATA=str(tmp_path / "empty"), HOME=str(tmp_path), PYTHONPATH=str(REPO), **extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no", str(tests)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


def test_a_test_that_finds_no_mnist_fails_and_says_how_to_get_it(tmp_path):
    proc = _run_copy(tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "1 error" in proc.stdout and "real MNIST not found" in proc.stdout
    assert "make data" in proc.stdout and WITHOUT_MNIST in proc.stdout


def test_the_opt_out_skips_them(tmp_path):
    proc = _run_copy(tmp_path, **{WITHOUT_MNIST: "1"})
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout


def test_make_test_fetches_or_finds_the_data_first():
    proc = subprocess.run(["make", "-n", "test"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    fetch = next(i for i, line in enumerate(lines) if "download --dataset mnist --if-missing" in line)
    assert fetch < next(i for i, line in enumerate(lines) if "-m pytest" in line)


def test_under_mpi_the_banner_is_one_line_from_rank_0(tmp_path):
    tests = tmp_path / "checkout" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "conftest.py", tests / "conftest.py")
    (tests / "test_two.py").write_text("import pytest\n\n@pytest.mark.mpi(min_size=2)\ndef test_two():\n    pass\n")
    proc = subprocess.run(
        [mpiexec_path(), "-n", "2", sys.executable, "-m", "pytest", "--with-mpi", "-q", "-p", "no:cacheprovider", "--color=no", str(tests)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MPI Information" not in proc.stdout and "mpi4py config" not in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("MPI: ")]) == 1, proc.stdout
