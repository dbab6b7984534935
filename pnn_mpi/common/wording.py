"""How messages say things, written once: one-line text, plurals, OS errors, checksum mismatches,
values the user gave (``quote``) and the bound on a whole error line (``bounded_line``).

Every user error is one line (``pnn_mpi: error: ...``), so whatever text
reaches a message from outside (an OS error, an HTTP reason) goes through
``one_line`` first.
"""

from __future__ import annotations

import os


def one_line(text: object) -> str:
    """``text`` with every run of white space (newlines included) folded into one space."""
    return " ".join(str(text).split())


def plural(count: int, word: str) -> str:
    """'1 rank', '2 ranks', '0 ranks': ``count`` and ``word``, with an s unless the count is one."""
    return f"{count} {word}{'s' * (count != 1)}"


def os_reason(exc: OSError) -> str:
    """What an OSError says went wrong, in one line: its strerror ('No space left on device'), else its text."""
    return one_line(exc.strerror or exc)


def checksum_mismatch(got: str, want: str, canonical: str | None = None) -> str:
    """The words for a payload whose MD5 is not the canonical one (``canonical``: the file it should have been)."""
    hint = f" (not the canonical {canonical}?)" if canonical else ""
    return f"checksum mismatch: payload MD5 is {got}, expected {want}{hint}"


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


def bounded_line(message: str, limit: int = LINE_LIMIT) -> str:
    """``message`` made safe to print as one line: control characters escaped (not folded, as
    ``one_line`` folds white space: a path's newline stays visible), length bounded.

    The entry point passes every error line through this, so a value that reached
    a message unquoted still cannot break the line or flood a launcher.
    """
    if not message.isprintable():
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return message if len(message) <= limit else f"{message[:limit]}... ({len(message):,} characters)"
