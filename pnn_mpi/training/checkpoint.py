"""Checkpoints: all a run needs to continue bit for bit, in one file written atomically.

Every rank's state that matters -- its parameters (they differ between ranks
until they are averaged), momentum, shuffling generator, the order of its
slice and the position in it -- is gathered to rank 0, which writes one
``checkpoint.npz`` through a temporary file, fsync and rename. A kill during
the write leaves the previous checkpoint intact. The file holds plain arrays
and a JSON header, nothing pickled. A checkpoint records the configuration
and the number of ranks, and resuming with anything else is refused.

A run that lost ranks (``--on-rank-failure continue``) trains on with fewer
ranks, each holding its own slice plus a share of the lost ones' samples: its
checkpoint records, as ``held``, which records of each split every rank holds
and the rank count the run was launched with (its defaults were resolved for
that count). A resume with as many ranks as survived loads exactly those records
(``peek_held`` reads them before any data is loaded) and continues bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from ..common.files import write_atomically
from ..common.npz_reader import NpzArchive, Refused, file_kind
from ..common.wording import quote
from .config import TrainConfig
from .identity import as_json, first_difference
from .memory import available
from .model_io import npz_bytes

FILE = "checkpoint.npz"
FORMAT = "pnn_mpi-checkpoint-4"  # 2: the data's identity is part of it; 3: steps since the last average; 4: who holds which samples
SPLITS = ("train", "test", "val")  # the splits ``held`` lists ranges of (val: records of the training file)

# Settings that change where files are or how often a run reports, not what it computes.
_NOT_IDENTITY = (
    "out",
    "data_dir",
    "eval_every",
    "checkpoint_every",
    "resume",
    "overwrite",
    "expect_ranks",
    "timeline",
    "progress_every",
    "plot",
    "on_rank_failure",
    "stall_timeout",
)


def identity(cfg: TrainConfig) -> dict:
    """The part of a configuration that a resumed run must share with the original."""
    return {k: v for k, v in cfg.as_dict().items() if k not in _NOT_IDENTITY}


@dataclass
class RankState:
    """One rank's training state between two steps."""

    params: np.ndarray
    velocity: np.ndarray | None
    order: np.ndarray  # this epoch's order of the rank's slice
    rng: dict  # the shuffling generator's bit_generator.state
    loss_sum: float  # summed training loss of the epoch so far


@dataclass
class Progress:
    """Where the run stands (the same on every rank)."""

    epoch: int = 0  # 0-based epoch in progress
    step: int = 0  # next step within the epoch
    global_step: int = 0  # steps taken since the start of training
    since_average: int = 0  # steps taken since the last parameter average (local, steps:K)
    in_sync: bool = True
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # EpochRecord fields
    clocks: list[dict] = field(default_factory=list)  # every rank's Clock fields


def save(
    path: Path, cfg: TrainConfig, ranks: int, progress: Progress, states: list[RankState], data: dict | None = None, lost=(), held=None, before_rename=None
) -> None:
    """Write the checkpoint; ``data`` is the data's identity (identity.data_identity), checked on resume;
    ``lost`` the launch ranks a fault-tolerant run lost (for the record); ``held`` who holds which
    records when they are not the plain slices of ``ranks`` (see the module's docstring), else None;
    ``before_rename`` a test hook (faults.py)."""
    header = {
        "format": FORMAT,
        "config": identity(cfg.resolved(ranks)),  # as run: the defaults rule filled in
        "ranks": ranks,
        "data": data,
        "lost_ranks": [int(r) for r in lost],
        "held": held,
        "progress": asdict(progress),
        "rng": [s.rng for s in states],
        "loss_sums": [s.loss_sum for s in states],
    }
    arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
    for rank, state in enumerate(states):
        arrays[f"params_{rank}"] = state.params
        arrays[f"order_{rank}"] = state.order
        if state.velocity is not None:
            arrays[f"velocity_{rank}"] = state.velocity
    write_atomically(Path(path), npz_bytes(arrays), before_rename)


@dataclass(frozen=True)
class Expected:
    """What the run that resumes needs a checkpoint to hold, field by field."""

    parameters: int  # the network's parameter count
    slice_sizes: list[int]  # every rank's slice, rank 0 first
    steps: int  # steps per epoch
    data: dict  # identity.data_identity of the data this run found
    history_fields: tuple[str, ...]  # train.EpochRecord's
    clock_fields: tuple[str, ...]  # train.Clock's
    held: dict | None = None  # what peek_held found (the records were loaded by it)


