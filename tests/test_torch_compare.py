"""The PyTorch comparison (``python -m pnn_mpi.commands.torch_compare``): what each mode runs, and the local mode's
averaging budget.

PyTorch is optional: the settings and the period arithmetic need no torch; the tests that read
PyTorch's averager or run the comparison skip when torch is not installed.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, clean_env, mpiexec_path
from pnn_mpi.training import defaults
from pnn_mpi.training.config import TrainConfig


@pytest.fixture(scope="module")
def tc():
    """The module, imported without leaving its thread settings (OMP_NUM_THREADS=1, ...) in this process."""
    saved = dict(os.environ)
    module = importlib.import_module("pnn_mpi.commands.torch_compare")
    os.environ.clear()
    os.environ.update(saved)
    return module


def _config(tc, mode: str, ranks: int, *flags: str) -> TrainConfig:
    return tc.mode_config(tc._parser().parse_args(list(flags)), mode, ranks)


@pytest.mark.parametrize("mode", ["end", "grad"])
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_end_and_grad_keep_their_fixed_settings(tc, mode, ranks):
    cfg = _config(tc, mode, ranks)
    assert (cfg.lr, cfg.lr_schedule, cfg.warmup, cfg.epochs, cfg.momentum, cfg.sync) == (0.05, "constant", 0, 2, 0.9, mode)


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_local_runs_the_projects_defaults(tc, ranks):
    cfg = _config(tc, "local", ranks)
    plain = TrainConfig(sync=defaults.MINI_BATCH_SYNC).resolved(ranks)  # what `pnn_mpi` runs on these ranks
    assert cfg.sync == "local:5:64"
    assert (cfg.lr, cfg.lr_schedule, cfg.warmup, cfg.epochs, cfg.momentum) == (plain.lr, plain.lr_schedule, plain.warmup, plain.epochs, plain.momentum)
    assert cfg.lr == pytest.approx(min(0.25, 0.05 * (1 + math.log2(ranks))))  # 0.05, 0.1, 0.15, 0.2


@pytest.mark.parametrize("mode", ["end", "grad", "local"])
def test_flags_override_every_mode(tc, mode):
    cfg = _config(tc, mode, 2, "--lr", "0.2", "--lr-schedule", "cosine", "--warmup", "1", "--epochs", "3")
    assert (cfg.lr, cfg.lr_schedule, cfg.warmup, cfg.epochs) == (0.2, "cosine", 1, 3)


@pytest.mark.parametrize("installed", [True, False])
def test_pnn_mpi_takes_its_fastest_step_unless_told(tc, monkeypatch, installed):
    """numba's step where numba is installed, numpy's where not; --kernel picks either in every mode."""
    monkeypatch.setattr(tc, "numba_available", lambda: installed)
    assert {_config(tc, mode, 2).kernel for mode in ("end", "grad", "local")} == {"numba" if installed else "numpy"}
    assert _config(tc, "local", 2, "--kernel", "numpy").kernel == "numpy"
    assert _config(tc, "end", 2, "--kernel", "numba").kernel == "numba"


def _averages(steps: int, warmup_steps: int, period: int) -> int:
    """PeriodicModelAverager's averages over ``steps`` steps (after step W, then every period), plus a final one
    when the last step did not average: its rule, written out."""
    fired = [s for s in range(warmup_steps, steps) if (s - warmup_steps) % period == 0]
    return len(fired) + (bool(fired) and fired[-1] != steps - 1)


@pytest.mark.parametrize(("steps", "warmup_steps", "target"), [(940, 188, 88), (470, 0, 31), (100, 0, 100), (100, 40, 1), (50, 0, 500), (94, 94, 10)])
def test_matching_period_comes_closest(tc, steps, warmup_steps, target):
    period = tc.matching_period(steps, warmup_steps, target)
    if steps > warmup_steps:
        best = min(abs(_averages(steps, warmup_steps, p) - target) for p in range(1, steps - warmup_steps + 1))
        assert abs(_averages(steps, warmup_steps, period) - target) == best
    assert period >= 1


def test_matching_period_reads_pytorchs_averager(tc, monkeypatch):
    """The rule that matching_period assumes is the one PeriodicModelAverager follows."""
    averagers = pytest.importorskip("torch.distributed.algorithms.model_averaging.averagers")
    fired: list[int] = []
    monkeypatch.setattr(averagers.utils, "average_parameters_or_parameter_groups", lambda params, group: fired.append(len(fired)))
    for steps, warmup_steps, target in [(940, 188, 88), (470, 0, 31), (300, 30, 7)]:
        period = tc.matching_period(steps, warmup_steps, target)
        averager = averagers.PeriodicModelAverager(period, warmup_steps, process_group=object())  # no collective: patched
        fired.clear()
        last = []
        for _ in range(steps):
            before = len(fired)
            averager.average_parameters([])
            last.append(len(fired) > before)
        assert len(fired) + (not last[-1]) == _averages(steps, warmup_steps, period)


@pytest.mark.slow
def test_local_against_post_local_sgd(mnist_dir):
    """Two ranks, a short run: both sides learn, PyTorch's gradient Allreduces are its warm-up's steps,
    and its averages come close to pnn_mpi's."""
    pytest.importorskip("torch.distributed.algorithms.model_averaging.averagers")
    command = [mpiexec_path(), "-n", "2", sys.executable, "-m", "pnn_mpi.commands.torch_compare"]
    args = ["--modes", "end", "local", "--train-size", "2000", "--epochs", "3", "--warmup", "1", "--repeats", "1"]
    env = clean_env(PNN_MPI_DATA=str(mnist_dir), OMP_NUM_THREADS="1")
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    row = re.search(r"^\(c\) local:5:64 .*?([\d.]+)% / ([\d.]+)%\s+(\d+) / (\d+)$", out, re.M)
    assert row, out
    ours, theirs = float(row[1]), float(row[2])
    assert ours > 85 and theirs > 85, out
    assert re.search(r"^\(a\) local SGD, one average at the end .* 1 / 1$", out, re.M), out
    warmup_steps = "32"  # one warm-up epoch of ceil(1000 / 32) steps
    warm = re.search(r"warmup_steps=(\d+)\): DDP gradient averaging for \d+ steps \((\d+) Allreduces", out)
    assert warm and warm[1] == warm[2] == warmup_steps, out
    counts = re.search(r"pnn_mpi: (\d+) averages.*then (\d+) averages", out, re.S)
    assert counts, out
    pnn_averages, torch_averages = int(counts[1]), int(counts[2])
    assert int(row[3]) == pnn_averages and int(row[4]) == int(warmup_steps) + torch_averages
    assert abs(torch_averages - pnn_averages) <= max(2, pnn_averages // 10), out


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_time_to_accuracy_pits_the_default_against_pnn_mpis_grad_recipe(tc, ranks):
    """The default run and DDP's are the runs pnn_mpi itself makes of local and grad on these ranks, scored every epoch."""
    ours, theirs = tc.time_configs(tc._parser().parse_args([]), ranks)
    local, grad = (TrainConfig(sync=s).resolved(ranks) for s in (defaults.MINI_BATCH_SYNC, "grad"))
    assert (ours.sync, ours.lr, ours.warmup, ours.epochs, ours.eval_every) == (local.sync, local.lr, local.warmup, local.epochs, 1)
    assert (theirs.sync, theirs.lr, theirs.warmup, theirs.epochs, theirs.eval_every) == ("grad", grad.lr, grad.warmup, grad.epochs, 1)


@pytest.mark.parametrize(
    "times, accuracies, reached",
    [([1.0, 2.0, 3.0], [0.9, 0.98, 0.99], (2.0, 2)), ([1.0, 2.0], [0.9, 0.97], (float("nan"), 0)), ([4.0], [0.981], (4.0, 1))],
)
def test_time_to_accuracy_is_the_first_epoch_at_the_target(tc, times, accuracies, reached):
    seconds, epoch = tc._first_reaching(times, accuracies, 0.98)
    assert epoch == reached[1] and (seconds == reached[0] or (epoch == 0 and seconds != seconds))


@pytest.mark.slow
def test_time_to_accuracy_runs_both_sides(mnist_dir):
    """Two ranks, a short run to a low target: both sides reach it and the line names epochs and seconds."""
    pytest.importorskip("torch.distributed")
    command = [mpiexec_path(), "-n", "2", sys.executable, "-m", "pnn_mpi.commands.torch_compare"]
    args = ["--modes", "time", "--train-size", "2000", "--epochs", "2", "--repeats", "1", "--target", "0.5"]
    env = clean_env(PNN_MPI_DATA=str(mnist_dir), OMP_NUM_THREADS="1")
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600, env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = re.search(r"^time to 50% .*pnn_mpi ([\d.]+) s \(epoch (\d)\).*PyTorch DDP ([\d.]+) s \(epoch (\d)\).*ratio ([\d.]+)x$", proc.stdout, re.M)
    assert line, proc.stdout
