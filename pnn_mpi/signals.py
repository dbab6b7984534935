"""Stop requests: SIGTERM and SIGUSR1 ask a run to checkpoint and leave.

Batch systems warn a job before they end it (SLURM: SIGTERM at the time limit
or on preemption, or any signal chosen with ``--signal``); Open MPI's mpiexec
passes SIGUSR1 on to every rank. The handler only records the request: the
training loop notices it at its next check, all ranks agree to stop at the
same step, write a checkpoint, and exit with ``STOP_EXIT_CODE``.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Remembers the first stop signal this process received."""

    def __init__(self) -> None:
        self.received: str | None = None

    def install(self) -> StopRequest:
        for sig in SIGNALS:
            signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, _frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def __call__(self) -> str | None:
        return self.received