HEADER_CHARS = 16 << 20  # the JSON header's limit: its history and clocks grow with epochs and ranks


def load(path: Path, cfg: TrainConfig, ranks: int, expect: Expected | None = None) -> tuple[Progress, list[RankState]]:
    """The checkpoint in ``path``, after checking it belongs to this configuration and rank count.

    With ``expect`` (what ``--resume`` passes), every field is checked against
    the run that continues: the data's identity, the header's keys and types,
    epoch and step in range, each rank's parameters and momentum in shape and
    dtype, its slice order a permutation of its slice, its generator state. A
    file's CRC says it is the file that was written; this says it is one this
    run can continue from. Arrays are read only once their headers fit.
    """
    path = Path(path)

    def bad(why: str) -> UserError:
        return UserError(f"{quote(path)}: not a usable pnn_mpi checkpoint: {why}")

    try:
        kind = file_kind(path)
    except FileNotFoundError:
        raise UserError(f"{quote(path)}: no checkpoint to resume from") from None
    except OSError as exc:
        raise UserError(f"{quote(path)}: not a readable pnn_mpi checkpoint ({exc.strerror or exc})") from None
    if kind != "npz":
        raise UserError(f"{quote(path)}: not a readable pnn_mpi checkpoint ({'an empty file' if kind == 'empty' else 'not an .npz archive'})")
    try:
        with NpzArchive(path) as archive:
            header = _header(archive, path, bad)
            _check_header(header, cfg, ranks, expect, bad, path)
            states = [_rank_state(archive, header, rank, cfg, expect, bad) for rank in range(ranks)]
    except Refused as exc:
        raise UserError(f"{quote(path)}: not a readable pnn_mpi checkpoint ({exc})") from None
    except OSError as exc:
        raise UserError(f"{quote(path)}: not a readable pnn_mpi checkpoint ({exc.strerror or exc})") from None
    return Progress(**header["progress"]), states


def _header(archive: NpzArchive, path: Path, bad) -> dict:
    """The JSON header, after checking it is one of this version's."""
    try:
        header = json.loads(archive.text("header", HEADER_CHARS))
    except json.JSONDecodeError as exc:
        raise bad(f"its header is not JSON ({exc.msg})") from None
    except RecursionError:  # a header nested deeper than the parser's stack: no checkpoint of ours
        raise bad("its header is nested too deep to be one of ours") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        older = isinstance(header, dict) and str(header.get("format", "")).startswith("pnn_mpi-checkpoint-")
        raise UserError(
            f"{quote(path)}: "
            + (f"written by another pnn_mpi version ({quote(header['format'])}): cannot resume from it" if older else "not a pnn_mpi checkpoint")
        )
    return header


def resume_ranks(path: Path) -> int | None:
    """How many ranks the checkpoint ``path`` resumes with (those that wrote it: after a lost rank,
    the survivors), or None where there is none of this version to resume (a resume then says why).

    For job scripts, which must launch that many ranks after a requeue (``resume-ranks``).
    """
    found = _peek(Path(path))
    return found[0]["ranks"] if found else None


def peek_held(path: Path, ranks: int) -> dict | None:
    """Who holds which records in the checkpoint ``path`` (None: the plain slices, or no usable checkpoint,
    which ``load`` then reports); refuses, in one line, a resume with other than the ranks that hold them.

    Read before the data, because the data a rank loads depends on it.
    """
    found = _peek(Path(path))
    if found is None:
        return None
    header, bad = found
    held = check_held(header.get("held"), header["ranks"], bad)
    _check_survivors(path, header["ranks"], held, ranks)
    return held


def _peek(path: Path) -> tuple[dict, Callable[[str], UserError]] | None:
    """The header of the checkpoint ``path`` with a rank count, and how to refuse it, before anything
    else is read; None for no usable checkpoint of this version (``load`` says what is wrong)."""

    def bad(why: str) -> UserError:
        return UserError(f"{quote(path)}: not a usable pnn_mpi checkpoint: {why}")

    try:
        if file_kind(path) != "npz":
            return None
        with NpzArchive(path) as archive:
            header = _header(archive, path, bad)
    except (OSError, Refused, UserError):
        return None
    return (header, bad) if _is_int(header.get("ranks")) and header["ranks"] >= 1 else None


def _check_survivors(path: Path, written_by: int, held: dict | None, ranks: int) -> None:
    """Refuse a resume of the survivors' checkpoint with other than their number of ranks."""
    if held is not None and written_by != ranks:
        raise UserError(
            f"{quote(path)}: written by the {written_by} ranks that survived lost ones of a {held['launched_ranks']}-rank run"
            f" (they hold its samples between them), cannot resume with {ranks}; relaunch with -n {written_by}"
        )


