"""Data slices per rank: contiguous, disjoint, complete, balanced, and the errors."""

from __future__ import annotations

import re

import pytest

from pnn_mpi.common.errors import UserError
from pnn_mpi.data.slicing import check_enough_samples, slice_bounds, slice_sizes

CASES = [(1, 1), (5, 1), (4, 4), (16, 16), (7, 3), (10, 4), (11, 4), (13, 5), (100, 7), (60000, 16), (60000, 7), (59999, 16), (10000, 3)] + [
    (n, p) for n in range(1, 25) for p in range(1, n + 1)
]


@pytest.mark.parametrize("n, size", CASES)
def test_slices_partition_the_range(n, size):
    """Rank slices are contiguous, in rank order, disjoint, cover range(n) exactly, differ in size by
    at most one, are never empty, and agree with slice_sizes."""
    bounds = [slice_bounds(n, size, r) for r in range(size)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(n))  # contiguous, ordered, disjoint and complete at once
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1
    assert min(lengths) >= 1
    assert slice_sizes(n, size) == lengths
    assert sum(slice_sizes(n, size)) == n


def test_known_split():
    """7 samples over 3 ranks: [0,3) [3,5) [5,7); the extra samples go to the lowest ranks."""
    assert [slice_bounds(7, 3, r) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert slice_sizes(60000, 16) == [3750] * 16
    assert slice_sizes(10, 4) == [3, 3, 2, 2]


def test_an_offset_numbers_the_shares_from_it():
    """The validation samples follow the training ones: their shares are those of 0..n shifted."""
    assert [slice_bounds(7, 3, r, offset=100) for r in range(3)] == [(100, 103), (103, 105), (105, 107)]


def test_check_enough_samples():
    """More ranks than samples is a UserError naming both numbers; enough samples passes."""
    with pytest.raises(UserError) as info:
        check_enough_samples(3, 4)
    assert re.search(r"\b3\b", str(info.value)) and re.search(r"\b4\b", str(info.value))
    check_enough_samples(4, 4)
    check_enough_samples(60000, 16)


@pytest.mark.parametrize("rank, size", [(-1, 4), (4, 4), (5, 4), (0, 0)])
def test_bad_rank_raises_value_error(rank, size):
    """A rank outside 0..size-1 is a programming error: ValueError."""
    with pytest.raises(ValueError):
        slice_bounds(10, size, rank)
