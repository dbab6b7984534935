"""How messages say things, written once: one-line text, plurals, OS errors, checksum mismatches.

Every user error is one line (``pnn_mpi: error: ...``), so whatever text
reaches a message from outside (an OS error, an HTTP reason) goes through
``one_line`` first.
"""

from __future__ import annotations


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
