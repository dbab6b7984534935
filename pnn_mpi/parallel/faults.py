"""Test-only fault injection, switched on by one environment variable.

``PNN_MPI_INJECT=ACTION:RANK[:EPOCH[:STEP]]`` acts on the process launched as
rank RANK (mpiexec's numbering, which stays its name after survivors renumber)
in epoch EPOCH (1-based, default 1): ``raise`` raises an unexpected exception,
``kill`` sends the process SIGKILL, ``stop`` sends it SIGSTOP (a rank that
stops responding without dying, as on a frozen node), ``spin`` makes it loop for ever in
Python, busy and never entering MPI (a process that runs but makes no progress: an endless
loop, a livelock), ``interrupt`` raises KeyboardInterrupt (what
Ctrl-C does where no handler catches it), all when the epoch starts or, given STEP,
before step STEP (0-based) of that epoch (with a batch-1 kernel or ``--kernel numba``'s mini-batch
steps, which run many steps per call, only if a call starts at STEP). ``kill-in-checkpoint`` kills the rank
while the checkpoint after epoch EPOCH is being written: the writing rank after
its temporary file is complete but before the rename, any other rank before it
hands over its state; ``kill-in-average:RANK`` kills the rank as the final average
after the last epoch begins (``--sync end``'s only one); ``kill-in-save:RANK`` kills
the rank after training, before the results are gathered and saved; ``kill-after-sum:RANK:EPOCH:STEP``
kills the rank just after step STEP's gradient Allreduce returned on it (``--sync grad``), and
``lose-in-sum:RANK:EPOCH:STEP`` makes the rank see that loss *inside* the step's Allreduce although
it completed (it waits until a peer on its host has died, then repairs the world and raises):
a survivor still inside a collective the others passed; ``kill-before-init:RANK`` kills the rank
before MPI starts (RANK from the launcher's environment), ``kill-at-start:RANK`` once MPI runs but
before the run's first collective, ``kill-in-setup:RANK`` after the ranks agreed on the configuration
and the data, before loading it. Several faults are separated by commas, e.g.
``kill:1:2:30,kill:0:4``. The failure tests use them to prove that a crash or a
lost rank brings the job down promptly (or, with ``--on-rank-failure continue``,
that the survivors carry on) and that the last checkpoint survives.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass

from ..common.errors import UserError
from .resilience import proc_stat

VARIABLE = "PNN_MPI_INJECT"
ACTIONS = (
    "raise",
    "kill",
    "stop",
    "spin",
    "interrupt",
    "kill-in-checkpoint",
    "kill-in-average",
    "kill-in-save",
    "kill-after-sum",
    "lose-in-sum",
    "kill-before-init",
    "kill-at-start",
    "kill-in-setup",
)
AT_START = ("kill-before-init", "kill-at-start", "kill-in-setup")
AFTER_SUM = ("kill-after-sum", "lose-in-sum")


class InjectedFault(RuntimeError):
    """The exception an injected fault raises."""


@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    epoch: int = 1
    step: int | None = None  # None: when the epoch starts

    def fire(self, rank: int, epoch: int, step: int | None = None) -> None:
        """Act if this fault is due on launch rank ``rank`` at ``epoch`` (1-based) and ``step``."""
        if self.action.startswith("kill-in-") or self.action in AFTER_SUM + AT_START or rank != self.rank or epoch != self.epoch or step != self.step:
            return
        self._act(rank, epoch)

    def fire_in_checkpoint(self, rank: int, epoch: int) -> None:
        """Kill if this fault is due while the checkpoint after ``epoch`` (1-based) is written."""
        if self.action == "kill-in-checkpoint" and rank == self.rank and epoch == self.epoch:
            _kill()

    def fire_in_save(self, rank: int, where: str = "save") -> None:
        """Kill if this fault is due after training: before the final average (``where="average"``)
        or before the results are saved."""
        if self.action == f"kill-in-{where}" and rank == self.rank:
            _kill()

    def fire_at_start(self, rank: int, stage: str) -> None:
        """Kill if this fault is due at start-up: ``stage`` "before-init" (MPI not yet initialised; the
        rank is the launcher's), "at-start" (MPI up, before the run's first collective) or "in-setup"
        (the run checked, before loading)."""
        if self.action == f"kill-{stage}" and rank == self.rank:
            _kill()

    def fire_after_sum(self, rank: int, epoch: int, step: int, world) -> None:
        """Act if this fault is due just after the gradient Allreduce of ``step`` returned on launch rank ``rank``."""
        if self.action not in AFTER_SUM or (rank, epoch, step) != (self.rank, self.epoch, self.step):
            return
        if self.action == "kill-after-sum":
            _kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(_dead(peer) for peer in world.peers.values()):
            time.sleep(0.01)
        time.sleep(0.5)  # the others leave the Allreduce they completed
        raise world._repair(InjectedFault("a loss seen inside the gradient Allreduce"))

    def _act(self, rank: int, epoch: int) -> None:
        if self.action == "kill":
            _kill()
        if self.action == "stop":
            _kill(signal.SIGSTOP)
            return  # continued (SIGCONT): go on as if nothing happened
        if self.action == "spin":
            _spin()
        if self.action == "interrupt":
            raise KeyboardInterrupt
        where = f"epoch {epoch}" + (f", step {self.step}" if self.step is not None else "")
        raise InjectedFault(f"fault injected by {VARIABLE}={os.environ.get(VARIABLE)} on rank {rank}, {where}")


def _dead(identity: tuple[str, int, str]) -> bool:
    """Whether the process ``identity`` (host, pid, start time) on this host has ended (a zombie has)."""
    host, pid, _ = identity
    if host != socket.gethostname():
        return False
    fields = proc_stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def _spin() -> None:
    """Loop for ever, busy (not sleeping) and outside MPI: the process runs but the rank makes no progress."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    turns = 0
    while True:
        turns += 1


def _kill(signum: int = signal.SIGKILL) -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.kill(os.getpid(), signum)


def planned_faults() -> list[Fault]:
    """Every fault the environment asks for (a malformed value is a UserError: one line, every rank)."""
    text = os.environ.get(VARIABLE, "").strip()
    return [_parse(part.strip(), text) for part in text.split(",") if part.strip()] if text else []


def planned_fault() -> Fault | None:
    """The first fault the environment asks for, if any."""
    faults = planned_faults()
    return faults[0] if faults else None


def _parse(part: str, text: str) -> Fault:
    action, *numbers = part.split(":")
    try:
        most = {"kill-in-checkpoint": 2, "kill-in-average": 1, "kill-in-save": 1, "kill-before-init": 1, "kill-at-start": 1}.get(action, 3)
        least = 3 if action in AFTER_SUM else 1
        if action not in ACTIONS or not least <= len(numbers) <= most:
            raise ValueError(part)
        values = [int(n) for n in numbers]
        if any(v < 0 for v in values):
            raise ValueError(part)
        return Fault(action, *values)
    except ValueError:
        raise UserError(
            f"{VARIABLE}={text!r}: expected raise|kill|stop|spin|interrupt:RANK[:EPOCH[:STEP]], kill-in-checkpoint:RANK[:EPOCH], kill-in-average:RANK, kill-in-save:RANK, kill-before-init|kill-at-start:RANK or kill-after-sum|lose-in-sum:RANK:EPOCH:STEP, comma-separated"
        ) from None
