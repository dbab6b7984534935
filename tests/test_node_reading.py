"""One reader per node (``node_reading``): run under ``mpiexec -n P python -m pytest --with-mpi``.

Every rank's records handed over by the node's reader must equal what the rank
reads alone (``idx.read_records``), for raw and gzip files, ranges that cut the
reader's blocks anywhere, validation ranges after the training ones, and empty
ranges; a damaged file must become the same one-line error on every rank.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pnn_mpi.common.errors import UserError
from pnn_mpi.data import idx, node_reading
from pnn_mpi.data.slicing import slice_bounds
from pnn_mpi.parallel.comm import World, fail_together

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def node(world):
    node = world.node()
    yield node
    node.free()


def _shared_file(world: World, tmp_path_factory, name: str, array: np.ndarray) -> Path:
    """``array`` written as IDX by rank 0 in a folder every rank sees."""
    path = tmp_path_factory.mktemp("node") / name if world.rank == 0 else None
    if path is not None:
        idx.write_idx(path, array)
    world.barrier()
    return Path(world.bcast(str(path)))


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, size=(n, 7, 5), dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("n, val, block", [(1000, 0, 1 << 20), (1000, 97, 333), (1003, 10, 35), (5, 1, 35)])
def test_scattered_records_equal_each_rank_reading_alone(world, node, tmp_path_factory, monkeypatch, suffix, n, val, block):
    monkeypatch.setattr(node_reading, "BLOCK_BYTES", block)  # blocks of a few records: every range cuts them
    images = _images(n)
    path = _shared_file(world, tmp_path_factory, f"train-images-idx3-ubyte{suffix}", images)
    header = idx.read_header(path, "images")
    train = n - val
    members = node.allgather(world.rank)
    wants = [[slice_bounds(train, world.size, r), tuple(train + b for b in slice_bounds(val, world.size, r))] for r in members]
    got, got_val = node_reading.scatter_records(node, header, "images", wants, md5=None)
    (lo, hi), (vlo, vhi) = wants[node.rank]
    assert got.tobytes() == idx.read_records(path, lo, hi, expect="images").tobytes() == images.reshape(n, -1)[lo:hi].tobytes()
    assert got_val.tobytes() == images.reshape(n, -1)[vlo:vhi].tobytes()


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda raw: raw[:-100], "truncated"),  # the reader finds it only at its end
        (lambda raw: raw + b"\0" * 7, "oversized"),
        (lambda raw: raw[:8] + bytes([12]) + raw[9:], "label out of range"),  # in the reader's first block
    ],
)
def test_a_damaged_file_is_one_error_on_every_rank(world, node, tmp_path_factory, damage, says):
    labels = np.arange(600, dtype=np.uint8) % 10
    path = _shared_file(world, tmp_path_factory, "train-labels-idx1-ubyte", labels)
    if world.rank == 0:
        path.write_bytes(damage(path.read_bytes()))
    world.barrier()
    header = idx.IdxHeader(path=path, magic=idx.LABELS_MAGIC, shape=(600,), header_bytes=8)
    wants = [[slice_bounds(600, node.size, r)] for r in range(node.size)]
    with pytest.raises(UserError) as caught:
        fail_together(world, lambda: node_reading.scatter_records(node, header, "labels", wants, md5=None))
    assert says in str(caught.value) and str(path) in str(caught.value)
    assert len(set(world.allgather(str(caught.value)))) == 1


def test_a_wrong_md5_is_one_error_on_every_rank(world, node, tmp_path_factory):
    """The reader checks the MD5 after the last block, when every rank already holds its records."""
    images = _images(50)
    path = _shared_file(world, tmp_path_factory, "t10k-images-idx3-ubyte.gz", images)
    header = idx.read_header(path, "images")
    with pytest.raises(UserError) as caught:
        wants = [[slice_bounds(50, node.size, r)] for r in range(node.size)]
        fail_together(world, lambda: node_reading.scatter_records(node, header, "images", wants, md5="0" * 32))
    assert "checksum" in str(caught.value).lower() or "md5" in str(caught.value).lower()
    assert len(set(world.allgather(str(caught.value)))) == 1
