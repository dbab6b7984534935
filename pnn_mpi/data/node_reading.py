"""One reader per node: a file is decompressed once and every rank on the node gets its records.

Reading a slice of a ``.gz`` file means inflating everything before it, so ranks
that each read their own slice inflate the file over and over (16 ranks: about 8
times the file). Here the node's first rank (its *reader*) streams each file once,
in blocks, checking it as ``idx.iter_records`` does (records, labels, the end, the
payload MD5 when asked), and hands every rank of the node the records it asked for
with one ``Scatterv`` per piece.
Memory stays bounded: the reader holds one block besides its own records, and each
rank receives straight into its final arrays.

An error the reader meets (a damaged file) is broadcast before the next piece, so
every rank of the node raises the same ``UserError`` instead of waiting for data;
``comm.fail_together`` then spreads it over the world as for any other read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from . import idx

BLOCK_BYTES = 1 << 20  # bytes of records inflated per block: the reader's extra memory

Range = tuple[int, int]  # records [start, stop)


def _blocks(path: Path, expect: str, record_bytes: int, md5: str | None) -> Iterator[tuple[int, np.ndarray]]:
    """(first record, block) over the whole file, read and checked by the node's reader."""
    rows = max(1, BLOCK_BYTES // record_bytes)
    lo = 0
    for block in idx.iter_records(path, expect=expect, chunk=rows, md5=md5):
        yield lo, block
        lo += len(block)


def _next_block(node, reader: Iterator[tuple[int, np.ndarray]] | None) -> tuple[int, int, np.ndarray | None] | None:
    """(first record, end record, block or None off the reader) of the next block, or None at the end.

    The reader tells every rank of the node what follows before anything is sent,
    so a damaged file becomes the same UserError on all of them."""
    news: tuple = ("end",)
    block = None
    if reader is not None:
        try:
            item = next(reader, None)
        except UserError as exc:
            news = ("error", str(exc))
        else:
            if item is not None:
                block = item[1]
                news = ("block", item[0], item[0] + len(block))
    news = node.comm.bcast(news, root=0)
    if news[0] == "error":
        raise UserError(news[1])
    return None if news[0] == "end" else (news[1], news[2], block)


def _edges(lo: int, hi: int, wants: Sequence[Sequence[Range]]) -> list[int]:
    """Cut [lo, hi) wherever any rank's range starts or stops, so each piece is wanted whole or not at all by each rank."""
    cuts = {lo, hi}
    for ranges in wants:
        for start, stop in ranges:
            cuts.update(c for c in (start, stop) if lo < c < hi)
    return sorted(cuts)


def scatter_records(node, header: idx.IdxHeader, expect: str, wants: Sequence[Sequence[Range]], md5: str | None) -> list[np.ndarray]:
    """This rank's records, one array per range in ``wants[node.rank]``; no two ranks' ranges overlap.

    ``wants`` (the same on every rank) lists every node rank's ranges; node rank 0
    reads the whole file once, checking it to its end (and its MD5 when given)."""
    rb = header.record_bytes
    mine = [np.empty((stop - start) * rb, dtype=np.uint8) for start, stop in wants[node.rank]]
    reader = _blocks(header.path, expect, rb, md5) if node.rank == 0 else None
    while (news := _next_block(node, reader)) is not None:
        lo, hi, block = news
        cuts = _edges(lo, hi, wants)
        for a, b in zip(cuts[:-1], cuts[1:]):
            _scatter_piece(node, block, lo, (a, b), rb, wants, mine)
    return [m.reshape(-1, rb) if expect == "images" else m for m in mine]


def _scatter_piece(node, block: np.ndarray | None, lo: int, piece: Range, rb: int, wants: Sequence[Sequence[Range]], mine: list[np.ndarray]) -> None:
    """Records ``piece`` of the block that starts at record ``lo``, to the ranks that want them (one Scatterv)."""
    from mpi4py import MPI

    a, b = piece
    counts, displs = [0] * node.size, [0] * node.size
    recv = np.empty(0, dtype=np.uint8)
    for r, ranges in enumerate(wants):
        for k, (start, stop) in enumerate(ranges):
            if start <= a and b <= stop:
                counts[r], displs[r] = (b - a) * rb, (a - lo) * rb
                if r == node.rank:
                    recv = mine[k][(a - start) * rb : (b - start) * rb]
    if any(counts):
        send = [block.reshape(-1), counts, displs, MPI.BYTE] if block is not None else None
        node.comm.Scatterv(send, [recv, MPI.BYTE], root=0)