def check_held(held, ranks: int, bad) -> dict | None:
    """``held`` if it is well formed for ``ranks`` ranks: the launch's rank count, and for each split
    one list of [start, stop) record ranges per rank (that they cover the files is checked on loading)."""
    if held is None:
        return None
    keys = ("launched_ranks", *SPLITS)
    if not isinstance(held, dict) or sorted(set(held) - {"rank_failures"}) != sorted(keys):
        raise bad(f"its holdings must name launched_ranks and {', '.join(SPLITS)}")
    if not _is_int(held["launched_ranks"]) or held["launched_ranks"] <= ranks:
        raise bad(f"its holdings' launched_ranks {quote(held['launched_ranks'])} is not above its {ranks} ranks")
    _check_failures(held.get("rank_failures", []), held["launched_ranks"], bad)
    for split in SPLITS:
        per_rank = held[split]
        if not isinstance(per_rank, list) or len(per_rank) != ranks:
            raise bad(f"its holdings of {split} must list one entry per rank ({ranks})")
        for ranges in per_rank:
            if not isinstance(ranges, list) or not all(
                isinstance(r, list) and len(r) == 2 and all(_is_int(v) for v in r) and 0 <= r[0] <= r[1] for r in ranges
            ):
                raise bad(f"its holdings of {split} must be lists of [start, stop) record ranges")
    return held


def _check_failures(events, launched: int, bad) -> None:
    """The lost-rank events a survivors' checkpoint carries (survive.py's ``Failure`` records): each
    loses at least one of the launched ranks, so there are at most that many, each naming the
    epoch and step it came in and the launch ranks lost and surviving."""
    if not isinstance(events, list) or len(events) > launched:
        raise bad(f"its holdings' rank_failures must be a list of at most {launched} lost-rank events")
    for event in events:
        if not (
            isinstance(event, dict)
            and all(_is_int(event.get(k)) for k in ("epoch", "step"))
            and all(isinstance(event.get(k), list) and all(_is_int(r) and 0 <= r < launched for r in event[k]) for k in ("lost", "survivors"))
        ):
            raise bad("its holdings' rank_failures must each name an epoch, a step, and the launch ranks lost and surviving")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_header(header: dict, cfg: TrainConfig, ranks: int, expect: Expected | None, bad, path: Path) -> None:
    missing = [key for key in ("config", "ranks", "data", "progress", "rng", "loss_sums", "held") if key not in header]
    if missing:
        raise bad(f"its header lacks {', '.join(missing)}")
    if not _is_int(header["ranks"]) or header["ranks"] < 1:
        raise bad(f"its rank count is {quote(header['ranks'])}")
    held = check_held(header.get("held"), header["ranks"], bad)
    _check_survivors(path, header["ranks"], held, ranks)
    if header["ranks"] != ranks:
        raise UserError(f"{quote(path)}: written by a run of {header['ranks']} ranks, cannot resume with {ranks}; relaunch with -n {header['ranks']}")
    if expect is not None and held != expect.held:  # the records loaded are not those it lists (replaced since peek_held read it)
        raise bad("it lists other holdings of the samples than when this run started reading it")
    if not isinstance(header["config"], dict):
        raise bad("its configuration is not a table")
    ours = json.loads(json.dumps(identity(cfg.resolved(ranks))))  # lists and tuples compared alike; unset values as the rule fills them
    differs = sorted(k for k in set(ours) | set(header["config"]) if ours.get(k) != header["config"].get(k))
    if differs:
        shown = ", ".join(f"--{k.replace('_', '-')} {quote(repr(header['config'].get(k)))} (now {quote(repr(ours.get(k)))})" for k in differs)
        raise UserError(f"{quote(path)}: written with other settings: {shown}; resume with the same flags")
    if expect is not None:
        found = first_difference(header["data"], as_json(expect.data)) if isinstance(header["data"], dict) else ("data", header["data"], "")
        if found:
            key, then, now = found
            raise UserError(f"{quote(path)}: written for other data: {key} was {quote(then)}, now {quote(now)}; resume with the same --dataset and data files")
    progress = header["progress"]
    names = [f.name for f in fields(Progress)]
    if not isinstance(progress, dict) or sorted(progress) != sorted(names):
        raise bad(f"its progress must hold exactly {', '.join(names)}")
    for key in ("epoch", "step", "global_step", "since_average"):
        if not _is_int(progress[key]) or progress[key] < 0:
            raise bad(f"progress {key} is {quote(progress[key])}, not a count")
    if progress["epoch"] >= cfg.epochs:
        raise bad(f"progress epoch {progress['epoch']} is past the run's {cfg.epochs} epochs")
    if not isinstance(progress["in_sync"], bool) or not _is_number(progress["train_seconds"]) or progress["train_seconds"] < 0:
        raise bad("progress in_sync or train_seconds has the wrong type")
    for key, count in (("rng", ranks), ("loss_sums", ranks)):
        if not isinstance(header[key], list) or len(header[key]) != count:
            raise bad(f"{key} must list one entry per rank ({count})")
    if not all(_is_number(v) for v in header["loss_sums"]):
        raise bad("a rank's loss sum is not a finite number")
    if not isinstance(progress["history"], list) or not isinstance(progress["clocks"], list):
        raise bad("progress history and clocks must be lists")
    if expect is None:
        return
    if progress["step"] > expect.steps:
        raise bad(f"progress step {progress['step']} is past an epoch's {expect.steps} steps")
    steps_so_far = progress["epoch"] * expect.steps + progress["step"]  # survivors' epochs grew: before a loss they were shorter
    if progress["global_step"] != steps_so_far if expect.held is None else not progress["epoch"] + progress["step"] <= progress["global_step"] <= steps_so_far:
        raise bad(f"progress global_step {progress['global_step']} does not match epoch {progress['epoch']}, step {progress['step']}")
    history, clocks = progress["history"], progress["clocks"]
    if len(history) != progress["epoch"] or any(not isinstance(r, dict) or sorted(r) != sorted(expect.history_fields) for r in history):
        raise bad(f"its history must hold one record of {', '.join(expect.history_fields)} per finished epoch ({progress['epoch']})")
    if [r["epoch"] for r in history] != list(range(1, progress["epoch"] + 1)) or not all(
        _is_number(r[k]) or (r[k] is None and k.startswith(("test_", "val_"))) for r in history for k in r
    ):
        raise bad("its history's records are out of order or not numbers")
    if len(clocks) != ranks or any(
        not isinstance(c, dict) or sorted(c) != sorted(expect.clock_fields) or not all(_is_number(v) and v >= 0 for v in c.values()) for c in clocks
    ):
        raise bad(f"its clocks must hold {', '.join(expect.clock_fields)} for each of {ranks} ranks")


