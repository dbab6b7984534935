"""Which contiguous slice of the training set each rank owns.

Slices are as even as integers allow (sizes differ by at most one) and cover
every sample exactly once, so P ranks together see the whole set.
"""

from __future__ import annotations

from ..common.errors import UserError


def slice_bounds(n: int, size: int, rank: int, offset: int = 0) -> tuple[int, int]:
    """[start, stop) of ``rank``'s share of ``n`` samples split over ``size`` ranks, the samples
    numbered from ``offset`` (the validation samples follow the training ones in their file)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside 0..{size - 1}")
    base, extra = divmod(n, size)
    start = offset + rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def slice_sizes(n: int, size: int) -> list[int]:
    """The number of samples of every rank's slice, rank 0 first."""
    base, extra = divmod(n, size)
    return [base + (r < extra) for r in range(size)]


def check_enough_samples(n: int, size: int) -> None:
    if size > n:
        raise UserError(f"{size} ranks but only {n} training samples: every rank needs at least one (use fewer ranks or a larger --train-size)")
