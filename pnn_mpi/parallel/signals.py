"""Stop requests: SIGINT, SIGTERM and SIGUSR1 ask a run to checkpoint and leave.

Batch systems warn a job before they end it (SLURM: SIGTERM at the time limit
or on preemption, or any signal chosen with ``--signal``); Open MPI's mpiexec
passes SIGUSR1 on to every rank; Ctrl-C sends SIGINT. The handler only records
the request: the training loop notices it at its next check, all ranks agree
to stop at the same step, write a checkpoint, and exit with ``STOP_EXIT_CODE``.
A rank must never simply leave on a signal: its peers would wait for it in
their next collective for ever.

A second Ctrl-C means "now": it raises KeyboardInterrupt, and the entry point
answers that under MPI by aborting the whole job (``cli``), never by leaving
alone.
"""

from __future__ import annotations

import signal
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
_early: str | None = None  # a stop signal that came before training made its StopRequest


def listen_early() -> None:
    """Record stop signals from the first moment of a training process.

    A batch system may signal a job as soon as it starts (SLURM sends ``--signal``
    up to 60 s early); until Python installs a handler, SIGUSR1 and SIGTERM kill
    the rank outright, with no checkpoint. ``python -m pnn_mpi`` calls this before
    importing numpy or MPI, and the run's StopRequest takes over what was seen.
    """

    def note(signum: int, _frame) -> None:
        global _early
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and _early == name:
            raise KeyboardInterrupt  # Ctrl-C twice: stop at once, as StopRequest does
        _early = _early or name

    for sig in SIGNALS:
        signal.signal(sig, note)


class StopRequest:
    """Remembers the first stop signal this process received."""

    def __init__(self) -> None:
        self.received: str | None = _early
        self.arrivals: list[tuple[str, float]] = []  # (signal, perf_counter) of every one, for the timeline

    def install(self) -> StopRequest:
        for sig in SIGNALS:
            signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        self.arrivals.append((name, time.perf_counter()))
        if signum == signal.SIGINT and self.received == name:
            raise KeyboardInterrupt  # Ctrl-C twice: stop at once (the whole job: cli aborts it)
        self.received = self.received or name

    def __call__(self) -> str | None:
        return self.received
