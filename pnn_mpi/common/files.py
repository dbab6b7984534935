"""Creating files we own: exclusively, without following links, whole or not at all.

Every file pnn_mpi writes (models, metrics, checkpoints, downloads, predictions,
study results) goes through ``Staged``: the bytes go to a fresh temporary file
in the destination folder, created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (so a
link planted under any name we use is never followed, and two writers never
share a temporary), are flushed and fsynced, and only then renamed over the
final name. ``rename`` replaces a link at the final name instead of writing
through it. A crash, a kill or a full disk leaves the old file or the new one,
never half of one; what it can leave is a temporary of our own naming
(``TEMP_PREFIX``), which the next run in that folder removes
(``outdir.RunFolder``).

``write_together`` stages several files first and renames them only when all
of them are written, so a failure while writing (a full disk) changes none.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".pnn_mpi-tmp-"
# Temporaries of earlier versions (model_io: ".model.npz.XXXX.tmp", run: the write probe).
_LEGACY_TEMP = re.compile(
    r"^\.(model\.npz|metrics\.json|checkpoint\.npz|launch\.json|results\.csv|report\.md)\.[^/]+\.tmp$"
    r"|^\.pnn_mpi-write-test$|^\.pnn_mpi-[^/]*\.part-[^/]+$"
)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def is_our_temporary(name: str) -> bool:
    """Whether a file name is one of the temporaries pnn_mpi creates (now or in earlier versions)."""
    return name.startswith(TEMP_PREFIX) or bool(_LEGACY_TEMP.match(name))


def create_new(path: Path, mode: int = 0o666) -> int:
    """Open a new file for writing: fails if anything (a file, a link) already has the name."""
    return os.open(path, _CREATE, mode)  # the umask applies, as with open()


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable, where the platform allows it (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Staged:
    """A file being written under a temporary name beside ``path``.

    ``with Staged(path) as staged: staged.file.write(...); staged.commit()``;
    leaving the block without ``commit`` (an exception) removes the temporary.
    The temporary's name ends with the final name, so its suffix (``.gz``,
    ``.npy``) is the same.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.file: BinaryIO
        while True:
            self.temp = self.path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{self.path.name}")
            try:
                fd = create_new(self.temp)
                break
            except FileExistsError:
                continue  # a name someone else holds (or planted): draw another
        self.file = os.fdopen(fd, "wb")
        self.done = False

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc) -> None:
        if not self.done:
            self.discard()

    def finish(self) -> None:
        """Flush and fsync the temporary, ready to be renamed."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def rename(self) -> None:
        os.replace(self.temp, self.path)
        self.done = True

    def commit(self) -> None:
        self.finish()
        self.rename()
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        self.temp.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    """Write ``data`` to ``path`` whole: a temporary created exclusively, fsync, rename.

    ``before_rename`` is a test hook (faults.py): called when the temporary is
    complete and the old file still in place."""
    with Staged(path) as staged:
        staged.file.write(data)
        staged.finish()
        if before_rename is not None:
            before_rename()
        staged.rename()
        fsync_dir(staged.path.parent)


def write_together(files: Iterable[tuple[str | os.PathLike, bytes]]) -> None:
    """Write several files so that none changes unless all could be written.

    Every temporary is written and fsynced first; only then are they renamed,
    in the order given. Renaming needs no space, so a full disk or an I/O error
    while writing leaves every old file as it was. Only a crash between two
    renames can leave some files new and some old; callers that need to tell
    record in the last file what the others hold (``outdir.save_results``).
    """
    staged: list[Staged] = []
    try:
        for path, data in files:
            staged.append(Staged(path))
            staged[-1].file.write(data)
            staged[-1].finish()
        for item in staged:
            item.rename()
        for folder in {item.path.parent for item in staged}:
            fsync_dir(folder)
    finally:
        for item in staged:
            if not item.done:
                item.discard()


def open_fresh(path: str | os.PathLike) -> BinaryIO:
    """A new, empty file at ``path`` for a log written as it grows (not atomically).

    Whatever had the name before -- a file, or a link, which is removed, not
    followed -- is replaced; the new file is created exclusively.
    """
    path = Path(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.fdopen(create_new(path), "wb")
