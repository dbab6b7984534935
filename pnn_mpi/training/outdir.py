"""The run folder (``--out``): one owner at a time, and results that change together.

A run claims its folder before it reads any data: it takes an exclusive
``flock`` on ``OUT/.pnn_mpi.lock`` (created with ``O_NOFOLLOW``, never written)
and holds it until it ends. The kernel drops the lock when its holder exits,
however it exits (a crash, SIGKILL, a lost node), so a stale lock never blocks
the next run; a second run into a folder in use is refused in one line,
naming the holder's PID where this machine can see it. While it holds the
lock, a run removes temporaries of our own naming that a killed write left
behind (``files.is_our_temporary``), and proves the folder writable with a
probe file created like every other file we make: exclusively, no link
followed.

A folder that holds a finished run (its ``model.npz`` or ``metrics.json``) is
never reused silently: a new run into it is refused before training unless it
passes ``--overwrite``, which removes the earlier run's side files
(``checkpoint.npz``, ``curves.png``, a timeline it wrote inside the folder) at
once, and whose new model and metrics then replace the old pair together; if
the new run fails, the old pair stays, consistent, with nothing of another run
beside it. ``--resume`` into a folder with a checkpoint continues that run and
removes nothing. A ``--out`` that is a symbolic link is refused: the lock and
the results would land in whatever folder it names.

``model.npz`` and ``metrics.json`` are one result: ``save_results`` writes both
to temporaries first and renames them only when both are complete, so a full
disk changes neither. ``metrics.json`` records the SHA-256 of the model it
describes (``model_sha256``), and is renamed last: after a crash between the
two renames (the one window left), ``results_match`` tells the pair apart.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path

from ..common import files
from ..common.errors import UserError
from ..common.structured_files import MiB, Record, Text, read_json
from ..common.wording import quote

LOCK = ".pnn_mpi.lock"
MODEL = "model.npz"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.npz"  # checkpoint.FILE, plot.FILE: named here so this module imports neither
CURVES = "curves.png"


def _locked_by(fd: int) -> str:
    """' (pid N)' for the process holding a flock on ``fd``'s file, when /proc/locks shows it."""
    try:
        inode = os.fstat(fd).st_ino
        with open("/proc/locks") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                    return f" (pid {fields[4]})"
    except OSError:
        pass
    return ""


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class RunFolder:
    """A claimed ``--out`` folder; ``release()`` (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def claim(cls, path: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> RunFolder:
        """Create ``path`` if needed, lock it for this process, clean it, prove it writable, and
        refuse a finished run's folder unless ``overwrite`` (or ``resume`` finds a checkpoint)."""
        folder = cls.take_over(path)
        try:
            folder.remove_stale_temporaries()
            folder.make_way(overwrite, resume)
            folder.probe()
        except BaseException:
            folder.release()
            raise
        return folder

    @classmethod
    def take_over(cls, path: str | os.PathLike) -> RunFolder:
        """Lock ``path`` for this process, and nothing more: how a surviving rank that becomes rank 0
        holds the folder its run claimed (the claiming rank's lock went with it). Refused when
        another run holds it."""
        path = Path(path)
        where = f"--out {quote(path)}"
        if path.is_symlink():
            raise UserError(f"{where}: is a symbolic link; give the folder it points to (pnn_mpi never follows links in a run folder)")
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except ValueError as exc:  # a NUL in the path
            raise UserError(f"{where}: not a usable folder name ({exc})") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UserError(f"{where}: {LOCK} is a symbolic link; remove it (pnn_mpi never follows links in a run folder)") from None
            raise UserError(f"{where}: cannot write there ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _locked_by(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{where}: in use by another run{holder}; wait for it to end or choose another --out") from None
            raise UserError(f"{where}: cannot lock the folder ({exc.strerror or exc})") from None
        return cls(path, fd)

    def remove_stale_temporaries(self) -> list[str]:
        """Delete temporaries of our naming that a killed write left (safe: we hold the lock)."""
        removed = []
        try:
            names = os.listdir(self.path)
        except OSError as exc:
            raise UserError(f"--out {quote(self.path)}: cannot read the folder ({exc.strerror or exc})") from None
        for name in names:
            if files.is_our_temporary(name):
                try:
                    os.unlink(self.path / name)  # a link is removed, not followed
                    removed.append(name)
                except IsADirectoryError:
                    pass
                except OSError as exc:
                    raise UserError(f"--out {quote(self.path)}: cannot remove the stale temporary {name!r} ({exc.strerror or exc})") from None
        return removed

    def make_way(self, overwrite: bool, resume: bool) -> None:
        """Refuse a finished run's folder, or (``overwrite``) remove that run's side files, so
        that no curves, checkpoint or timeline of it ends up beside another run's model."""
        where = f"--out {quote(self.path)}"
        if resume and os.path.lexists(self.path / CHECKPOINT):
            return  # continuing the run the checkpoint belongs to
        finished = [name for name in (MODEL, METRICS) if _is_file(self.path / name)]  # a planted link is no run's
        if not finished:
            return
        if not overwrite:
            raise UserError(f"{where}: holds a finished run ({' and '.join(finished)}); pass --overwrite to replace it, or choose another --out")
        for name in (CHECKPOINT, CURVES, *self._old_timeline()):
            try:
                os.unlink(self.path / name)  # a link is removed, not followed
            except (FileNotFoundError, IsADirectoryError):
                pass
            except OSError as exc:
                raise UserError(f"{where}: cannot remove the earlier run's {name} ({exc.strerror or exc})") from None

    def _old_timeline(self) -> list[str]:
        """The name of the timeline the earlier run wrote into this folder, if its metrics say so."""
        try:
            record = json.loads((self.path / METRICS).read_text())
            written = Path(record["config"]["timeline"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        try:  # a relative name is read from here, as the earlier run most likely ran from here
            inside = os.path.samefile(written.parent, self.path)
        except OSError:
            return []
        return [written.name] if inside and written.name not in (MODEL, METRICS, LOCK) else []

    def probe(self) -> None:
        """Prove the folder writable now, not after training has been paid for."""
        try:
            with files.Staged(self.path / ".probe") as staged:
                staged.file.write(b"\0")
                staged.finish()
        except OSError as exc:
            raise UserError(f"--out {quote(self.path)}: cannot write there ({exc.strerror or exc})") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def save_results(folder: str | os.PathLike, model: bytes, record: dict) -> None:
    """Write ``model.npz`` and ``metrics.json`` together (see the module's docstring).

    ``record`` gains ``model_sha256``. Raises OSError when either cannot be
    written; both old files are then untouched.
    """
    folder = Path(folder)
    record["model_sha256"] = hashlib.sha256(model).hexdigest()
    text = (json.dumps(record, indent=2, allow_nan=True) + "\n").encode()
    files.write_together([(folder / MODEL, model), (folder / METRICS, text)])


def results_match(folder: str | os.PathLike) -> bool:
    """Whether ``metrics.json`` in ``folder`` describes the ``model.npz`` beside it."""
    folder = Path(folder)
    try:
        record = read_json(folder / METRICS, Record({"model_sha256": Text(64)}), limit=256 * MiB)
        digest = hashlib.sha256((folder / MODEL).read_bytes()).hexdigest()
    except (OSError, UserError):  # missing, damaged, huge or of another shape: it describes no model here
        return False
    return record.get("model_sha256") == digest
