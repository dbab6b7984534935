"""The plot command on a real run's metrics.json, and without matplotlib."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from conftest import REPO, clean_env, run_pnn


@pytest.fixture(scope="module")
def real_run(mnist_dir, tmp_path_factory):
    """A real short run on MNIST at 2 ranks: 4,000 samples, 3 epochs."""
    out = tmp_path_factory.mktemp("run") / "run"
    proc = run_pnn("--train-size", "4000", "--test-size", "1000", "--epochs", "3", "--out", str(out), ranks=2, env=clean_env(PNN_MPI_DATA=str(mnist_dir)))
    assert proc.returncode == 0, proc.stderr
    return out


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plot_draws_a_real_runs_curves(real_run, tmp_path):
    proc = run_pnn("plot", str(real_run))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {real_run / 'curves.png'}"
    assert _png_size(real_run / "curves.png") == (1300, 400)
    # --out elsewhere; the figure shows what metrics.json holds (3 epochs, 2 local networks)
    target = tmp_path / "mine.png"
    assert run_pnn("plot", str(real_run / "metrics.json"), "--out", str(target)).returncode == 0
    assert target.stat().st_size > 20_000
    record = json.loads((real_run / "metrics.json").read_text())
    assert len(record["epochs"]) == 3 and len(record["local_test_accuracy"]["per_rank"]) == 2


def test_plot_never_writes_through_a_planted_link(real_run, tmp_path):
    """A curves.png planted in the run folder as a link to another file: the plot replaces the
    link with a file of its own, and the file the link named is left as it was."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = real_run / "curves.png"
    planted.unlink(missing_ok=True)
    planted.symlink_to(victim)
    proc = run_pnn("plot", str(real_run))
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "keep me"
    assert not planted.is_symlink() and _png_size(planted) == (1300, 400)


def test_plot_user_errors_are_one_line(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    for args in ([str(tmp_path / "none")], [str(tmp_path)]):
        proc = run_pnn("plot", *args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("pnn_mpi: error: ")


def test_without_matplotlib_one_line_names_the_extra(real_run):
    code = f"import sys; sys.modules['matplotlib'] = None; from pnn_mpi.commands.cli import main; raise SystemExit(main(['plot', {str(real_run)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr == 'pnn_mpi: error: plots need matplotlib: pip install "pnn_mpi[plot]"\n'
