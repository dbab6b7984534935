"""Progress lines inside long epochs: their pace, and that they cost no collective."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from conftest import REPO, clean_env, learnable_images, rank_data, write_dataset
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.pace import Pace
from pnn_mpi.training.train import train


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_line_at_most_every_interval_and_none_at_the_epochs_end():
    clock = FakeClock()
    pace = Pace(5.0, clock)
    pace.start_epoch()
    clock.now += 4.9
    assert pace.line(2, 10, 100, 400, 0.5) is None  # a short epoch prints nothing
    clock.now += 0.2
    assert pace.line(2, 10, 120, 400, 0.5) == "epoch  2/10  step 120/400 (30%)  train loss so far 0.5000  5.1 s into the epoch"
    clock.now += 3.0
    assert pace.line(2, 10, 200, 400, 0.4) is None
    clock.now += 2.5
    assert pace.line(2, 10, 240, 400, 0.4).endswith("10.6 s into the epoch")
    clock.now += 10
    assert pace.line(2, 10, 400, 400, 0.3) is None  # the epoch line follows at once
    assert Pace(0.0, clock).line(1, 1, 1, 9, 0.1) is None  # 0: never


class CountingWorld(SerialWorld):
    def __init__(self):
        self.sums = 0

    def sum_(self, buf):
        self.sums += 1


def _data(n):
    rng = np.random.default_rng(4)
    return rank_data(*learnable_images(n, rng), *learnable_images(20, rng), dtype="float32")


def test_progress_lines_ride_on_the_existing_check_not_a_collective_of_their_own():
    """The same collectives and the same model with progress lines at every check as without any."""
    runs = []
    for every in (0.0, 1e-9):
        world, lines = CountingWorld(), []
        cfg = TrainConfig(hidden=(8,), batch_size=1, kernel="generic", epochs=2, progress_every=every)
        result = train(cfg, world, _data(5000), log=lines.append)
        runs.append((world.sums, result.net.params.tobytes(), [line for line in lines if " step " in line]))
    (quiet_sums, quiet_params, none), (busy_sums, busy_params, progress) = runs
    assert quiet_sums == busy_sums and quiet_params == busy_params and none == []
    # batch 1 checks every 2,048 steps: at 2048 and 4096 of each epoch's 5000 (the end has its epoch line)
    assert [line.split("  train")[0] for line in progress] == [f"epoch {e}/2  step {s}/5000 ({100 * s // 5000}%)" for e in (1, 2) for s in (2048, 4096)]


def test_a_long_epoch_prints_plain_progress_lines(tmp_path):
    """Batch 1 on 6,000 samples with a pace of 0.05 s: lines between the epoch lines, no carriage returns."""
    data = write_dataset(tmp_path / "d", train=6000, test=100, seed=2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pnn_mpi",
            "--dataset",
            "custom",
            "--data-dir",
            str(data),
            "--hidden",
            "8",
            "--batch-size",
            "1",
            "--kernel",
            "generic",
            "--epochs",
            "2",
            "--eval-every",
            "0",
            "--progress-every",
            "0.05",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    progress = [line for line in lines if " step " in line]
    assert progress and all("train loss so far" in line and "s into the epoch" in line for line in progress)
    # Lines come only at the stop checks (every 2048 samples), the first once 0.05 s have passed:
    # at 2048 or, on a machine that takes 2048 steps in less, at 4096.
    assert progress[0].startswith(("epoch 1/2  step 2048/6000 (34%)", "epoch 1/2  step 4096/6000 (68%)"))
    first_epoch_line = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2  lr"))
    assert lines.index(progress[0]) < first_epoch_line
    assert "\r" not in proc.stdout
