"""Test-only fault injection, switched on by one environment variable.

``PNN_MPI_INJECT=ACTION:RANK[:EPOCH]`` acts on rank RANK when epoch EPOCH
(1-based, default 1) starts: ``raise`` raises an unexpected exception, ``kill``
sends the process SIGKILL, ``interrupt`` raises KeyboardInterrupt (what Ctrl-C
does where no handler catches it). The failure tests use them to prove that a crash or
a lost rank brings the whole job down promptly instead of leaving the other
ranks blocked in a collective, and that the last checkpoint survives.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

VARIABLE = "PNN_MPI_INJECT"


class InjectedFault(RuntimeError):
    """The exception an injected fault raises."""


@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    epoch: int = 1

    def fire(self, rank: int, epoch: int) -> None:
        """Raise if this fault is due on ``rank`` at the start of ``epoch`` (1-based)."""
        if rank != self.rank or epoch != self.epoch:
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.action == "interrupt":
            raise KeyboardInterrupt
        raise InjectedFault(f"fault injected by {VARIABLE}={os.environ.get(VARIABLE)} on rank {rank}, epoch {epoch}")


def planned_fault() -> Fault | None:
    """The fault the environment asks for, if any (a malformed value raises ValueError)."""
    text = os.environ.get(VARIABLE, "").strip()
    if not text:
        return None
    action, *numbers = text.split(":")
    try:
        if action not in ("raise", "kill", "interrupt") or not 1 <= len(numbers) <= 2:
            raise ValueError(text)
        return Fault(action, *(int(n) for n in numbers))
    except ValueError:
        raise ValueError(f"{VARIABLE}={text!r}: expected raise, kill or interrupt:RANK[:EPOCH]") from None
