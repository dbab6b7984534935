"""Surviving a lost rank: a communicator that repairs itself with ULFM.

``ResilientWorld`` has the interface of ``comm.World``. When one of its
collectives fails because a process died (``MPI.ERR_PROC_FAILED``), or because
a peer already noticed and revoked the communicator (``MPI.ERR_REVOKED``), it
revokes the communicator (so every survivor leaves whatever collective it is
blocked in), shrinks it to the survivors (``Shrink`` is itself an agreement:
all survivors get the same new communicator) and raises ``RankLost``, naming
the lost ranks in the numbering of the launch. The training loop catches
``RankLost`` and rolls back to its last consistent state; the world is already
usable again, with fewer ranks and renumbered from 0.

Facts this rests on, measured with the Open MPI 5.0.11 wheel (docs/rank-failure.md, "Surviving
a lost rank"): failures are reported only under ``mpiexec --with-ft ulfm``;
any MPI error class may surface (ERR_OTHER too), so every ``MPI.Exception`` in a
collective is treated as a possible failure and the shrink decides; the
PMIx fence of ``MPI_Finalize`` hangs now and then after a failure, so
fault-tolerant runs set ``OMPI_MCA_async_mpi_finalize=1`` before MPI starts;
``MPI_Abort`` under ``--with-ft`` leaves the other ranks running, so a crashing
rank kills itself instead and is treated as lost.

A rank that stops without dying (SIGSTOP, a frozen node) is found by Open MPI's
heartbeat failure detector, off by default: ``prepare_process`` switches it on
with the run's ``--stall-timeout`` as its timeout (period a quarter of it; Open
MPI wants the timeout above three periods). It beats from MPI's progress, which
the loop enters at least every ~2,048 samples (its stop checks), not from a
thread of its own: with ``mpi_ft_detector_thread`` on, 9 of 145 four-rank runs
here died of a segmentation fault inside ``MPI_Init`` (in
``ompi_comm_revoke_local``), none of 220 without it. So a rank that loops in Python without
entering MPI (an endless loop) falls silent too. It then surfaces like a death. The stopped process
is still alive, though, and would keep the launcher waiting (or, resumed, talk to
a world that has moved on): every survivor on its node SIGKILLs it, by the pid
and start time all ranks exchanged when the world was made.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from ..common.errors import UserError

T = TypeVar("T")

# Set before MPI starts in a fault-tolerant run: without the PMIx fence at the start of
# MPI_Finalize, survivors of a failure cannot hang there (about 1 run in 5 did).
FT_PROCESS_ENV = {"OMPI_MCA_async_mpi_finalize": "1"}


def detector_env(stall_timeout: float) -> dict[str, str]:
    """Open MPI's heartbeat detector, timing out after ``stall_timeout`` seconds (none when 0)."""
    if stall_timeout <= 0:
        return {}
    return {
        "OMPI_MCA_mpi_ft_detector": "true",  # no thread of its own: it crashed MPI_Init now and then (above)
        "OMPI_MCA_mpi_ft_detector_timeout": f"{stall_timeout:g}",
        "OMPI_MCA_mpi_ft_detector_period": f"{stall_timeout / 4:g}",
    }


_live: ResilientWorld | None = None  # the world of this process, once a resilient one exists


class RankLost(Exception):
    """One or more ranks died; the world has already been shrunk to the survivors."""

    def __init__(self, lost: tuple[int, ...], survivors: tuple[int, ...], detected: float, repair_seconds: float, stalled: tuple[int, ...] = ()):
        names = ", ".join(map(str, lost))
        super().__init__(f"lost rank{'s' * (len(lost) > 1)} {names}; {len(survivors)} left")
        self.lost = lost  # ranks of the launch (mpiexec's numbering), not of the shrunk world
        self.survivors = survivors
        self.detected = detected  # time.perf_counter() when the error surfaced on this rank
        self.repair_seconds = repair_seconds  # revoke + shrink
        self.stalled = stalled  # lost ranks found alive (stopped) on this host and killed


