"""Read and write IDX files (the MNIST container format), raw or gzip-compressed.

Every MPI rank reads only its own slice of the training set, so the reader
never materialises records outside ``[start, stop)``: raw files are read with
one seek, and ``.gz`` files are decompressed as a stream in bounded chunks,
discarding what precedes the slice and stopping once the slice is complete.
Every fault a bad file can cause surfaces as a one-line ``UserError`` that
names the file; no OSError/zlib.error/EOFError traceback escapes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import operator
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common import files
from ..common.errors import UserError
from ..common.wording import checksum_mismatch, one_line, os_reason

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# Bytes of decompressed (or raw) data handled per step: large enough that the
# Python loop is negligible next to zlib, small enough to bound memory.
CHUNK = 1 << 20

# Deflate cannot expand data by more than ~1032:1, so a header claiming more
# than this many bytes per compressed byte is certainly truncated; checking it
# up front avoids allocating a huge output array for a lying header.
_MAX_DEFLATE_RATIO = 1100
_MAX_IMAGE_PIXELS = 2**31 - 1  # one image's pixels must fit one array dimension anywhere

_EXPECT = {"images": (IMAGES_MAGIC, 3), "labels": (LABELS_MAGIC, 1)}
_UNSIGNED_BYTE = 0x08
_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "16-bit int",
    0x0C: "32-bit int",
    0x0D: "32-bit float",
    0x0E: "64-bit float",
}
_GZIP_MAGIC = b"\x1f\x8b"
_NUM_CLASSES = 10


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX header declares, so callers can size slices before reading."""

    path: Path
    magic: int
    shape: tuple[int, ...]
    header_bytes: int

    @property
    def count(self) -> int:
        """Number of records (the first dimension)."""
        return self.shape[0]

    @property
    def record_bytes(self) -> int:
        """Bytes per record: rows*cols for images, 1 for labels."""
        return math.prod(self.shape[1:])

    @property
    def payload_bytes(self) -> int:
        """Bytes the header promises after itself."""
        return self.count * self.record_bytes


def _is_gzip_name(path: Path) -> bool:
    return path.name.endswith(".gz")


class _Stream:
    """What both readers share: the file, its size, the position and an optional hasher."""

    def __init__(self, path: Path, fh) -> None:
        self.path = path
        self._fh = fh
        self.size = os.fstat(fh.fileno()).st_size
        self.hasher: Any = None  # a hashlib object when the payload is checksummed
        self.pos = 0

    def _account(self, data) -> None:
        self.pos += len(data)
        if self.hasher is not None:
            self.hasher.update(data)


class _RawStream(_Stream):
    """Sequential reader over an uncompressed file; seeks where it may."""

    compressed = False

    def read(self, n: int) -> bytes:
        data = self._fh.read(n)
        self._account(data)
        return data

    def readinto(self, view: memoryview) -> int:
        filled = 0
        while filled < len(view):
            got = self._fh.readinto(view[filled : filled + CHUNK])
            if not got:
                break
            self._account(view[filled : filled + got])
            filled += got
        return filled

    def skip(self, n: int) -> int:
        if self.hasher is None:
            target = min(self.pos + n, self.size)
            self._fh.seek(target)
            skipped, self.pos = target - self.pos, target
            return skipped
        return _discard(self, n)

    def drain(self) -> int:
        """Consume to end of file; return how many bytes were left."""
        if self.hasher is None:
            return self.skip(max(self.size - self.pos, 0))
        return _discard(self, None)

    def chunk(self, limit: int) -> bytes:
        return self.read(limit)


