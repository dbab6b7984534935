"""Interrupts (issue #13): Ctrl-C, a closed stdout -- never a hang, never a lost run.

Run under whichever MPI the interpreter's venv carries: ``make test`` runs them
under Open MPI, ``make test-mpich`` again under MPICH (its launcher, hydra,
forwards SIGINT to the ranks; Open MPI's answers it by terminating them, which
the ranks take as SIGTERM). Every launch has a subprocess timeout and
MPIEXEC_TIMEOUT, so a hang fails the test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, clean_env, mpiexec_path, run_pnn, write_dataset
from pnn_mpi.training import checkpoint, outdir
from pnn_mpi.training.config import TrainConfig
from test_faults import _ranks_of

STOPPED = 75
PROMPT = 20  # seconds within which an interrupted job must be gone
# Batch 1 through the plain step: slow enough (~0.1 s an epoch) to be caught mid-run, and resumed bit for bit.
FLAGS = ["--hidden", "64", "--batch-size", "1", "--kernel", "generic", "--epochs", "40", "--sync", "steps:50", "--seed", "6"]
CONFIG = TrainConfig(dataset="custom", hidden=(64,), batch_size=1, kernel="generic", epochs=40, sync="steps:50", seed=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=600, test=100, seed=2)


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = run_pnn(*_args(tiny, out), ranks=2)
    assert proc.returncode == 0, proc.stderr
    return (out / "model.npz").read_bytes()


def _args(tiny, out, *more):
    return ["--dataset", "custom", "--data-dir", str(tiny), "--out", str(out), *FLAGS, *more]


def _start(args, ranks: int | None = 2, env=None, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "pnn_mpi", *args]
    if ranks is not None:
        command = [mpiexec_path(), "-n", str(ranks), *command]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, env=env or clean_env(), cwd=REPO, **popen
    )


def _wait_for_epoch(proc: subprocess.Popen, epoch: int = 3) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if re.match(rf"epoch +{epoch}/", line):
            return
    proc.kill()
    raise AssertionError(f"training never reached epoch {epoch}: {proc.communicate()[1]}")


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def _ends_promptly(proc: subprocess.Popen, ranks: list[int]) -> tuple[int, str]:
    """The launcher's status and stderr, once it and every rank are gone -- within PROMPT seconds.

    A rank may outlive its launcher by a moment (finishing a checkpoint the launcher's
    SIGTERM asked for), but none may stay behind, waiting in a collective.
    """
    deadline = time.monotonic() + PROMPT
    try:
        _, err = proc.communicate(timeout=PROMPT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the job was still running {PROMPT} s after the interrupt: {proc.communicate()[1]}") from None
    while not all(_gone(pid) for pid in ranks):
        if time.monotonic() > deadline:
            for pid in ranks:
                if not _gone(pid):
                    os.kill(pid, signal.SIGKILL)  # our own child job's rank: do not leave it spinning
            raise AssertionError(f"a rank was still running {PROMPT} s after the interrupt: {err}")
        time.sleep(0.1)
    return proc.returncode, err


@pytest.mark.parametrize("target", ["rank 0", "rank 1", "every rank"])
def test_sigint_to_ranks_checkpoints_exits_75_and_resumes_bit_identical(tiny, tmp_path, uninterrupted, target):
    """Ctrl-C on one rank (or on all of them, as a terminal does) behaves as SIGTERM: agreed stop, checkpoint, 75."""
    out = tmp_path / "run"
    proc = _start(_args(tiny, out))
    _wait_for_epoch(proc)
    ranks = _ranks_of(proc.pid)
    assert len(ranks) == 2
    for pid in {"rank 0": ranks[:1], "rank 1": ranks[1:], "every rank": ranks}[target]:
        os.kill(pid, signal.SIGINT)
    code, err = _ends_promptly(proc, ranks)
    assert code == STOPPED, err
    assert "pnn_mpi: SIGINT: stopped in epoch" in err and "Traceback" not in err, err
    progress, states = checkpoint.load(out / checkpoint.FILE, CONFIG, 2)
    assert len(states) == 2 and progress.epoch >= 2
    resumed = run_pnn(*_args(tiny, out, "--resume"), ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.npz").read_bytes() == uninterrupted


@pytest.mark.parametrize("how", ["the launcher", "the launcher's process group"])
def test_sigint_to_the_launcher_ends_the_job_in_seconds(tiny, tmp_path, how):
    """SIGINT to mpiexec (or Ctrl-C to everything in its session): the whole job ends promptly; any checkpoint
    it leaves is whole."""
    out = tmp_path / "run"
    proc = _start(_args(tiny, out), start_new_session=True)
    _wait_for_epoch(proc)
    ranks = _ranks_of(proc.pid)
    if how == "the launcher":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    code, err = _ends_promptly(proc, ranks)
    assert code != 0 and "Traceback" not in err, err
    if (out / checkpoint.FILE).exists():
        checkpoint.load(out / checkpoint.FILE, CONFIG, 2)


@pytest.mark.parametrize("rank", [0, 1])
def test_ctrl_c_twice_ends_the_whole_job_at_once(tiny, tmp_path, rank):
    out = tmp_path / "run"
    proc = _start(_args(tiny, out))
    _wait_for_epoch(proc)
    ranks = _ranks_of(proc.pid)
    os.kill(ranks[rank], signal.SIGINT)
    os.kill(ranks[rank], signal.SIGINT)
    code, err = _ends_promptly(proc, ranks)
    assert code != 0, err
    assert f"rank {rank}: interrupted: ending the whole job" in err or "SIGINT: stopped in epoch" in err, err


@pytest.mark.parametrize("rank", [0, 1])
def test_a_keyboard_interrupt_anywhere_ends_the_whole_job(tiny, tmp_path, rank):
    """KeyboardInterrupt escaping on one rank (e.g. Ctrl-C before the handler is installed) aborts every rank,
    instead of leaving its peers waiting in a collective (the issue's hang: one rank in MPI_Finalize, one in
    Allreduce)."""
    proc = _start(_args(tiny, tmp_path / "run"), env=clean_env(PNN_MPI_INJECT=f"interrupt:{rank}:2"))
    _wait_for_epoch(proc, 1)
    code, err = _ends_promptly(proc, [])
    assert code != 0 and f"pnn_mpi: rank {rank}: interrupted: ending the whole job" in err, err


@pytest.mark.parametrize("launch", ["no launcher", "mpiexec -n 2"])
def test_a_closed_stdout_does_not_lose_the_run(tiny, tmp_path, launch):
    """``python -m pnn_mpi | head -1``: without a launcher the run goes on and saves its results, with no
    traceback. Under a launcher, the launcher owns stdout and decides: Open MPI's aborts the job on SIGPIPE
    (its ranks get SIGTERM first, and checkpoint when they can), MPICH's dies of SIGPIPE. Either way the job
    must end, not hang, and leave no half-written file (the README says to send the log to a file)."""
    out = tmp_path / "run"
    ranks = None if launch == "no launcher" else 2
    proc = _start(_args(tiny, out), ranks=ranks)
    assert proc.stdout.readline().startswith("pnn_mpi ")
    launched = _ranks_of(proc.pid) if ranks else []
    proc.stdout.close()  # the reader goes away, as `| head -1` does
    try:
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    if ranks is None:
        assert proc.returncode == 0, err
        assert outdir.results_match(out)
        return
    deadline = time.monotonic() + PROMPT
    while not all(_gone(pid) for pid in launched):
        assert time.monotonic() < deadline, "a rank outlived its launcher"
        time.sleep(0.1)
    if (out / checkpoint.FILE).exists():
        checkpoint.load(out / checkpoint.FILE, CONFIG, 2)
    if (out / "model.npz").exists():
        assert outdir.results_match(out)


@pytest.mark.parametrize("out", ["text", "none"])
def test_predict_into_a_closed_pipe_prints_no_traceback(tiny, tmp_path, out):
    """Predictions for 60,000 images (120 KB of text, more than a pipe holds) into ``| head -c 1``."""
    import numpy as np

    from pnn_mpi.data.idx import write_idx

    trained = tmp_path / "run"
    assert run_pnn("--dataset", "custom", "--data-dir", str(tiny), "--hidden", "8", "--epochs", "1", "--out", str(trained)).returncode == 0
    write_idx(tmp_path / "many-idx3-ubyte", np.zeros((60_000, 6, 6), np.uint8))
    command = f"{sys.executable} -m pnn_mpi predict --model {trained / 'model.npz'} --images {tmp_path / 'many-idx3-ubyte'}"
    proc = subprocess.run(
        f'{command} | head -c {1 if out == "text" else 0}; echo "status ${{PIPESTATUS[0]}}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    assert proc.stdout.endswith("status 0\n"), proc.stdout
