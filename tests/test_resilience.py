"""The ULFM layer (resilience.py) and the fault-injection syntax (faults.py).

The MPI test launches ``mpiexec --with-ft ulfm`` itself, under MPIEXEC_TIMEOUT
and a subprocess timeout, so a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, clean_env, mpiexec_path
from pnn_mpi.common.errors import UserError
from pnn_mpi.parallel import faults
from pnn_mpi.parallel.resilience import detector_env, end_if_alive, fault_tolerance_problem, process_identity
from pnn_mpi.training.config import TrainConfig


def test_faults_parse_steps_checkpoints_and_lists(monkeypatch):
    monkeypatch.setenv(
        faults.VARIABLE, "kill:1:2:30, kill-in-checkpoint:0:3,raise:2,kill-in-save:3,stop:2:1:4,kill-after-sum:1:2:5,lose-in-sum:2:2:5,kill-at-start:3"
    )
    assert faults.planned_faults() == [
        faults.Fault("kill", 1, 2, 30),
        faults.Fault("kill-in-checkpoint", 0, 3),
        faults.Fault("raise", 2, 1),
        faults.Fault("kill-in-save", 3),
        faults.Fault("stop", 2, 1, 4),
        faults.Fault("kill-after-sum", 1, 2, 5),
        faults.Fault("lose-in-sum", 2, 2, 5),
        faults.Fault("kill-at-start", 3),
    ]
    assert faults.planned_fault() == faults.Fault("kill", 1, 2, 30)
    bad_ones = (
        "kill",
        "kill:x",
        "explode:1",
        "kill:1:2:3:4",
        "kill-in-checkpoint:1:2:3",
        "kill-in-save:1:2",
        "kill:-1",
        "kill-after-sum:1:2",
        "lose-in-sum:1",
        "kill-at-start:1:2",
    )
    for bad in bad_ones:
        monkeypatch.setenv(faults.VARIABLE, bad)
        with pytest.raises(UserError, match="expected raise|kill"):
            faults.planned_faults()


@pytest.mark.parametrize("ranks", [None, 2])
def test_a_malformed_injection_is_one_line_from_every_rank(tmp_path, ranks):
    """A garbage PNN_MPI_INJECT ends the run with our one line and exit 2, never a traceback."""
    from conftest import run_pnn, write_dataset

    data = write_dataset(tmp_path / "d", train=200, test=10, seed=3)
    env = {**clean_env(), faults.VARIABLE: "explode:x"}
    proc = run_pnn("--dataset", "custom", "--data-dir", str(data), "--epochs", "1", "--out", str(tmp_path / "o"), ranks=ranks, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi: error:")]
    assert ours and all(f"{faults.VARIABLE}='explode:x': expected" in line for line in ours)


def test_a_step_fault_fires_only_at_its_step():
    fault = faults.Fault("raise", 1, 2, 5)
    fault.fire(1, 2)  # the epoch's start: not this one
    fault.fire(1, 2, 4)
    fault.fire(0, 2, 5)
    with pytest.raises(faults.InjectedFault, match="rank 1, epoch 2, step 5"):
        fault.fire(1, 2, 5)
    faults.Fault("kill-in-checkpoint", 1, 2).fire(1, 2)  # fires only in a checkpoint
    faults.Fault("kill-in-save", 1).fire(1, 1)  # only before the save
    faults.Fault("kill-in-save", 1).fire_in_checkpoint(1, 1)


@pytest.mark.parametrize(("seconds", "expected"), [(0, {}), (8, {"timeout": "8", "period": "2"}), (60, {"timeout": "60", "period": "15"})])
def test_the_stall_timeout_sets_the_heartbeat_detector(seconds, expected):
    env = detector_env(seconds)
    assert {k.rsplit("_", 1)[1]: v for k, v in env.items() if k.endswith(("timeout", "period"))} == expected
    assert (env.get("OMPI_MCA_mpi_ft_detector") == "true") is bool(seconds)
    assert "OMPI_MCA_mpi_ft_detector_thread" not in env  # its thread crashed MPI_Init in 9 of 145 runs


@pytest.mark.parametrize("value", [0.5, -1, float("inf"), float("nan")])
def test_a_stall_timeout_below_a_second_is_refused(value):
    with pytest.raises(UserError, match="--stall-timeout"):
        TrainConfig(stall_timeout=value)


@pytest.mark.parametrize("same_process", [True, False])
def test_a_stopped_peer_is_killed_only_if_it_is_the_same_process(same_process):
    """The pid and start time exchanged at start-up name one process: a reused pid is left alone."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        host, _, _ = process_identity()
        with open(f"/proc/{child.pid}/stat") as handle:
            started = handle.read().rsplit(")", 1)[1].split()[19]
        identity = (host, child.pid, started if same_process else str(int(started) + 1))
        assert end_if_alive(identity) is same_process
        time.sleep(0.2)
        assert (child.poll() == -signal.SIGKILL) is same_process
        assert end_if_alive((socket.gethostname() + "-elsewhere", child.pid, started)) is False
    finally:
        child.kill()
        child.wait()