class _GzipStream(_Stream):
    """Sequential reader over a gzip file, decompressing in bounded chunks.

    Handles concatenated members and trailing zero padding as gzip(1) does;
    zlib checks each member's CRC and length when its end is reached.
    """

    compressed = True

    def __init__(self, path: Path, fh) -> None:
        super().__init__(path, fh)
        self._inflater: Any = None
        self._pending = b""
        self._members = 0

    def _fail(self, fault: str) -> UserError:
        return UserError(f"{self.path}: {fault}")

    def _start_member(self) -> bool:
        """Begin the next gzip member; False at a clean end of file."""
        while True:
            if not self._pending:
                self._pending = self._fh.read(CHUNK)
                if not self._pending:
                    return False
            if self._members:
                # gzip(1) tolerates zero padding after a complete member.
                self._pending = self._pending.lstrip(b"\0")
                if not self._pending:
                    continue
            if len(self._pending) < 2:
                self._pending += self._fh.read(CHUNK)
            if self._pending[:2] != _GZIP_MAGIC:
                if self._members:
                    raise self._fail("trailing garbage after the gzip data")
                raise self._fail("not gzip-compressed, though the name ends in .gz")
            self._inflater = zlib.decompressobj(wbits=31)
            self._members += 1
            return True

    def chunk(self, limit: int) -> bytes:
        """Up to ``limit`` decompressed bytes; b"" only at the end of the data."""
        while True:
            if self._inflater is None and not self._start_member():
                return b""
            try:
                out = self._inflater.decompress(self._pending, limit)
            except zlib.error as exc:
                raise self._fail(f"corrupt gzip data ({one_line(exc)})") from None
            self._pending = self._inflater.unconsumed_tail
            if self._inflater.eof:
                self._pending = self._inflater.unused_data
                self._inflater = None
            elif not out and not self._pending:
                self._pending = self._fh.read(CHUNK)
                if not self._pending:
                    raise self._fail("gzip stream cut short (the file ends inside the compressed data)")
            if out:
                self._account(out)
                return out

    def read(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            out = self.chunk(n - got)
            if not out:
                break
            parts.append(out)
            got += len(out)
        return b"".join(parts)

    def readinto(self, view: memoryview) -> int:
        filled = 0
        while filled < len(view):
            out = self.chunk(min(CHUNK, len(view) - filled))
            if not out:
                break
            view[filled : filled + len(out)] = out
            filled += len(out)
        return filled

    def skip(self, n: int) -> int:
        return _discard(self, n)

    def drain(self) -> int:
        """Decompress to the end (verifying every CRC); return bytes left."""
        return _discard(self, None)


def _discard(stream, n: int | None) -> int:
    """Read and drop ``n`` bytes (all, if None); return how many there were."""
    done = 0
    while n is None or done < n:
        out = stream.chunk(CHUNK if n is None else min(CHUNK, n - done))
        if not out:
            break
        done += len(out)
    return done


@contextlib.contextmanager
def _open_stream(path: Path) -> Iterator[_RawStream | _GzipStream]:
    """Open ``path`` for sequential reading; turn I/O faults into UserError."""
    try:
        with open(path, "rb") as fh:
            if _is_gzip_name(path):
                yield _GzipStream(path, fh)
            else:
                yield _RawStream(path, fh)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {os_reason(exc)}") from None
    except (EOFError, zlib.error) as exc:  # defensive: the streams convert their own
        raise UserError(f"{path}: unreadable: {one_line(exc)}") from None


def _describe_magic(magic: int) -> str:
    type_code, ndims = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16:
        return f"{magic} (0x{magic:08X}: not an IDX file)"
    kind = _TYPE_NAMES.get(type_code, f"unknown type 0x{type_code:02X}")
    return f"{magic} (0x{magic:08X}: {ndims}-dimensional, {kind})"


def _parse_header(path: Path, stream, expect: str) -> IdxHeader:
    if expect not in _EXPECT:
        raise ValueError(f"expect must be 'images' or 'labels', not {expect!r}")
    want_magic, want_dims = _EXPECT[expect]
    head = stream.read(4)
    if not head:
        what = "decompresses to nothing" if stream.compressed else "empty file"
        raise UserError(f"{path}: {what}; expected an IDX {expect} file")
    needed = 4 + 4 * want_dims
    if len(head) < 4:
        raise UserError(f"{path}: short header: file holds {len(head)} bytes, an IDX {expect} header needs {needed}")
    magic = int.from_bytes(head, "big")
    type_code, ndims = head[2], head[3]
    if head[:2] == b"\0\0" and type_code != _UNSIGNED_BYTE:
        name = _TYPE_NAMES.get(type_code, "unknown type")
        raise UserError(f"{path}: unsupported element type 0x{type_code:02X} ({name}); only 0x08 (unsigned byte) is supported")
    if magic != want_magic:
        hint = ""
        if head[:2] == _GZIP_MAGIC and not stream.compressed:
            hint = "; the file looks gzip-compressed, so its name should end in .gz"
        raise UserError(
            f"{path}: wrong magic number {_describe_magic(magic)}; expected "
            f"{want_magic} (0x{want_magic:08X}: {want_dims}-dimensional, unsigned byte) "
            f"for IDX {expect}{hint}"
        )
    dims = stream.read(4 * ndims)
    if len(dims) < 4 * ndims:
        raise UserError(f"{path}: short header: file holds {4 + len(dims)} bytes, an IDX {expect} header needs {needed}")
    shape = tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4))
    if expect == "images" and (shape[1] < 1 or shape[2] < 1):
        raise UserError(f"{path}: bad image dimensions {shape[1]}x{shape[2]}: rows and columns must be at least 1")
    if expect == "images" and shape[1] * shape[2] > _MAX_IMAGE_PIXELS:
        # Even a file of no images must not claim records no array could hold.
        raise UserError(f"{path}: bad image dimensions {shape[1]}x{shape[2]}: more than {_MAX_IMAGE_PIXELS} pixels per image")
    return IdxHeader(path=path, magic=magic, shape=shape, header_bytes=needed)


