"""Progress inside long epochs: rank 0's plain lines at a steady pace.

A batch-1 epoch on a big slice, or any epoch on a slow cluster, can run for
minutes with nothing to show. The loop already meets the other ranks every
~2,048 samples to agree on stopping; that same Allreduce carries the summed
loss, so rank 0 can print where the epoch stands without one more collective.
Lines are whole and plain (no carriage returns), so a SLURM log reads like a
terminal; an epoch shorter than the pace prints none.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pace:
    """Says when a progress line is due: at most one every ``every`` seconds of an epoch (0: never)."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.began = self.last = clock()

    def start_epoch(self) -> None:
        self.began = self.last = self.clock()

    def line(self, epoch: int, epochs: int, step: int, steps: int, mean_loss: float) -> str | None:
        """The progress line of ``epoch`` (1-based) at ``step`` of ``steps``, if one is due now."""
        now = self.clock()
        if not self.every or now - self.last < self.every or step >= steps:
            return None
        self.last = now
        width = len(str(epochs))
        return (
            f"epoch {epoch:>{width}}/{epochs}  step {step}/{steps} ({100 * step // steps}%)"
            f"  train loss so far {mean_loss:.4f}  {now - self.began:.1f} s into the epoch"
        )
