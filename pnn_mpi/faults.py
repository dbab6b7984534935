"""Test-only fault injection, switched on by one environment variable.

``PNN_MPI_INJECT=raise:RANK[:EPOCH]`` makes rank RANK raise an unexpected
exception when epoch EPOCH (1-based, default 1) starts. The failure tests use
it to prove that a crash on one rank brings the whole job down with that
rank's traceback instead of leaving the other ranks blocked in a collective.
"""

from __future__ import annotations

import os
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
        if rank == self.rank and epoch == self.epoch:
            raise InjectedFault(f"fault injected by {VARIABLE}={os.environ.get(VARIABLE)} on rank {rank}, epoch {epoch}")


def planned_fault() -> Fault | None:
    """The fault the environment asks for, if any (a malformed value raises ValueError)."""
    text = os.environ.get(VARIABLE, "").strip()
    if not text:
        return None
    action, *numbers = text.split(":")
    try:
        if action != "raise" or not 1 <= len(numbers) <= 2:
            raise ValueError(text)
        return Fault(action, *(int(n) for n in numbers))
    except ValueError:
        raise ValueError(f"{VARIABLE}={text!r}: expected raise:RANK[:EPOCH]") from None
