"""IDX reader/writer: round trips, slices, and one UserError per kind of bad file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import find_mnist
from pnn_mpi.common.errors import UserError
from pnn_mpi.data import idx

MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
}


def real_mnist_dir() -> Path | None:
    return find_mnist()


def real_file(basename: str) -> Path:
    folder = real_mnist_dir()
    if folder is None:
        pytest.skip("real MNIST not found: set PNN_MPI_DATA")
    raw = folder / basename
    return raw if raw.is_file() else folder / f"{basename}.gz"


def header(type_code: int, dims: list[int]) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def put(path: Path, data: bytes) -> Path:
    """Write ``data`` as the decompressed content of ``path`` (gzip if .gz)."""
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(37, 5, 3), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 10, size=37, dtype=np.uint8)


SUFFIXES = ["", ".gz"]


# --- round trips and slices -------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip(tmp_path, images, labels, suffix):
    ipath, lpath = tmp_path / f"i{suffix}", tmp_path / f"l{suffix}"
    idx.write_idx(ipath, images)
    idx.write_idx(lpath, labels)
    h = idx.read_header(ipath, "images")
    assert (h.magic, h.shape, h.header_bytes) == (idx.IMAGES_MAGIC, (37, 5, 3), 16)
    assert (h.count, h.record_bytes, h.payload_bytes) == (37, 15, 555)
    hl = idx.read_header(lpath, "labels")
    assert (hl.magic, hl.shape, hl.header_bytes, hl.record_bytes) == (idx.LABELS_MAGIC, (37,), 8, 1)
    got = idx.read_records(ipath, expect="images", check_end=True)
    assert got.dtype == np.uint8 and got.shape == (37, 15)
    np.testing.assert_array_equal(got, images.reshape(37, 15))
    np.testing.assert_array_equal(idx.read_records(lpath, expect="labels"), labels)


def test_gzip_output_is_deterministic(tmp_path, images):
    idx.write_idx(tmp_path / "a.gz", images)
    idx.write_idx(tmp_path / "b.gz", images)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == (header(8, [37, 5, 3]) + images.tobytes())


def test_payload_md5_is_of_decompressed_file(tmp_path, images):
    idx.write_idx(tmp_path / "a", images)
    idx.write_idx(tmp_path / "a.gz", images)
    assert idx.payload_md5(tmp_path / "a") == idx.payload_md5(tmp_path / "a.gz")


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("chunk", [7, 16, 1 << 20])
def test_slices_match_full_read(tmp_path, monkeypatch, images, labels, suffix, chunk):
    # Tiny chunks exercise every chunk-boundary case of the streaming reader.
    monkeypatch.setattr(idx, "CHUNK", chunk)
    ipath, lpath = tmp_path / f"i{suffix}", tmp_path / f"l{suffix}"
    idx.write_idx(ipath, images)
    idx.write_idx(lpath, labels)
    full_x = images.reshape(37, 15)
    bounds = [(0, 0), (0, 1), (0, 37), (36, 37), (37, 37), (5, 5), (3, 20), (1, 36), (18, 19)]
    bounds += [(s, e) for s in range(0, 38, 4) for e in range(s, 38, 5)]
    for start, stop in bounds:
        x = idx.read_records(ipath, start, stop, expect="images")
        y = idx.read_records(lpath, start, stop, expect="labels")
        assert x.shape == (stop - start, 15) and y.shape == (stop - start,)
        np.testing.assert_array_equal(x, full_x[start:stop])
        np.testing.assert_array_equal(y, labels[start:stop])
    np.testing.assert_array_equal(idx.read_records(ipath, 30, expect="images"), full_x[30:])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_zero_records(tmp_path, suffix):
    path = tmp_path / f"i{suffix}"
    idx.write_idx(path, np.zeros((0, 2, 2), np.uint8))
    assert idx.read_records(path, expect="images", check_end=True).shape == (0, 4)


def test_multi_member_gzip_and_zero_padding(tmp_path, images):
    # gzip(1) accepts concatenated members and trailing zeros; so do we.
    data = header(8, [37, 5, 3]) + images.tobytes()
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(data[:100], mtime=0) + gzip.compress(data[100:], mtime=0) + b"\0" * 9)
    got = idx.read_records(path, 2, 37, expect="images", check_end=True)
    np.testing.assert_array_equal(got, images.reshape(37, 15)[2:])


# --- faults: each gives a one-line UserError naming the file ----------------


def expect_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_wrong_magic(tmp_path, labels, suffix):
    path = tmp_path / f"l{suffix}"
    idx.write_idx(path, labels)
    msg = expect_error("wrong magic number 2049", idx.read_header, path, "images")
    assert msg.startswith(f"{path}: ") and "expected 2051" in msg
    put(path, b"\x12\x34\x56\x78" + b"\0" * 12)
    msg = expect_error("wrong magic number", idx.read_records, path, expect="labels")
    assert "not an IDX file" in msg and "expected 2049" in msg


def test_gzip_data_without_gz_name_gets_a_hint(tmp_path, labels):
    path = tmp_path / "labels.idx"
    idx.write_idx(tmp_path / "l.gz", labels)
    path.write_bytes((tmp_path / "l.gz").read_bytes())
    expect_error("name should end in .gz", idx.read_header, path, "labels")


def test_not_gzip_despite_name(tmp_path, labels):
    path = tmp_path / "l.gz"
    path.write_bytes(header(8, [1]) + b"\1")
    expect_error("not gzip-compressed", idx.read_header, path, "labels")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_wrong_number_of_dims(tmp_path, suffix):
    path = put(tmp_path / f"x{suffix}", header(8, [4, 2]) + bytes(8))
    msg = expect_error("wrong magic number 2050", idx.read_header, path, "images")
    assert "2-dimensional" in msg and "3-dimensional" in msg


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_bad_image_dimensions(tmp_path, suffix):
    path = put(tmp_path / f"x{suffix}", header(8, [4, 0, 28]))
    expect_error(r"bad image dimensions 0x28", idx.read_header, path, "images")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_images_too_large_for_an_array(tmp_path, suffix):
    """Zero records of 2**32 x 2**32 pixels: the payload size is right (0 bytes), the shape is not."""
    path = put(tmp_path / f"x{suffix}", header(8, [0, 0x8C103395, 0xE9F38DF8]))
    expect_error(r"bad image dimensions 2349872021x3925052920: more than 2147483647 pixels", idx.read_records, path, expect="images")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_wrong_type_code(tmp_path, suffix):
    path = put(tmp_path / f"x{suffix}", header(0x0D, [2, 2, 2]) + bytes(32))
    expect_error(r"unsupported element type 0x0D \(32-bit float\)", idx.read_header, path, "images")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_file(tmp_path, suffix):
    path = put(tmp_path / f"x{suffix}", b"")
    expect_error("empty file|decompresses to nothing", idx.read_header, path, "images")
    (tmp_path / "zero.gz").write_bytes(b"")
    expect_error("decompresses to nothing", idx.read_records, tmp_path / "zero.gz", expect="labels")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_short_header(tmp_path, suffix):
    path = put(tmp_path / f"x{suffix}", b"\0\0")
    expect_error("short header: file holds 2 bytes, an IDX images header needs 16", idx.read_header, path, "images")
    put(path, header(8, [10, 28, 28])[:11])
    expect_error("short header: file holds 11 bytes", idx.read_records, path, expect="images")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_payload(tmp_path, suffix):
    path = put(tmp_path / f"x{suffix}", header(8, [10, 2, 2]) + bytes(25))
    msg = expect_error("truncated payload", idx.read_records, path, expect="images")
    assert msg == f"{path}: truncated payload: header says 10 images (40 bytes), file holds 25 bytes"
    # A slice inside the good part still fails for raw (stat is cheap) and
    # for gz when the end is checked.
    expect_error("file holds 25 bytes", idx.read_records, path, 0, 2, expect="images", check_end=True)


def test_truncated_payload_detected_when_slice_hits_the_gap_gz(tmp_path):
    path = put(tmp_path / "x.gz", header(8, [10]) + bytes(6))
    expect_error("header says 10 labels .10 bytes., file holds 6 bytes", idx.read_records, path, 4, 8, expect="labels")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_oversized_payload(tmp_path, suffix):
    path = put(tmp_path / f"x{suffix}", header(8, [10]) + bytes(13))
    msg = expect_error("oversized payload", idx.read_records, path, expect="labels")
    assert msg.endswith("header says 10 labels (10 bytes), file holds 13 bytes (3 bytes after the last record)")
    expect_error("oversized payload", idx.read_records, path, 0, 3, expect="labels", check_end=True)


def test_lying_header_does_not_allocate_huge_arrays(tmp_path):
    # Must fail fast, not with a MemoryError: 2**32-1 records of 28x28 bytes in 100 bytes,
    # and 2**32-1 records of 2**32-1 x 2**32-1 bytes (refused by its shape alone).
    for dims, fault in (([2**32 - 1, 28, 28], "truncated payload"), ([2**32 - 1, 2**32 - 1, 2**32 - 1], "bad image dimensions")):
        for name in ("x", "x.gz"):
            path = put(tmp_path / name, header(8, dims) + bytes(100))
            expect_error(fault, idx.read_records, path, expect="images")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_label_out_of_range(tmp_path, suffix):
    labels = np.array([1, 2, 3, 12, 4, 200], np.uint8)
    path = tmp_path / f"l{suffix}"
    idx.write_idx(path, labels)
    expect_error("label out of range at index 3: 12", idx.read_records, path, expect="labels")
    expect_error("label out of range at index 5: 200", idx.read_records, path, 4, 6, expect="labels")
    np.testing.assert_array_equal(idx.read_records(path, 0, 3, expect="labels"), [1, 2, 3])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_checksum_mismatch(tmp_path, images, suffix):
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    idx.write_idx(path, images)
    good = idx.payload_md5(path)
    idx.read_records(path, 0, 1, expect="images", md5=good)
    msg = expect_error("checksum mismatch", idx.read_records, path, 0, 1, expect="images", md5="0" * 32)
    assert msg == (f"{path}: checksum mismatch: payload MD5 is {good}, expected {'0' * 32} (not the canonical train-images-idx3-ubyte?)")


def test_corrupt_gzip(tmp_path):
    data = np.random.default_rng(2).integers(0, 4, size=(200, 28, 28), dtype=np.uint8)
    path = tmp_path / "x.gz"
    idx.write_idx(path, data)
    blob = bytearray(path.read_bytes())
    for i in range(len(blob) // 2, len(blob) // 2 + 8):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    expect_error("corrupt gzip data", idx.read_records, path, expect="images", check_end=True)
    expect_error("corrupt gzip data", idx.payload_md5, path)


def test_gzip_crc_checked_at_end(tmp_path, labels):
    path = tmp_path / "l.gz"
    idx.write_idx(path, labels)
    blob = bytearray(path.read_bytes())
    blob[-8] ^= 0x01  # CRC32 in the gzip trailer
    path.write_bytes(bytes(blob))
    assert idx.read_records(path, 0, 5, expect="labels").size == 5  # slice: no end check
    expect_error("corrupt gzip data", idx.read_records, path, 0, 5, expect="labels", check_end=True)
    expect_error("corrupt gzip data", idx.read_records, path, 30, 37, expect="labels")


def test_gzip_cut_short(tmp_path, images):
    path = tmp_path / "x.gz"
    idx.write_idx(path, images)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 20])
    expect_error("gzip stream cut short", idx.read_records, path, expect="images")
    path.write_bytes(blob[:15])
    expect_error("gzip stream cut short|short header", idx.read_header, path, "images")


def test_trailing_garbage_after_gzip(tmp_path, labels):
    path = tmp_path / "l.gz"
    idx.write_idx(path, labels)
    path.write_bytes(path.read_bytes() + b"junk")
    expect_error("trailing garbage after the gzip data", idx.read_records, path, expect="labels", check_end=True)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_slice_outside_range(tmp_path, labels, suffix):
    path = tmp_path / f"l{suffix}"
    idx.write_idx(path, labels)
    for start, stop in [(-1, 3), (0, 38), (5, 4), (38, None)]:
        expect_error(r"outside the file's range \[0, 37\]", idx.read_records, path, start, stop, expect="labels")


def test_missing_and_unreadable_files(tmp_path):
    expect_error(f"{tmp_path / 'nope'}: cannot read: No such file", idx.read_header, tmp_path / "nope", "images")
    expect_error("cannot read", idx.read_records, tmp_path, expect="labels")  # a folder
    expect_error("cannot read", idx.payload_md5, tmp_path / "nope.gz")


# --- real MNIST ---------------------------------------------------------------


def test_real_slice_equals_full_read():
    path = real_file("train-images-idx3-ubyte")
    full = idx.read_records(path, expect="images")
    assert full.shape == (60000, 784)
    n = 60000 // 16
    for start, stop in [(0, n), (60000 - n, 60000), (29999, 30001), (12345, 12345)]:
        np.testing.assert_array_equal(idx.read_records(path, start, stop, expect="images"), full[start:stop])


def test_real_checksums():
    for basename, md5 in MNIST_MD5.items():
        path = real_file(basename)
        assert idx.payload_md5(path) == md5
        got = idx.read_records(path, 100, 200, expect=basename.split("-")[1], md5=md5)
        assert len(got) == 100


# --- property: random bytes only ever give UserError --------------------------

try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError:  # only the property test needs it
    hypothesis = None


if hypothesis is None:

    def test_random_bytes_only_raise_user_error():
        pytest.importorskip("hypothesis")

else:

    def _idx_like():
        """Bytes that often start like a real IDX header, so deeper checks run."""
        prefix = st.sampled_from([b"", b"\0\0\x08\x03", b"\0\0\x08\x01", b"\0\0\x0d\x03"])
        dims = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(lambda ds: b"".join(d.to_bytes(4, "big") for d in ds))
        return st.tuples(prefix, dims, st.binary(max_size=300)).map(lambda t: b"".join(t))

    @hypothesis.settings(max_examples=150, deadline=None, database=None)
    @hypothesis.given(
        data=st.one_of(st.binary(max_size=400), _idx_like()),
        how=st.sampled_from(["raw", "gz-name-raw-bytes", "gzip", "gzip-flipped"]),
        flip=st.integers(0, 10**6),
    )
    def test_random_bytes_only_raise_user_error(tmp_path_factory, data, how, flip):
        folder = tmp_path_factory.mktemp("fuzz", numbered=True)
        if how == "raw":
            path = folder / "f"
            path.write_bytes(data)
        else:
            path = folder / "f.gz"
            blob = bytearray(data if how == "gz-name-raw-bytes" else gzip.compress(data, mtime=0))
            if how == "gzip-flipped" and blob:
                blob[flip % len(blob)] ^= 1 + flip % 255
            path.write_bytes(bytes(blob))
        _exercise(path)


def _exercise(path: Path) -> None:
    for expect in ("images", "labels"):
        for call in (
            lambda: idx.read_header(path, expect),
            lambda: idx.read_records(path, expect=expect),
            lambda: idx.read_records(path, 1, 2, expect=expect, check_end=True),
            lambda: idx.read_records(path, expect=expect, md5="0" * 32),
        ):
            try:
                call()
            except UserError as exc:
                assert "\n" not in str(exc) and str(path) in str(exc)


def test_decompressor_errors_are_not_leaking(tmp_path):
    # Sanity check for the property above: zlib really does raise on this input.
    bad = b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 20
    with pytest.raises(zlib.error):
        zlib.decompress(bad, wbits=31)
    path = tmp_path / "b.gz"
    path.write_bytes(bad)
    expect_error("corrupt gzip data", idx.read_header, path, "images")