def read_header(path: str | os.PathLike, expect: str) -> IdxHeader:
    """Read and check just the header, so counts are known without the payload.

    ``expect`` is "images" (3 dimensions) or "labels" (1 dimension).
    """
    path = Path(path)
    with _open_stream(path) as stream:
        return _parse_header(path, stream, expect)


def _amount(header: IdxHeader, expect: str, payload_bytes: int) -> str:
    return f"header says {header.count} {expect} ({header.payload_bytes} bytes), file holds {payload_bytes} bytes"


def _truncated(header: IdxHeader, expect: str, held: int) -> UserError:
    return UserError(f"{header.path}: truncated payload: {_amount(header, expect, held)}")


def _oversized(header: IdxHeader, expect: str, extra: int) -> UserError:
    held = header.payload_bytes + extra
    return UserError(f"{header.path}: oversized payload: {_amount(header, expect, held)} ({extra} bytes after the last record)")


def _check_range(header: IdxHeader, start, stop) -> tuple[int, int]:
    start = operator.index(start)
    stop = header.count if stop is None else operator.index(stop)
    if not 0 <= start <= stop <= header.count:
        raise UserError(f"{header.path}: records [{start}, {stop}) are outside the file's range [0, {header.count}]")
    return start, stop


def _check_labels(header: IdxHeader, labels: np.ndarray, start: int) -> None:
    bad = np.flatnonzero(labels >= _NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{header.path}: label out of range at index {start + i}: {int(labels[i])} "
            f"(labels must be 0..{_NUM_CLASSES - 1}); {bad.size} bad labels in the slice"
        )


def _begin(stream, path: Path, expect: str, start, stop) -> tuple[IdxHeader, int, int]:
    """Parse the header and refuse, before reading any payload, a range or size the file cannot hold.

    Raw files are size-checked with one stat; for ``.gz`` a declared payload
    beyond what deflate can expand the compressed size to is refused at once.
    """
    header = _parse_header(path, stream, expect)
    start, stop = _check_range(header, start, stop)
    expected_end = header.header_bytes + header.payload_bytes
    if not stream.compressed:
        held = stream.size - header.header_bytes
        if stream.size < expected_end:
            raise _truncated(header, expect, held)
        if stream.size > expected_end:
            raise _oversized(header, expect, held - header.payload_bytes)
    elif header.header_bytes + stop * header.record_bytes > _MAX_DEFLATE_RATIO * stream.size + 1024:
        # Impossible for this compressed size: count what is there (streamed), then fail.
        raise _truncated(header, expect, stream.drain())
    skipped = stream.skip(start * header.record_bytes)
    if skipped < start * header.record_bytes:
        raise _truncated(header, expect, skipped)
    return header, start, stop


def check_declared_size(path: str | os.PathLike, expect: str) -> IdxHeader:
    """The header, after refusing a record count the file cannot hold (one stat for a raw
    file; for ``.gz``, a count beyond what deflate can expand its size to).

    Cheap, so callers can run it before sizing anything from the count.
    """
    path = Path(path)
    with _open_stream(path) as stream:
        header, _, _ = _begin(stream, path, expect, 0, None)
    return header


def _read_into(stream, header: IdxHeader, expect: str, out: np.ndarray, at: int) -> None:
    """Fill ``out`` with the payload bytes that follow record ``at``."""
    got = stream.readinto(out.data)
    if got < out.size:
        raise _truncated(header, expect, at * header.record_bytes + got)


