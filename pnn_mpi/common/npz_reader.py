"""Reading ``.npy`` and ``.npz`` files that may come from anywhere, without trusting them.

``np.load`` inflates every entry of an archive it is asked for and allocates
whatever shape a header declares, so a 4 MB file can ask for gigabytes. Here a
caller names the entries it wants and what each must be (shape, dtype kinds,
a byte limit); each entry's declared sizes -- the zip directory's
uncompressed size and the ``.npy`` header's shape -- are checked against that
before a byte of data is inflated, and then exactly the declared bytes are
read (the zip CRC is checked at the end of each). Entries nobody asked for are
never opened. Object arrays are refused from their header, so nothing is ever
unpickled. Every fault is a ``Refused`` carrying one line; callers prefix the
file's name and what it was meant to be.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_HEADER = 10_000  # numpy's own limit for a trusted .npy header
_BLOCK = 1 << 20


class Refused(Exception):
    """A file or entry that is not what the caller needs; the message is one line."""


@dataclass(frozen=True)
class ArrayHeader:
    """What a ``.npy`` header declares, and where its data begins."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # bytes of magic and header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def file_kind(path: str | os.PathLike) -> str:
    """'npy', 'npz', 'empty' or 'other', from the first bytes (OSError if unreadable)."""
    with open(path, "rb") as handle:
        head = handle.read(6)
    if not head:
        return "empty"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGICS):
        return "npz"
    return "other"


def read_header(handle) -> ArrayHeader:
    """The header of the ``.npy`` data at ``handle``'s position, checked to describe plain numbers or text."""
    try:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle, max_header_size=_MAX_HEADER)
    except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise Refused(f"not a readable .npy header ({_first_line(exc)})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind in "OVMm":
        raise Refused(f"holds {dtype} data (Python objects or records), which is never loaded (allow_pickle=False)")
    if any(n < 0 for n in shape):
        raise Refused(f"declares a negative shape {shape}")
    return ArrayHeader(tuple(int(n) for n in shape), dtype, bool(fortran), handle.tell())


def check_header(
    header: ArrayHeader, name: str, *, shape: tuple[int, ...] | None = None, ndim: int | None = None, kinds: str | None = None, max_bytes: int | None = None
) -> None:
    """Refuse a header whose shape, dtype kind or size is not what the caller needs."""
    if kinds is not None and header.dtype.kind not in kinds:
        raise Refused(f"{name} has dtype {header.dtype}")
    if shape is not None and header.shape != shape:
        raise Refused(f"{name} has shape {header.shape} {header.dtype}, expected {shape}")
    if ndim is not None and len(header.shape) != ndim:
        raise Refused(f"{name} has shape {header.shape}, expected {ndim} dimension{'s' * (ndim != 1)}")
    if max_bytes is not None and header.nbytes > max_bytes:
        raise Refused(f"{name} declares {header.shape} {header.dtype} ({header.nbytes:,} bytes), more than the {max_bytes:,} it may hold")


def read_data(handle, header: ArrayHeader, out: np.ndarray | None = None) -> np.ndarray:
    """Exactly the data ``header`` declares, read in blocks into ``out`` (or a new array)."""
    direct = out is not None and not header.fortran and out.dtype == header.dtype and out.flags.c_contiguous and out.shape == header.shape
    target = out if direct and out is not None else np.empty(header.shape, dtype=header.dtype, order="F" if header.fortran else "C")
    flat = target.reshape(-1, order="A").view(np.uint8) if target.size else np.empty(0, np.uint8)
    filled = 0
    while filled < flat.size:
        block = handle.read(min(_BLOCK, flat.size - filled))
        if not block:
            raise Refused(f"ends after {filled:,} of the {flat.size:,} data bytes its header declares")
        flat[filled : filled + len(block)] = np.frombuffer(block, dtype=np.uint8)
        filled += len(block)
    if out is not None and not direct:
        out[...] = target  # the caller checked the shape; the dtype or order differs
        return out
    return target


class NpzArchive:
    """An ``.npz`` file opened for reading named entries only (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
            raise Refused(_first_line(exc)) from None
        self._entries: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            if info.filename.endswith(".npy"):
                self._entries.setdefault(info.filename[: -len(".npy")], info)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def header(self, name: str) -> ArrayHeader:
        """The entry's ``.npy`` header, after checking the zip directory's size for it is consistent."""
        with self._open(name) as handle:
            return self._checked_header(name, handle)

    def read(
        self,
        name: str,
        *,
        shape: tuple[int, ...] | None = None,
        ndim: int | None = None,
        kinds: str | None = None,
        max_bytes: int | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Entry ``name`` as an array, refused from its headers unless it is what the caller needs."""
        with self._open(name) as handle:
            header = self._checked_header(name, handle)
            check_header(header, name, shape=shape, ndim=ndim, kinds=kinds, max_bytes=max_bytes)
            try:
                array = read_data(handle, header, out)
                if handle.read(1):  # also makes zipfile check the entry's CRC
                    raise Refused(f"entry {name} holds bytes after its data")
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise Refused(f"entry {name}: {_first_line(exc)}") from None
        return array

    def text(self, name: str, max_chars: int = 1024) -> str:
        """A string entry (a 0-d unicode array, as ``np.array("text")`` saves), at most ``max_chars`` long."""
        array = self.read(name, shape=(), kinds="U", max_bytes=4 * max_chars)
        return str(array[()])

    def _open(self, name: str):
        info = self._entries.get(name)
        if info is None:
            raise Refused(f"missing array {name}")
        try:
            return self._zip.open(info)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, ValueError, zlib.error, OSError) as exc:
            raise Refused(f"entry {name}: {_first_line(exc)}") from None

    def _checked_header(self, name: str, handle) -> ArrayHeader:
        try:
            header = read_header(handle)
        except Refused as exc:
            raise Refused(f"entry {name}: {exc}") from None
        declared = self._entries[name].file_size
        if declared != header.offset + header.nbytes:
            raise Refused(
                f"entry {name}: the archive declares {declared:,} bytes, its header {header.offset + header.nbytes:,} ({header.shape} {header.dtype})"
            )
        return header

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NpyFile:
    """A ``.npy`` file whose header has been read and checked against its size on disk."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "rb")
        try:
            self.header = read_header(self._handle)
            held = os.fstat(self._handle.fileno()).st_size - self.header.offset
            if held != self.header.nbytes:
                what = "truncated" if held < self.header.nbytes else "oversized"
                raise Refused(f"{what}: its header declares {self.header.shape} {self.header.dtype} ({self.header.nbytes:,} bytes), the file holds {held:,}")
        except BaseException:
            self._handle.close()
            raise

    def rows(self, chunk: int):
        """The array in blocks of ``chunk`` leading-axis rows (C order only)."""
        if self.header.fortran:
            raise Refused("is stored in Fortran order; save it with np.save(path, np.ascontiguousarray(a))")
        n, rest = (self.header.shape[0], self.header.shape[1:]) if self.header.shape else (1, ())
        self._handle.seek(self.header.offset)
        for lo in range(0, n, chunk):
            rows = min(chunk, n - lo)
            part = ArrayHeader((rows, *rest), self.header.dtype, False, 0)
            yield read_data(self._handle, part)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> NpyFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(text[0].split()) if text else type(exc).__name__
