"""Fetch a dataset's four files from a list of mirrors, verifying each payload.

A file only ever appears under its final name after its decompressed MD5
matched the canonical one and it was fsynced: it is written to a temporary
file in the destination folder and renamed atomically, so an interrupted or
corrupt download can never be mistaken for good data.
"""

from __future__ import annotations

import functools
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from ..common import files
from ..common.errors import UserError
from ..common.version import __version__
from ..common.wording import checksum_mismatch, one_line, os_reason
from . import datasets, idx

TIMEOUT_S = 30
_BLOCK = 1 << 16
_TTY_REFRESH_S = 0.1


class _MirrorFailed(Exception):
    """One mirror could not supply one file; the next mirror is tried."""


def _is_url(mirror: str) -> bool:
    return urllib.parse.urlsplit(mirror).scheme in ("http", "https")


def _local_folder(mirror: str | os.PathLike) -> Path:
    text = os.fspath(mirror)
    if text.startswith("file:"):
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(text).path))
    return Path(text).expanduser()


def _size(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


class _Progress:
    """Percent and size on ``out``: redrawn in place on a tty, two lines otherwise."""

    def __init__(self, out: IO[str], label: str) -> None:
        self.out, self.label = out, label
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.total: int | None = None
        self.done = 0
        self._last = 0.0
        self._open_line = False  # a tty line drawn with \r and not yet ended

    def start(self, total: int | None) -> None:
        self.total = total  # off a tty nothing is printed until the file is done: a failure is then one line

    def _text(self) -> str:
        if self.total:
            percent = 100 * self.done // self.total
            return f"{self.label}: {percent:3d}% ({_size(self.done)} of {_size(self.total)})"
        return f"{self.label}: {_size(self.done)}"

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self._last >= _TTY_REFRESH_S:
            self._last = now
            self._open_line = True
            print(f"\r{self._text()}", end="", file=self.out, flush=True)

    def finish(self, note: str) -> None:
        if self.tty:
            print(f"\r{self._text()}, {note}", file=self.out, flush=True)
        else:
            print(f"{self.label}: {_size(self.done)}, {note}", file=self.out, flush=True)
        self._open_line = False

    def abandon(self) -> None:
        """End a half-drawn tty line so the failure message starts on its own."""
        if self._open_line:
            print(file=self.out, flush=True)
            self._open_line = False


def _copy(read: Callable[[int], bytes], dst: IO[bytes], progress: _Progress) -> None:
    """Copy source to dst; source faults fail the mirror, dst faults propagate."""
    while True:
        try:
            block = read(_BLOCK)
        except (OSError, http.client.HTTPException) as exc:
            raise _MirrorFailed(f"read failed: {one_line(exc) or type(exc).__name__}") from None
        if not block:
            return
        dst.write(block)
        progress.update(len(block))


def _fetch_url(url: str, dst: IO[bytes], progress: _Progress) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": f"pnn_mpi/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise _MirrorFailed(f"HTTP {exc.code} {one_line(exc.reason)}") from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise _MirrorFailed(one_line(reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _MirrorFailed(one_line(exc) or type(exc).__name__) from None
    with response:
        length = response.headers.get("Content-Length")
        progress.start(int(length) if length and length.isdigit() else None)
        _copy(response.read, dst, progress)


def _fetch_local(src: Path, dst: IO[bytes], progress: _Progress) -> None:
    try:
        fh = open(src, "rb")
    except OSError as exc:
        raise _MirrorFailed(f"cannot read {src}: {os_reason(exc)}") from None
    with fh:
        progress.start(os.fstat(fh.fileno()).st_size)
        _copy(fh.read, dst, progress)


def _try_mirror(mirror: str, basename: str, want_md5: str, dest: Path, out: IO[str]) -> Path:
    """Fetch one file from one mirror into ``dest``; return where it was stored."""
    if _is_url(mirror):
        source = mirror.rstrip("/") + f"/{basename}.gz"
        target_name = f"{basename}.gz"
        fetch = functools.partial(_fetch_url, source)
    elif "://" in mirror and not mirror.startswith("file:"):
        raise _MirrorFailed("unsupported URL scheme (use http, https, file or a folder)")
    else:
        folder = _local_folder(mirror)
        src = datasets.find_file(folder, basename)
        if src is None:
            if not os.path.isdir(folder):
                raise _MirrorFailed("no such folder")
            raise _MirrorFailed(f"holds neither {basename} nor {basename}.gz")
        source, target_name = str(src), src.name
        fetch = functools.partial(_fetch_local, src)

    progress = _Progress(out, source)
    # The temporary's name ends with the final name, so a .gz payload keeps its
    # suffix and payload_md5 decompresses it; the leading dot keeps it out of listings.
    target = dest / target_name
    try:
        with files.Staged(target) as staged:
            fetch(staged.file, progress)
            staged.finish()
            try:
                got = idx.payload_md5(staged.temp)
            except UserError as exc:
                raise _MirrorFailed(one_line(str(exc).replace(f"{staged.temp}: ", "", 1))) from None
            if got != want_md5:
                raise _MirrorFailed(checksum_mismatch(got, want_md5))
            progress.finish("MD5 ok")
            staged.rename()
            files.fsync_dir(dest)
            return target
    finally:
        progress.abandon()


def _next_steps(spec: datasets.DatasetSpec) -> str:
    """What to try when no mirror answered: another mirror, or a copy where training looks."""
    places = ", ".join(str(d) for d in datasets.candidate_dirs(spec.name))
    return (
        f"next: name a reachable copy with --mirror URL|DIR (an http(s) or file:// URL, or a folder holding the "
        f".gz or raw files), or put the four files in a folder and set {datasets.ENV_VAR} to it, or into one of "
        f"the folders training searches: {places}"
    )


def _existing_ok(path: Path, want_md5: str) -> str | None:
    """None if ``path`` holds the canonical payload, else why not."""
    try:
        got = idx.payload_md5(path)
    except UserError as exc:
        return one_line(str(exc).replace(f"{path}: ", "", 1))
    return None if got == want_md5 else checksum_mismatch(got, want_md5)


def _fetch_one(spec: datasets.DatasetSpec, basename: str, dest: Path, mirrors: Sequence[str], out: IO[str]) -> None:
    want = spec.md5[basename]
    existing = datasets.find_file(dest, basename)
    if existing is not None:
        problem = _existing_ok(existing, want)
        if problem is None:
            print(f"{existing}: already present, MD5 ok; skipping", file=out, flush=True)
            return
        print(f"{existing}: present but bad ({problem}); fetching again", file=out, flush=True)
    failures = []
    for mirror in mirrors:
        try:
            stored = _try_mirror(str(mirror), basename, want, dest, out)
        except _MirrorFailed as exc:
            failures.append(f"{mirror}: {exc}")
            print(f"{basename}: mirror {mirror} failed: {exc}", file=out, flush=True)
            continue
        if existing is not None and existing != stored:
            # A bad raw file would shadow the good .gz (find_file prefers raw).
            existing.unlink(missing_ok=True)
            print(f"{existing}: removed (replaced by {stored.name})", file=out, flush=True)
        return
    if not failures:
        raise UserError(f"cannot fetch {basename} of {spec.name}: no mirrors given")
    raise UserError(f"cannot fetch {basename} of {spec.name}; every mirror failed: " + "; ".join(failures) + "; " + _next_steps(spec))


def download(
    name: str,
    dest: str | os.PathLike | None = None,
    mirrors: Sequence[str | os.PathLike] | None = None,
    *,
    out: IO[str] | None = None,
) -> Path:
    """Fetch dataset ``name`` into ``dest`` (default ./data/<name>); return ``dest``.

    Mirrors are http(s) URL prefixes, ``file://`` URLs or local folders,
    tried in turn for each file; files already present with the right payload
    MD5 are kept.  Progress goes to ``out`` (None: whatever sys.stderr is at
    call time, so redirection and test capture work).
    """
    out = sys.stderr if out is None else out
    spec = datasets.get_spec(name)
    if not spec.md5:
        raise UserError(f"{spec.name}: nothing to download (no canonical files); point --data-dir at your IDX files")
    dest = Path.cwd() / "data" / spec.name if dest is None else Path(dest).expanduser()
    sources = [str(m) for m in (spec.mirrors if mirrors is None else mirrors)]  # URLs and folders, as text
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for basename in spec.files.values():
            _fetch_one(spec, basename, dest, sources, out)
    except OSError as exc:
        where = exc.filename or dest
        raise UserError(f"{where}: cannot write: {os_reason(exc)}") from None
    return dest