def _end(stream, path: Path, header: IdxHeader, expect: str, stop: int, md5: str | None, check_end: bool) -> None:
    """Read to the end when asked (CRC, nothing after the last record, the MD5)."""
    rb = header.record_bytes
    if md5 is not None or check_end or stop == header.count:
        tail = stream.drain()
        if stop < header.count and tail < (header.count - stop) * rb:
            raise _truncated(header, expect, stop * rb + tail)
        extra = tail - (header.count - stop) * rb
        if extra:
            raise _oversized(header, expect, extra)
    if md5 is not None:
        digest = stream.hasher.hexdigest()
        if digest != md5.lower():
            canonical = path.name[:-3] if _is_gzip_name(path) else path.name
            raise UserError(f"{path}: {checksum_mismatch(digest, md5, canonical)}")


def read_records(
    path: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    *,
    expect: str,
    md5: str | None = None,
    check_end: bool = False,
) -> np.ndarray:
    """Return records ``[start, stop)`` as uint8: images (n, rows*cols), labels (n,).

    Only the slice is held in memory.  Raw files are size-checked with one
    stat.  For ``.gz`` the stream is read to its end (verifying the gzip CRC
    and that nothing follows the last record) only when the slice reaches the
    last record, when ``check_end`` is set, or when ``md5`` is given; ``md5``
    is compared against the MD5 of the whole decompressed file.
    """
    path = Path(path)
    with _open_stream(path) as stream:
        if md5 is not None:
            stream.hasher = hashlib.md5()
        header, start, stop = _begin(stream, path, expect, start, stop)
        rb = header.record_bytes
        out = np.empty((stop - start) * rb, dtype=np.uint8)
        _read_into(stream, header, expect, out, start)
        _end(stream, path, header, expect, stop, md5, check_end)
    if expect == "labels":
        _check_labels(header, out, start)
        return out
    return out.reshape(stop - start, rb)


def iter_records(
    path: str | os.PathLike,
    stop: int | None = None,
    *,
    expect: str,
    chunk: int,
    md5: str | None = None,
) -> Iterator[np.ndarray]:
    """Records ``[0, stop)`` in blocks of at most ``chunk`` records, read as a stream.

    For files too big to hold (or a ``.gz`` that inflates to more than
    memory): one block is in memory at a time, in a buffer reused for every
    block, so consume each before asking for the next. The end of the file is
    always checked, after the last block, as by ``read_records(check_end=True)``.
    """
    path = Path(path)
    with _open_stream(path) as stream:
        if md5 is not None:
            stream.hasher = hashlib.md5()
        header, _, stop = _begin(stream, path, expect, 0, stop)
        rb = header.record_bytes
        buffer = np.empty(max(min(chunk, stop), 1) * rb, dtype=np.uint8)
        for lo in range(0, stop, chunk):
            rows = min(chunk, stop - lo)
            block = buffer[: rows * rb]
            _read_into(stream, header, expect, block, lo)
            if expect == "labels":
                _check_labels(header, block, lo)
                yield block
            else:
                yield block.reshape(rows, rb)
        _end(stream, path, header, expect, stop, md5, True)


def payload_md5(path: str | os.PathLike) -> str:
    """MD5 of the whole decompressed file (header included), streamed.

    Canonical checksums are defined on the payload, not on the .gz bytes,
    because the same payload can be gzip-wrapped in many ways.
    """
    path = Path(path)
    with _open_stream(path) as stream:
        stream.hasher = hashlib.md5()
        _discard(stream, None)
        return stream.hasher.hexdigest()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip when the name ends in .gz), deterministically.

    Meant for tests and tools; the reader accepts 1-d (labels) and 3-d (images).
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx needs a uint8 array, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, _UNSIGNED_BYTE, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = np.ascontiguousarray(array).data  # a view: no second copy in memory
    with files.Staged(path) as staged:  # like every file we make: exclusive, no link followed, whole
        fh = staged.file
        if _is_gzip_name(path):
            # filename="" and mtime=0 keep the compressed bytes reproducible;
            # level 6 (gzip's default) is several times faster than 9 for ~1% size.
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=6) as gz:
                gz.write(header)
                gz.write(payload)
        else:
            fh.write(header)
            fh.write(payload)
        staged.commit()