def prepare_process(on_rank_failure: str, stall_timeout: float = 0.0) -> None:
    """Environment a fault-tolerant run needs before MPI starts (a value the user set wins).

    With the detector's thread on, ``MPI_Finalize`` spun forever in
    ``ompi_comm_failure_detector_finalize`` (healthy 4-rank runs, 2 of 2; without the
    thread it returns, but then a rank computing longer than the timeout counts as
    lost): so such a process leaves without ``MPI_Finalize``, and the launcher still
    exits 0 (measured with Open MPI 5.0.11).
    """
    if on_rank_failure != "continue":
        return
    extra = detector_env(stall_timeout) if "mpi4py.MPI" not in sys.modules else {}  # too late to skip MPI_Finalize
    for key, value in {**FT_PROCESS_ENV, **extra}.items():
        os.environ.setdefault(key, value)
    if extra:
        import mpi4py

        mpi4py.rc.finalize = False


def process_identity() -> tuple[str, int, str]:
    """Host, pid and start time of this process: enough to kill it later, and only it."""
    return socket.gethostname(), os.getpid(), _start_time(os.getpid()) or ""


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the state first), None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields or None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), None if there is none."""
    fields = proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def end_if_alive(identity: tuple[str, int, str]) -> bool:
    """SIGKILL the process ``identity`` names if it still runs on this host; whether it did.

    A lost rank that only stopped (SIGSTOP, a frozen process) is still alive: resumed, it
    would take part in a world that has moved on, and its launcher would wait for it.
    """
    host, pid, started = identity
    if host != socket.gethostname() or pid == os.getpid() or not started or _start_time(pid) != started:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on", "t", "y")


def fault_tolerance_problem(mpi, size: int) -> str | None:
    """Why ``--on-rank-failure continue`` cannot work in this job, or None if it can.

    Only Open MPI 5 started by ``mpiexec --with-ft ulfm`` reports failures to the
    survivors (the launcher then sets ``mpi_ft_enable``). Elsewhere a lost rank
    ends the job as it always did, so the run refuses up front instead.
    """
    if size == 1:
        return None  # a single rank has nobody to lose and nobody to carry on
    name, version = mpi.get_vendor()
    if not hasattr(mpi.Comm, "Shrink"):
        return f"--on-rank-failure continue: mpi4py {getattr(sys.modules.get('mpi4py'), '__version__', '?')} has no ULFM calls (needs mpi4py >= 4)"
    if name == "Open MPI":
        if version[0] < 5:
            return f"--on-rank-failure continue needs Open MPI 5 with ULFM (this is Open MPI {'.'.join(map(str, version))})"
        if not _truthy(os.environ.get("OMPI_MCA_mpi_ft_enable")):
            return "--on-rank-failure continue needs fault tolerance from the launcher: start with mpiexec --with-ft ulfm"
        return None
    return (
        f"--on-rank-failure continue: {name} {'.'.join(map(str, version))} does not let the survivors of a lost rank go on "
        f"(only Open MPI 5 under mpiexec --with-ft ulfm does); use --on-rank-failure abort"
    )


class ResilientWorld:
    """Rank, size and collectives of a communicator that survives the loss of ranks.

    ``rank`` and ``size`` are those of the current (possibly shrunk) world;
    ``launch_rank`` is this process's rank at launch, and ``members[r]`` the
    launch rank of current rank ``r``. Every collective either completes or
    raises ``RankLost`` on every survivor.
    """

    mpi = True

    def __init__(self, comm=None):
        from mpi4py import MPI

        global _live
        self._mpi = MPI
        base = MPI.COMM_WORLD if comm is None else comm
        base.Set_errhandler(MPI.ERRORS_RETURN)
        self._launch_group = base.Get_group()
        self.launch_rank = base.Get_rank()
        self.launch_size = base.Get_size()
        self.members: list[int] = list(range(self.launch_size))
        self.lost: list[int] = []  # every launch rank lost so far, in the order they were lost
        self.comm = base
        self.start_lost = self._start()  # ranks that died before their first collective (start-up)
        _live = self

    def _start(self) -> tuple[int, ...]:
        """Our own copy of the launch's communicator, without the ranks that died before it was made.

        Shrink rather than Dup: it is the same copy when all ranks live, and an agreement that
        leaves out a rank that died at start-up (a Dup fails on every rank then). The identities
        are exchanged on it; a rank lost meanwhile is shrunk away too."""
        self.comm = self.comm.Shrink()
        self.comm.Set_errhandler(self._mpi.ERRORS_RETURN)
        self._renumber()
        while True:
            try:
                identities = self.comm.allgather(process_identity())
                break
            except self._mpi.Exception:
                self.comm = self.comm.Shrink()
                self.comm.Set_errhandler(self._mpi.ERRORS_RETURN)
                self._renumber()
        self.peers = dict(zip(self.members, identities))  # launch rank -> (host, pid, start time)
        self.lost = [r for r in range(self.launch_size) if r not in self.members]
        self.start_members = tuple(self.members)  # the first of them claims the run folder
        return tuple(self.lost)

    def _renumber(self) -> None:
        group = self.comm.Get_group()
        self.members = [int(r) for r in self._mpi.Group.Translate_ranks(group, list(range(self.comm.Get_size())), self._launch_group)]
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def set_up_again(self) -> None:
        """The survivors of a loss before training set the run up again: they are its starting
        members now, and the first of them claims the run folder anew."""
        self.start_members = tuple(self.members)

    # -- repair ----------------------------------------------------------------------------

    def _guard(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except self._mpi.Exception as exc:
            raise self._repair(exc) from None

    def _repair(self, exc) -> BaseException:
        """Revoke, shrink, and say who is gone (or hand back ``exc`` if nobody is)."""
        detected = time.perf_counter()
        old = self.comm
        try:
            old.Revoke()
        except self._mpi.Exception:
            pass  # already revoked by a peer
        new = old.Shrink()
        new.Set_errhandler(self._mpi.ERRORS_RETURN)
        group = new.Get_group()
        members = [int(r) for r in self._mpi.Group.Translate_ranks(group, list(range(new.Get_size())), self._launch_group)]
        gone = tuple(r for r in self.members if r not in members)
        self.comm, self.members = new, members
        self.rank, self.size = new.Get_rank(), new.Get_size()
        if not gone:
            return exc  # an MPI error that was not a failure: the run crashes as before
        self.lost.extend(gone)
        stalled = tuple(r for r in gone if r in self.peers and end_if_alive(self.peers[r]))
        return RankLost(gone, tuple(members), detected, time.perf_counter() - detected, stalled)

    # -- the World interface ---------------------------------------------------------------

    def sum_(self, buf: np.ndarray) -> None:
        self._guard(lambda: self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM))

    def average_(self, buf: np.ndarray) -> None:
        self.sum_(buf)
        if self.size > 1:
            buf *= 1.0 / self.size

    def allgather(self, obj: T) -> list[T]:
        return self._guard(lambda: self.comm.allgather(obj))

    def bcast(self, obj: T, root: int = 0) -> T:
        return self._guard(lambda: self.comm.bcast(obj, root=root))

    def gather(self, obj: T, root: int = 0) -> list[T] | None:
        return self._guard(lambda: self.comm.gather(obj, root=root))

    def scatter(self, objs: list[T] | None, root: int = 0) -> T:
        return self._guard(lambda: self.comm.scatter(objs, root=root))

    def barrier(self) -> None:
        self._guard(self.comm.Barrier)

    def abort(self, code: int) -> None:
        """Leave at once. Under ``--with-ft`` MPI_Abort stops only this rank and the
        launcher then waits forever, so the rank ends itself by SIGKILL, which
        the survivors see as a lost rank."""
        leave_by_signal()

    def library(self) -> str:
        name, version = self._mpi.get_vendor()
        return f"{name} {'.'.join(str(v) for v in version)}"

    def library_version(self) -> str:
        return self._mpi.Get_library_version().strip().splitlines()[0].strip()


def leave_by_signal() -> None:
    """End this process the way a lost rank ends: flushed output, then SIGKILL."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def live_world() -> ResilientWorld | None:
    """This process's resilient world, if the run made one (for the exit paths in cli.py)."""
    return _live


def check_fault_tolerance(world) -> None:
    """Raise the UserError that says why this job cannot survive a lost rank (the same on every rank)."""
    problem = fault_tolerance_problem(world._mpi, world.size) if hasattr(world, "_mpi") else None
    if problem:
        raise UserError(problem)
