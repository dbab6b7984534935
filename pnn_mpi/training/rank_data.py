"""What one rank loads: its own slice of the training set, and the test set.

A rank reads only the records of its slice (the IDX reader seeks or streams to
them), so memory per rank shrinks as ranks are added. Rank 0 also checks the
canonical payload checksums and the last rank the end of every file, so a
damaged file is caught once without every rank reading all of it.

A run resumed from the checkpoint of ranks that survived lost ones loads, instead of
its slice, the records that checkpoint says this rank held (``held``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from ..data import datasets, idx
from ..data.node_reading import scatter_records
from ..data.slicing import check_enough_samples, slice_bounds, slice_sizes
from ..nn.evaluate import to_inputs
from ..parallel.comm import Communicator, World, fail_together
from .config import TrainConfig


@dataclass
class RankData:
    """One rank's share of the data, ready for training."""

    directory: Path
    train_total: int  # samples used for training, over all ranks
    slice_sizes: list[int]  # every rank's slice size, rank 0 first
    start: int  # this rank's slice is [start, start + len(y))
    x: np.ndarray  # (n, pixels) float inputs in [0, 1]
    y: np.ndarray  # (n,) labels
    test_images: np.ndarray  # this rank's share of the test set, uint8, scaled chunk by chunk when scoring
    test_labels: np.ndarray
    test_total: int  # test samples over all ranks: the shares are scored and their counts summed
    image_shape: tuple[int, ...]  # (rows, cols) of one image
    classes: int  # outputs of the network: one more than the largest label of any rank's slice or the test set
    load_seconds: float
    val_total: int = 0  # held-out validation samples over all ranks (--val-size)
    val_images: np.ndarray | None = None  # this rank's share of them, uint8 like the test set
    val_labels: np.ndarray | None = None
    held: dict | None = None  # every rank's record ranges by split, when resumed from survivors (checkpoint.py)


def load_rank_data(cfg: TrainConfig, world: Communicator, fits: Callable[[int, int, int], None] | None = None, held: dict | None = None) -> RankData:
    """Locate the dataset and load this rank's slice (or the records ``held`` gives it); errors are
    agreed on by all ranks.

    ``fits(train_n, test_n, pixels)``, called once the headers are read and
    before any payload is, may refuse a run that cannot fit in memory.
    """
    began = time.perf_counter()
    spec = datasets.get_spec(cfg.dataset)
    directory = fail_together(world, lambda: datasets.locate(cfg.dataset, cfg.data_dir))
    train_n, test_n, shape = fail_together(world, lambda: _sizes(cfg, spec, directory, world.size, fits))
    if held is None:
        images, labels, test_images, test_labels, val_images, val_labels = _read(cfg, spec, directory, world, train_n, test_n)
    else:
        totals = {"train": (0, train_n), "test": (0, test_n), "val": (train_n, train_n + cfg.val_size)}
        fail_together(world, lambda: check_cover(held, totals))
        images, labels, test_images, test_labels, val_images, val_labels = fail_together(world, lambda: _read_held(spec, directory, world, held))
    largest = max(int(labels.max(initial=0)), int(test_labels.max(initial=0)), int(val_labels.max(initial=0)))
    classes = max(world.allgather(largest)) + 1
    return RankData(
        directory=directory,
        train_total=train_n,
        slice_sizes=slice_sizes(train_n, world.size) if held is None else [sum(b - a for a, b in ranges) for ranges in held["train"]],
        start=slice_bounds(train_n, world.size, world.rank)[0] if held is None else held["train"][world.rank][0][0],
        x=to_inputs(images, cfg.dtype),
        y=labels.astype(np.intp),
        test_images=test_images,
        test_labels=test_labels.astype(np.intp),
        test_total=test_n,
        image_shape=shape,
        classes=classes,
        load_seconds=time.perf_counter() - began,
        val_total=cfg.val_size,
        val_images=val_images if cfg.val_size else None,
        val_labels=val_labels.astype(np.intp) if cfg.val_size else None,
        held=held,
    )


def check_cover(held: dict, totals: dict[str, tuple[int, int]]) -> None:
    """Refuse holdings that do not cover each split's records [lo, hi) exactly once between the ranks."""
    for split, (lo, hi) in totals.items():
        ranges = sorted(tuple(r) for ranks in held[split] for r in ranks)
        ends = [lo] + [b for _, b in ranges]
        if [a for a, _ in ranges] != ends[:-1] or ends[-1] != hi:
            raise UserError(
                f"--resume: the checkpoint's holdings of the {split} records do not cover records {lo} to {hi} once: it was written for other data or settings"
            )


