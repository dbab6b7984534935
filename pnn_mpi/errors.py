"""The exceptions that end a run in an expected way, and the exit status each gets.

Anything the user can fix (a bad flag, a bad file, too many ranks) raises
``UserError``; the entry point reports it as one line ``pnn_mpi: error: ...``
on stderr with exit status 2, never as a traceback. ``Interrupted`` is a run
stopped by a signal after its checkpoint (exit ``STOP_EXIT_CODE``), ``Diverged``
a run whose loss became NaN or infinite (reported as a UserError).
"""

from __future__ import annotations

import os

STOP_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal, resumable; what requeue setups look for


class UserError(Exception):
    """A problem with the user's input, reported in one line without a traceback."""


class Interrupted(Exception):
    """Training stopped on request (a signal) after writing a checkpoint."""

    def __init__(self, reason: str, epoch: int, step: int):
        super().__init__(f"{reason}: stopped in epoch {epoch + 1} after step {step}")
        self.reason, self.epoch, self.step = reason, epoch, step


class Diverged(Exception):
    """The training loss became NaN or infinite on some rank."""


QUOTE_LIMIT = 200  # characters of a user's value an error line shows
LINE_LIMIT = 2000  # characters of a whole error line


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A value the user gave (a path, a flag's value, a TOML key), as messages show it.

    As typed when it is short and printable; repr-quoted when it holds a newline
    or another control character (so it cannot break "one line"); and cut to
    ``limit`` characters with the full length said (a 10 MB TOML value is not
    echoed whole).
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    shown, rest = text[:limit], len(text) - limit
    shown = shown if shown.isprintable() else repr(shown)
    return f"{shown}... ({len(text):,} characters)" if rest > 0 else shown


def one_line(message: str, limit: int = LINE_LIMIT) -> str:
    """``message`` made safe to print as one line: control characters escaped, length bounded.

    The entry point passes every error line through this, so a value that reached
    a message unquoted still cannot break the line or flood a launcher.
    """
    if not message.isprintable():
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message):,} characters)"