def _rank_state(archive: NpzArchive, header: dict, rank: int, cfg: TrainConfig, expect: Expected | None, bad) -> RankState:
    dtype = np.dtype(cfg.dtype)
    room, _ = available()
    shape = (expect.parameters,) if expect else None
    try:
        params = archive.read(f"params_{rank}", shape=shape, ndim=1, kinds="f", max_bytes=room)
        velocity = None
        if cfg.momentum:
            velocity = archive.read(f"velocity_{rank}", shape=(len(params),), kinds="f", max_bytes=room)
        elif f"velocity_{rank}" in archive:
            raise Refused(f"velocity_{rank} is there, but this run has no momentum")
        size = (expect.slice_sizes[rank],) if expect else None
        order = archive.read(f"order_{rank}", shape=size, ndim=1, kinds="iu", max_bytes=room)
    except Refused as exc:
        raise bad(str(exc)) from None
    for name, array in (("params", params), ("velocity", velocity)):
        if array is not None and array.dtype != dtype:
            raise bad(f"{name}_{rank} is {array.dtype}, the run trains in {dtype}")
        if array is not None and not np.isfinite(array).all():
            raise bad(f"{name}_{rank} holds NaN or infinity")
    if order.dtype.itemsize > 8 or (len(order) and (order.min() < 0 or order.max() >= len(order) or not (np.bincount(order, minlength=len(order)) == 1).all())):
        raise bad(f"order_{rank} is not a permutation of the rank's {len(order)} slice indices")
    rng = header["rng"][rank]
    try:
        probe = np.random.default_rng(0)
        if not isinstance(rng, dict) or rng.get("bit_generator") != type(probe.bit_generator).__name__:
            raise ValueError("another generator")
        probe.bit_generator.state = rng
    except (ValueError, TypeError, KeyError) as exc:
        raise bad(f"rank {rank}'s shuffling generator state is unusable ({exc})") from None
    return RankState(params=params, velocity=velocity, order=order.astype(np.intp), rng=rng, loss_sum=header["loss_sums"][rank])
