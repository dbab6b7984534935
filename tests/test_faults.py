"""Faults under a real launcher: signals, a lost rank, divergence, a full or read-only disk.

Every launch runs under MPIEXEC_TIMEOUT (``clean_env``) and a subprocess
timeout, so a hang fails the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, clean_env, mpiexec_path, run_pnn, write_dataset
from pnn_mpi.training import checkpoint, outdir
from pnn_mpi.training.config import TrainConfig

STOPPED = 75


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=600, test=100, seed=2)


def _args(folder, out, *more):
    return ["--dataset", "custom", "--data-dir", str(folder), "--hidden", "16", "--out", str(out), *more]


def _start(ranks: int, args: list[str], env=None) -> subprocess.Popen:
    command = [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "pnn_mpi", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=env or clean_env(), cwd=REPO)


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return
    proc.kill()
    raise AssertionError(f"no line starting {prefix!r}: {proc.communicate()[1]}")


def _ranks_of(launcher_pid: int) -> list[int]:
    """The pids of the rank processes below the launcher, at any depth (read from /proc):
    Open MPI starts ranks as its children, MPICH's hydra through a proxy process."""
    children: dict[int, list[int]] = {}
    commands: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [launcher_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if b"-m\0pnn_mpi" in commands.get(child, b""):
                found.append(child)
    return sorted(found)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _uninterrupted(tiny, tmp_path, ranks, *flags) -> bytes:
    proc = run_pnn(*_args(tiny, tmp_path / "whole", *flags), ranks=ranks)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "whole" / "model.npz").read_bytes()


LONG = ["--batch-size", "1", "--epochs", "60", "--sync", "end", "--seed", "4"]