def read_ranges(spec: datasets.DatasetSpec, directory: Path, file: str, ranges, **first) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) of the records [a, b) of each of ``ranges`` of ``file`` ("train" or "test"), in
    their order; ``first``: the checks (``verify``, ``check_end``) the first read makes."""
    return [datasets.load_split(spec, directory, file, a, b, **(first if i == 0 else {})) for i, (a, b) in enumerate(ranges)]


def _read_held(spec: datasets.DatasetSpec, directory: Path, world: Communicator, held: dict) -> tuple[np.ndarray, ...]:
    """(images, labels, test images, test labels, validation images, validation labels): the ranges
    ``held`` gives this rank, read alone and joined in their order (its own slice first, then what it
    took over, as it held them)."""
    lead, last = world.rank == 0, world.rank == world.size - 1
    arrays: list[np.ndarray] = []
    for split, file in (("train", "train"), ("test", "test"), ("val", "train")):
        checks = {"verify": lead, "check_end": last} if split != "val" else {}
        parts = read_ranges(spec, directory, file, held[split][world.rank], **checks) or read_ranges(spec, directory, file, [(0, 0)])
        arrays += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    return tuple(arrays)


def _sizes(cfg: TrainConfig, spec: datasets.DatasetSpec, directory: Path, ranks: int, fits) -> tuple[int, int, tuple[int, ...]]:
    """(training samples, test samples, image shape) the run uses, from the headers alone, after
    refusing what the files or (through ``fits``) memory cannot hold."""
    train_header, train_labels = datasets.split_headers(spec, directory, "train")
    test_header, test_labels = datasets.split_headers(spec, directory, "test")
    train_n, test_n = train_header.count, test_header.count
    if train_n == 0:
        raise UserError(f"{train_header.path}: the training set is empty (0 records)")
    if test_n == 0:
        raise UserError(f"{test_header.path}: the test set is empty (0 records): nothing to score the network on")
    if test_header.shape[1:] != train_header.shape[1:]:
        raise UserError(
            f"{test_header.path}: test images are {'x'.join(map(str, test_header.shape[1:]))} pixels but the "
            f"training images ({train_header.path}) are {'x'.join(map(str, train_header.shape[1:]))}"
        )
    if cfg.val_size >= train_n:
        raise UserError(f"--val-size {cfg.val_size} leaves no training samples: {train_header.path} holds {train_n}")
    train_n = min(train_n - cfg.val_size, cfg.train_size or train_n)  # the validation samples follow these
    test_n = min(test_n, cfg.test_size or test_n)
    check_enough_samples(train_n, ranks)
    if fits is not None:  # counts the files cannot hold are refused as such first, then what memory cannot
        for header in (train_header, train_labels, test_header, test_labels):
            idx.check_declared_size(header.path, "images" if header.magic == idx.IMAGES_MAGIC else "labels")
        fits(train_n, test_n, math.prod(train_header.shape[1:]))
    return train_n, test_n, train_header.shape[1:]


def _read(cfg: TrainConfig, spec: datasets.DatasetSpec, directory: Path, world: Communicator, train_n: int, test_n: int) -> tuple[np.ndarray, ...]:
    """(images, labels, test images, test labels, validation images, validation labels) of this rank:
    through the node's reader when ranks share a node, else read alone (only the slice)."""
    lead, last = world.rank == 0, world.rank == world.size - 1
    start, stop = slice_bounds(train_n, world.size, world.rank)
    val_lo, val_hi = slice_bounds(cfg.val_size, world.size, world.rank, offset=train_n)
    test_lo, test_hi = slice_bounds(test_n, world.size, world.rank)

    def alone() -> tuple[np.ndarray, ...]:
        images, labels = datasets.load_split(spec, directory, "train", start, stop, verify=lead, check_end=last)
        test_images, test_labels = datasets.load_split(spec, directory, "test", test_lo, test_hi, verify=lead, check_end=last)
        val = datasets.load_split(spec, directory, "train", val_lo, val_hi, verify=False, check_end=False)
        return images, labels, test_images, test_labels, *val

    node = world.node() if isinstance(world, World) and world.size > 1 else None
    if node is None or node.size == 1:
        if node is not None:
            node.free()
        return fail_together(world, alone)
    try:  # ranks that share a node: each file is inflated once there
        members = node.allgather(world.rank)
        wants = [[slice_bounds(train_n, world.size, r), slice_bounds(cfg.val_size, world.size, r, offset=train_n)] for r in members]
        test_wants = [[slice_bounds(test_n, world.size, r)] for r in members]
        verify = node.allgather(lead)[0]  # the node of world rank 0 checks the MD5s
        return fail_together(world, partial(read_on_node, spec, directory, node, wants, test_wants, verify))
    finally:
        node.free()


def read_on_node(spec: datasets.DatasetSpec, directory: Path, node, wants: list, test_wants: list, verify: bool) -> tuple[np.ndarray, ...]:
    """(images, labels, test images, test labels, validation images, validation labels) of this rank,
    each file read once by the node's first rank (``node_reading``); ``wants`` holds every node rank's
    training and validation ranges, ``test_wants`` its test share, ``verify`` whether the MD5s are checked here."""

    def md5_of(header: idx.IdxHeader) -> str | None:
        return spec.md5.get(header.path.name.removesuffix(".gz")) if verify else None

    train = datasets.split_headers(spec, directory, "train")
    test = datasets.split_headers(spec, directory, "test")
    (images, val_images), (labels, val_labels) = (scatter_records(node, h, kind, wants, md5_of(h)) for h, kind in zip(train, ("images", "labels")))
    (test_images,), (test_labels,) = (scatter_records(node, h, kind, test_wants, md5_of(h)) for h, kind in zip(test, ("images", "labels")))
    return images, labels, test_images, test_labels, val_images, val_labels
