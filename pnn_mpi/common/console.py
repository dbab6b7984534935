"""What a run prints, written so that a closed stdout cannot lose the run.

``python -m pnn_mpi | head -1`` closes the pipe after one line; the next
``print`` would raise BrokenPipeError and end the run with a traceback, its
training lost. ``say`` instead notices that the reader has gone, points file
descriptor 1 at /dev/null (so nothing later, not even the interpreter's final
flush, trips over the dead pipe) and lets training go on to save its results.
"""

from __future__ import annotations

import errno
import os
import sys

_READER_GONE = (errno.EPIPE, errno.EIO, errno.EBADF, errno.ENOSPC, errno.ECONNRESET)
_gone = False


def _stdout_gone() -> None:
    global _gone
    _gone = True
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


def write_out(text: str) -> None:
    """Write ``text`` to stdout and flush it, unless its reader has gone (then silently drop it)."""
    if _gone:
        return
    if sys.stdout is None:  # started with stdout closed (>&-)
        _stdout_gone()
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except ValueError:  # the stream object itself was closed
        _stdout_gone()
    except OSError as exc:  # the reader went away (EPIPE), or a dead terminal, or /dev/full: output is best effort
        if exc.errno in _READER_GONE:
            _stdout_gone()
        else:
            raise


def say(line: str) -> None:
    """Print one line of progress (rank 0's log)."""
    write_out(line + "\n")
