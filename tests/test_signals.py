"""Stop requests that come before training is ready (issue 11: SLURM may signal a job at once)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, clean_env
from pnn_mpi.__main__ import _trains


def test_a_signal_before_the_run_starts_is_kept_for_it():
    code = "import os, signal; from pnn_mpi.parallel import signals; signals.listen_early(); os.kill(os.getpid(), signal.SIGUSR1); print(signals.StopRequest().install()())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=REPO)
    assert proc.stdout.strip() == "SIGUSR1", proc.stderr


@pytest.mark.parametrize(
    "argv, trains",
    [
        ([], True),
        (["--epochs", "2"], True),
        (["train"], True),
        (["--no-shuffle"], True),
        (["-n", "4"], False),
        (["-n4"], False),
        (["--np=2"], False),
        (["launch", "-n", "2"], False),
        (["evaluate", "--model", "m"], False),
        (["download"], False),
    ],
)
def test_only_training_defers_the_stop_signals(argv, trains):
    """Other commands keep SIGTERM's default (they have no checkpoint to write)."""
    assert _trains(argv) is trains