class _FakeMPI:
    class Comm:
        Shrink = None

    def __init__(self, name, version):
        self._vendor = (name, version)

    def get_vendor(self):
        return self._vendor


def test_fault_tolerance_is_refused_where_survivors_cannot_go_on(monkeypatch):
    monkeypatch.delenv("OMPI_MCA_mpi_ft_enable", raising=False)
    assert "mpiexec --with-ft ulfm" in fault_tolerance_problem(_FakeMPI("Open MPI", (5, 0, 11)), 4)
    assert "needs Open MPI 5" in fault_tolerance_problem(_FakeMPI("Open MPI", (4, 1, 4)), 4)
    assert "MPICH 5.0.2 does not let the survivors" in fault_tolerance_problem(_FakeMPI("MPICH", (5, 0, 2)), 4)
    assert fault_tolerance_problem(_FakeMPI("MPICH", (5, 0, 2)), 1) is None  # one rank: nothing to survive
    monkeypatch.setenv("OMPI_MCA_mpi_ft_enable", "1")
    assert fault_tolerance_problem(_FakeMPI("Open MPI", (5, 0, 11)), 4) is None


SURVIVOR = textwrap.dedent(
    """
    import os, signal
    import numpy as np
    from pnn_mpi.parallel.resilience import RankLost, ResilientWorld, check_fault_tolerance, prepare_process

    prepare_process("continue")
    world = ResilientWorld()
    check_fault_tolerance(world)
    deaths = {10: 2, 28: 0}  # iteration -> launch rank that dies there: one in a buffer Allreduce, one in a gather
    buf = np.ones(101770, np.float32)
    calls = [lambda: world.sum_(buf), lambda: world.allgather(world.rank), lambda: world.bcast("x", root=world.size - 1),
             lambda: world.gather(world.rank), world.barrier]
    for i in range(40):
        if deaths.get(i) == world.launch_rank:
            os.kill(os.getpid(), signal.SIGKILL)
        buf[:] = 1
        try:
            calls[i % len(calls)]()
        except RankLost as lost:
            print(f"{world.launch_rank} lost {list(lost.lost)} survivors {list(lost.survivors)} size {world.size}", flush=True)
    buf[:] = 1
    world.sum_(buf)
    print(f"{world.launch_rank} done sum {buf[0]:.0f} members {world.members} lost {world.lost}", flush=True)
    """
)


def test_survivors_of_two_losses_shrink_and_keep_every_collective_working(ulfm, tmp_path):
    """Launch rank 2 dies in a buffer Allreduce, then launch rank 0 in a gather: the others
    see each loss once, in launch numbering, and the last Allreduce sums over the two left."""
    script = tmp_path / "survivor.py"
    script.write_text(SURVIVOR)
    proc = subprocess.run(
        [mpiexec_path(), "--with-ft", "ulfm", "-n", "4", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    lines = sorted(proc.stdout.splitlines())
    assert lines == [
        "0 lost [2] survivors [0, 1, 3] size 3",  # before it dies itself
        "1 done sum 2 members [1, 3] lost [2, 0]",
        "1 lost [0] survivors [1, 3] size 2",
        "1 lost [2] survivors [0, 1, 3] size 3",
        "3 done sum 2 members [1, 3] lost [2, 0]",
        "3 lost [0] survivors [1, 3] size 2",
        "3 lost [2] survivors [0, 1, 3] size 3",
    ], proc.stdout + proc.stderr
    assert proc.returncode == 0  # measured: mpiexec --with-ft exits 0 although two ranks were killed


def test_without_with_ft_the_continue_mode_refuses_in_one_line(ulfm, tmp_path):
    script = tmp_path / "refuse.py"
    script.write_text("from pnn_mpi.parallel.resilience import ResilientWorld, check_fault_tolerance\ncheck_fault_tolerance(ResilientWorld())\n")
    proc = subprocess.run(
        [mpiexec_path(), "-n", "2", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "UserError: --on-rank-failure continue needs fault tolerance from the launcher: start with mpiexec --with-ft ulfm" in proc.stderr