def test_sigusr1_to_mpiexec_checkpoints_and_resume_is_bit_identical(tiny, tmp_path):
    """Open MPI's mpiexec passes SIGUSR1 to every rank: all stop at one step, checkpoint, exit 75."""
    expected = _uninterrupted(tiny, tmp_path, 2, *LONG)
    out = tmp_path / "run"
    proc = _start(2, _args(tiny, out, *LONG))
    _wait_for_line(proc, "epoch  3/60")
    proc.send_signal(signal.SIGUSR1)
    code, err = _finish(proc)
    assert code == STOPPED, err
    assert "pnn_mpi: SIGUSR1: stopped in epoch" in err and "--resume" in err
    assert (out / checkpoint.FILE).exists() and not (out / "model.npz").exists()

    resumed = run_pnn(*_args(tiny, out, *LONG, "--resume"), ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert (out / "model.npz").read_bytes() == expected


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tiny, tmp_path):
    """SLURM signals the tasks themselves; a signal seen by one rank is agreed on by all."""
    expected = _uninterrupted(tiny, tmp_path, 3, *LONG, "--sync", "steps:50")
    out = tmp_path / "run"
    proc = _start(3, _args(tiny, out, *LONG, "--sync", "steps:50"))
    _wait_for_line(proc, "epoch  2/60")
    ranks = _ranks_of(proc.pid)
    assert len(ranks) == 3
    os.kill(ranks[1], signal.SIGTERM)
    code, err = _finish(proc)
    assert code == STOPPED, err
    assert "pnn_mpi: SIGTERM: stopped in epoch" in err
    progress, states = checkpoint.load(out / checkpoint.FILE, TrainConfig(dataset="custom", hidden=(16,), batch_size=1, epochs=60, sync="steps:50", seed=4), 3)
    assert len(states) == 3 and progress.epoch >= 1
    resumed = run_pnn(*_args(tiny, out, *LONG, "--sync", "steps:50", "--resume"), ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.npz").read_bytes() == expected


def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_resumes(tiny, tmp_path):
    flags = ["--epochs", "6", "--batch-size", "4", "--checkpoint-every", "1", "--seed", "5"]
    expected = _uninterrupted(tiny, tmp_path, 2, *flags)
    out = tmp_path / "run"
    began = time.monotonic()
    proc = run_pnn(*_args(tiny, out, *flags), ranks=2, env=clean_env(PNN_MPI_INJECT="kill:1:4"), timeout=60)
    assert time.monotonic() - began < 30
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    # Open MPI names the lost rank; MPICH's hydra names its PID and the signal.
    assert ("rank 1" in said and "signal 9" in said) or ("BAD TERMINATION" in said and "signal 9" in said), said
    progress, _ = checkpoint.load(out / checkpoint.FILE, TrainConfig(dataset="custom", hidden=(16,), epochs=6, batch_size=4, seed=5), 2)
    assert progress.epoch == 3  # written after epoch 3, before rank 1 died at the start of epoch 4
    resumed = run_pnn(*_args(tiny, out, *flags, "--resume"), ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.npz").read_bytes() == expected


STALLS = {"stop": "(stopped, frozen or unreachable)", "spin": "(running, but stuck outside MPI: an endless loop or a livelock)"}


@pytest.mark.parametrize("action", ["stop", "spin"])
@pytest.mark.parametrize(("ranks", "stopped"), [(2, 1), (3, 0)])
def test_a_stopped_rank_ends_the_job_in_one_line_and_the_last_checkpoint_resumes(tiny, tmp_path, ranks, stopped, action):
    """SIGSTOP, not death, or an endless loop in Python (the process runs, and its watchdog thread
    beats), under the default --on-rank-failure abort: without the watchdog the others wait for
    ever; with it the job ends after --stall-timeout with one line naming the rank, its host and
    how it failed, status 3, and the checkpoint before the stall resumes to the same model."""
    flags = ["--epochs", "6", "--batch-size", "4", "--checkpoint-every", "1", "--seed", "5"]
    expected = _uninterrupted(tiny, tmp_path, ranks, *flags)
    out = tmp_path / "run"
    began = time.monotonic()
    proc = run_pnn(*_args(tiny, out, *flags, "--stall-timeout", "3"), ranks=ranks, env=clean_env(PNN_MPI_INJECT=f"{action}:{stopped}:4"), timeout=90)
    assert time.monotonic() - began < 60
    assert proc.returncode == 3, proc.stderr
    errors = [line for line in proc.stderr.replace("\0", "").splitlines() if line.startswith("pnn_mpi:")]  # prterun writes a NUL byte
    assert len(errors) == 1 and f"rank {stopped} ({socket.gethostname()}) made no progress for 3 s {STALLS[action]}: ending" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    progress, _ = checkpoint.load(out / checkpoint.FILE, TrainConfig(dataset="custom", hidden=(16,), epochs=6, batch_size=4, seed=5), ranks)
    assert progress.epoch == 3
    resumed = run_pnn(*_args(tiny, out, *flags, "--resume"), ranks=ranks)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.npz").read_bytes() == expected


def test_divergence_stops_with_one_line_and_no_model(tiny, tmp_path):
    proc = run_pnn(*_args(tiny, tmp_path / "out", "--lr", "1e30", "--epochs", "3"), ranks=2)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0
    assert lines == ["pnn_mpi: error: training diverged in epoch 1: the loss became NaN or infinite; try a smaller --lr (now 1e+30)"]
    assert "Warning" not in proc.stderr
    assert not (tmp_path / "out" / "model.npz").exists()


def test_resume_with_other_ranks_or_flags_is_refused(tiny, tmp_path):
    out = tmp_path / "run"
    first = run_pnn(*_args(tiny, out, "--epochs", "2", "--checkpoint-every", "1"), ranks=2)
    assert first.returncode == 0, first.stderr
    more_ranks = run_pnn(*_args(tiny, out, "--epochs", "2", "--resume"), ranks=3)
    assert more_ranks.returncode != 0 and "written by a run of 2 ranks, cannot resume with 3" in more_ranks.stderr
    other_lr = run_pnn(*_args(tiny, out, "--epochs", "2", "--lr", "0.2", "--resume"), ranks=2)
    assert other_lr.returncode != 0 and "--lr 0.1 (now 0.2)" in other_lr.stderr  # 0.1: batch 32's default on 2 ranks


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_is_a_clear_error_and_the_previous_model_survives(tiny, small_disk):
    out = small_disk / "run"
    small = run_pnn(*_args(tiny, out, "--epochs", "1"))  # a 36-16-10 model: a few KiB
    assert small.returncode == 0, small.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    big = run_pnn(*_args(tiny, out, "--epochs", "1", "--hidden", "4096", "--overwrite"), ranks=2)  # ~1.3 MB: does not fit
    assert big.returncode != 0
    lines = [line for line in big.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert len(lines) == 1 and "cannot save the results" in lines[0] and "No space left on device" in lines[0], big.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no temporary files left


def test_full_disk_during_a_checkpoint_keeps_the_previous_checkpoint(tiny, small_disk):
    """A ~190 KB checkpoint fits the 300 KiB disk once; replacing it needs room for both, which fails."""
    out = small_disk / "run"
    flags = ["--epochs", "3", "--checkpoint-every", "1", "--hidden", "512", "--momentum", "0"]
    proc = run_pnn(*_args(tiny, out, *flags), ranks=2)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0
    assert len(lines) == 1 and "cannot write the checkpoint (No space left on device); the previous one is intact" in lines[0], proc.stderr
    progress, _ = checkpoint.load(out / checkpoint.FILE, TrainConfig(dataset="custom", hidden=(512,), epochs=3, momentum=0.0), 2)
    assert progress.epoch == 1
    assert sorted(p.name for p in out.iterdir() if p.name != outdir.LOCK) == [checkpoint.FILE]  # no temporary file left behind


def test_read_only_output_is_a_clear_error(tiny, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = run_pnn(*_args(tiny, small_disk / "run", "--epochs", "1"), ranks=2)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0 and len(lines) == 1 and "cannot write there (Read-only file system)" in lines[0], proc.stderr
