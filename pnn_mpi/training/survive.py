"""Training on after a lost rank (``--on-rank-failure continue``).

``train_surviving`` runs ``train.train`` and, when a collective raises
``RankLost`` (the world has already shrunk to the survivors, resilience.py),
rolls every survivor back to the last *consistent point* and trains on:

- The loop reports each consistent point through ``Hooks.consistent``: a
  point every rank has passed in the same collective (the start barrier, a
  gradient step, a parameter average, a stop check, an epoch's end). Each rank
  numbers them and keeps a copy of its own state at the last one.
- A collective may complete on some ranks and fail on others, so after a
  loss the survivors' last points differ by at most one: whoever passed point
  M waits in the next collective, which cannot complete without the dead rank.
  The survivors agree on the highest point any of them passed; those who passed
  it restore their copy, those still inside its collective keep their live
  state and take from the lowest rank that passed it what the collective would
  have given them (the averaged parameters, or after a gradient step the
  parameters and momentum, which are then the same on every rank). So the
  parallel network stays an average of networks trained for the same steps.
- The lost rank's training samples are re-split over the survivors: each reads
  only its new share from the file and appends it to its slice (its order puts
  the new samples at the end of the current epoch). No sample leaves the
  training set; the epochs get longer instead.
- Then ``train`` is entered again from the agreed point, on the shrunk world;
  its rank 0 (the lowest survivor) reports, scores and saves.

Every failure is recorded (epoch, step, lost and surviving ranks in the
launch's numbering, seconds from detection until the survivors are ready to
take their next step) for ``metrics.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..data import datasets
from ..data.slicing import slice_bounds
from ..nn.evaluate import to_inputs
from ..parallel.resilience import RankLost
from .checkpoint import Progress, RankState
from .config import TrainConfig
from .rank_data import RankData, read_ranges
from .train import Hooks, LoopState, TrainResult, train

# What a consistent point's collective hands out: an average the parameters and the momentum (SGD.beside
# keeps them in one buffer; the final average, after which nothing steps, only the parameters).
SHARED_BY = {"average": ("params", "velocity"), "grad": ("params", "velocity")}


@dataclass
class Failure:
    """One lost-rank event, as ``metrics.json`` records it."""

    epoch: int  # 1-based epoch the survivors were in when they noticed (0: at start-up, before the first collective)
    step: int  # steps since the start of training at that moment (global)
    lost: list[int]  # launch ranks
    survivors: list[int]
    recovery_seconds: float | None = None  # detection until ready for the next step, of which:
    repair_seconds: float = 0.0  # revoke and shrink the communicator
    read_seconds: float = 0.0  # read this rank's share of the lost samples from the file
    resumed_at: dict = field(default_factory=dict)  # epoch (1-based) and step in it, where training went on from
    stalled: list[int] = field(default_factory=list)  # lost ranks that had stopped responding (not died) and were killed


class RollbackPoint:
    """This rank's last consistent point: its number and a copy of the state there.

    With ``live_parameters`` (the ``grad`` schedule) the parameters and momentum are
    not copied: they change only in the update right after a gradient sum, which is
    itself a consistent point, so until the next point the live ones are the copy.
    """

    def __init__(self, live_parameters: bool = False) -> None:
        self.live_parameters = live_parameters
        self.parameters_are_live = False
        self.count = 0
        self.kind = ""
        self.live: LoopState | None = None  # the loop's own state object, as it runs
        self.progress: Progress | None = None
        self.params: np.ndarray | None = None
        self.velocity: np.ndarray | None = None
        self.order: np.ndarray | None = None
        self.order_key: tuple[int, bool] = (-1, False)
        self.rng: dict = {}
        self.loss_sum = 0.0
        self.on_start: Callable[[], None] | None = None  # called at the next "start" point (the end of a recovery)

    def __call__(self, state: LoopState, kind: str) -> None:
        """``Hooks.consistent``: copy the state (into buffers kept from the last time)."""
        self.count += 1
        self.kind, self.live = kind, state
        progress = state.progress
        history = self.progress.history if self.progress and len(self.progress.history) == len(state.history) else [asdict(r) for r in state.history]
        self.progress = replace(progress, history=history, clocks=[])
        self.parameters_are_live = self.live_parameters
        if not self.live_parameters:
            self.params = _copy_into(self.params, state.net.params)
            if state.opt.velocity is not None:
                self.velocity = _copy_into(self.velocity, state.opt.velocity)
        key = (progress.epoch, kind in ("start", "epoch"))  # the order changes only in the shuffle after these
        if key != self.order_key:
            self.order, self.order_key = _copy_into(self.order, state.order), key
        self.rng, self.loss_sum = dict(state.shuffler.bit_generator.state), state.loss_sum
        if kind == "start" and self.on_start is not None:
            self.on_start()
            self.on_start = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The parameters and momentum at the point."""
        if self.parameters_are_live:
            assert self.live is not None
            return self.live.net.params, self.live.opt.velocity
        assert self.params is not None
        return self.params, self.velocity

    def saved(self) -> tuple[Progress, RankState]:
        assert self.progress is not None and self.order is not None
        params, velocity = self.arrays()
        return self.progress, RankState(params.copy(), None if velocity is None else velocity.copy(), self.order.copy(), self.rng, self.loss_sum)

    def adopt(self, progress: Progress, state: RankState) -> None:
        """Make an agreed state this rank's copy (another loss before the next point returns here)."""
        self.progress, self.loss_sum, self.rng = replace(progress, clocks=[]), state.loss_sum, state.rng
        self.params, self.order = state.params.copy(), state.order.copy()
        self.velocity = None if state.velocity is None else state.velocity.copy()
        self.parameters_are_live = False

    def live_state(self) -> tuple[Progress, RankState]:
        assert self.live is not None
        return self.live.snapshot()


def _copy_into(buffer: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    if buffer is None or buffer.shape != values.shape:
        return values.copy()
    np.copyto(buffer, values)
    return buffer


def agree_on_point(world, point: RollbackPoint, original: tuple[Progress, RankState] | None) -> tuple[Progress, RankState] | None:
    """The state this rank goes on from, agreed by all survivors (a collective that may raise RankLost).

    None means: no rank passed even the start barrier, begin as the run began.
    """
    counts = world.allgather(point.count)
    top = max(counts)
    if top == 0:
        return original
    donor = counts.index(top)  # the lowest rank that passed the point
    shared = None
    if world.rank == donor:
        params, velocity = point.arrays()
        payload = {name: value for name, value in (("params", params), ("velocity", velocity)) if name in SHARED_BY.get(point.kind, ())}
        shared = (point.progress, point.kind, payload)
    progress, kind, payload = world.bcast(shared, root=donor)
    if point.count == top:
        _, state = point.saved()
    else:  # inside the collective that completes the point: live state plus what it hands out
        _, state = point.live_state()
        if "params" in payload:
            state.params = payload["params"].copy()
        if "velocity" in payload and payload["velocity"] is not None:
            state.velocity = payload["velocity"].copy()
    clock = asdict(point.live.clock) if point.live is not None else {}
    clocks = world.allgather(clock)
    point.count = top
    point.adopt(progress, state)
    return replace(progress, clocks=clocks), state


class Holdings:
    """Which samples of one split (ranges of the file's records, from ``offset`` on) each launch rank holds:
    its slice, or ``ranges`` (one list per launch rank, as a resumed checkpoint recorded them)."""

    def __init__(self, total: int, members: list[int], offset: int = 0, ranges: list | None = None):
        """``members``: the launch ranks the run started training with (fewer than launched after a
        loss at start-up), each holding its slice, or ``ranges[i]`` for ``members[i]``."""
        if ranges is not None:
            self.ranges = {r: [(int(a), int(b)) for a, b in ranges[i]] for i, r in enumerate(members)}
        else:
            self.ranges = {r: [slice_bounds(total, len(members), i, offset)] for i, r in enumerate(members)}

    def hand_over(self, lost: list[int], survivors: list[int]) -> dict[int, list[tuple[int, int]]]:
        """Split the lost ranks' samples evenly over the survivors; returns each survivor's new ranges."""
        new: dict[int, list[tuple[int, int]]] = {r: [] for r in survivors}
        for gone in lost:
            for start, stop in self.ranges.pop(gone):
                for i, rank in enumerate(survivors):
                    lo, hi = slice_bounds(stop - start, len(survivors), i)
                    if hi > lo:
                        new[rank].append((start + lo, start + hi))
        for rank, extra in new.items():
            self.ranges[rank].extend(extra)
        return new

    def sizes(self, members: list[int]) -> list[int]:
        return [sum(b - a for a, b in self.ranges[r]) for r in members]


def holdings_of(data: RankData, members: list[int]) -> dict[str, Holdings]:
    """Who holds which training, test and validation records (the validation ones follow the training ones):
    the slices of the ranks ``members`` that loaded them, or what the checkpoint this run resumed from recorded."""
    held = data.held or {}
    return {
        "train": Holdings(data.train_total, members, ranges=held.get("train")),
        "test": Holdings(data.test_total, members, ranges=held.get("test")),
        "val": Holdings(data.val_total, members, offset=data.train_total, ranges=held.get("val")),
    }


def held_record(holdings: dict[str, Holdings], members: list[int], launched: int, failures: list[Failure]) -> dict:
    """What a checkpoint records of who holds which records (checkpoint.py's ``held``), current rank 0 first,
    and the lost-rank events so far, which a resumed run's ``metrics.json`` then reports with its own."""
    ranges = {split: [[list(r) for r in held.ranges[m]] for m in members] for split, held in holdings.items()}
    return {"launched_ranks": launched, **ranges, "rank_failures": [asdict(f) for f in failures]}


def earlier_failures(held: dict | None) -> list[Failure]:
    """The lost-rank events a resumed run's checkpoint carries (checkpoint.check_held checked their shape)."""
    known = {f.name for f in fields(Failure)}
    return [Failure(**{k: v for k, v in event.items() if k in known}) for event in (held or {}).get("rank_failures", [])]


def recording_holdings(hooks: Hooks, world, data: RankData, holdings: dict[str, Holdings], failures: list[Failure]) -> Hooks:
    """``hooks`` whose checkpoints record the holdings once they are not the launch's plain slices
    (a rank was lost, or the run resumed from survivors), and ``failures`` as they stand: a resume can
    then load them and report them."""
    writer, resumed = hooks.checkpoint, data.held
    if writer is None:
        return hooks
    launched = resumed["launched_ranks"] if resumed else world.launch_size

    def write(progress: Progress, state: RankState) -> None:
        regrouped = world.lost or resumed is not None
        writer(progress, state, held_record(holdings, world.members, launched, failures) if regrouped else None)

    return replace(hooks, checkpoint=write)


def _records(cfg: TrainConfig, data: RankData, split: str, ranges: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return read_ranges(datasets.get_spec(cfg.dataset), data.directory, split, ranges)


def take_over_samples(cfg: TrainConfig, data: RankData, ranges: dict[str, list[tuple[int, int]]], sizes: list[int]) -> RankData:
    """This rank's data with the lost ranks' records ``ranges`` (by split: train, test, val) appended, read
    from the files: the training samples to train on, the test and validation shares to score, so the
    scores stay those of the whole sets."""

    def grown(held: Any, new: list[np.ndarray]) -> Any:  # None stays None: no validation set, nothing to add
        return np.concatenate([held, *new]) if new and held is not None else held

    train = _records(cfg, data, "train", ranges.get("train", []))
    test = _records(cfg, data, "test", ranges.get("test", []))
    val = _records(cfg, data, "train", ranges.get("val", []))
    return replace(
        data,
        x=grown(data.x, [to_inputs(images, cfg.dtype) for images, _ in train]),
        y=grown(data.y, [labels.astype(np.intp) for _, labels in train]),
        test_images=grown(data.test_images, [images for images, _ in test]),
        test_labels=grown(data.test_labels, [labels.astype(np.intp) for _, labels in test]),
        val_images=grown(data.val_images, [images for images, _ in val]),
        val_labels=grown(data.val_labels, [labels.astype(np.intp) for _, labels in val]),
        slice_sizes=sizes,
    )


def _with_order_for(state: RankState, n: int) -> RankState:
    """The order grown to ``n`` samples: the new ones come last in the current epoch."""
    if len(state.order) == n:
        return state
    return replace(state, order=np.concatenate([state.order, np.arange(len(state.order), n, dtype=state.order.dtype)]))


def train_surviving(cfg: TrainConfig, world, data: RankData, log=print, hooks: Hooks | None = None) -> tuple[TrainResult, RankData, list[Failure]]:
    """``train``, carried on by the survivors of every lost rank; also returns the data as it ended and the failures."""
    hooks = hooks or Hooks()
    point = RollbackPoint(live_parameters=cfg.schedule.averages_gradients)
    hooks = replace(hooks, consistent=point)
    original = hooks.resume
    holdings = holdings_of(data, list(world.members))
    failures = earlier_failures(data.held)  # a resume of survivors: the losses before it
    hooks = recording_holdings(hooks, world, data, holdings, failures)
    if world.lost:  # before the first collective: the others started as a smaller run, nothing to take over
        failures.append(Failure(0, 0, list(world.lost), list(world.members), 0.0, resumed_at={"epoch": 1, "step": 0}))
    while True:
        try:
            return train(cfg, world, data, log, hooks), data, failures
        except RankLost as lost:
            recovery = [lost]
            while True:
                try:
                    resume = agree_on_point(world, point, original)
                    break
                except RankLost as again:  # another rank died during the recovery itself
                    recovery.append(again)
            live = point.live.progress if point.live is not None else Progress()
            for event in recovery:
                mine = {split: held.hand_over(list(event.lost), list(event.survivors))[world.launch_rank] for split, held in holdings.items()}
                began_reading = time.perf_counter()
                data = take_over_samples(cfg, data, mine, holdings["train"].sizes(world.members))
                failures.append(
                    Failure(
                        live.epoch + 1,
                        live.global_step,
                        list(event.lost),
                        list(event.survivors),
                        repair_seconds=event.repair_seconds,
                        read_seconds=time.perf_counter() - began_reading,
                        stalled=list(event.stalled),
                    )
                )
            if resume is not None:
                resume = (resume[0], _with_order_for(resume[1], len(data.y)))
                point.adopt(*resume)
            hooks = replace(hooks, resume=resume)
            began = recovery[0].detected
            events = failures[-len(recovery) :]
            at = {"epoch": (resume[0].epoch + 1) if resume else 1, "step": resume[0].step if resume else 0}

            def ready(events=events, began=began, at=at) -> None:
                for event in events:
                    event.recovery_seconds = time.perf_counter() - began
                    event.resumed_at = at

            point.on_start = ready
            if world.rank == 0:
                names = ", ".join(str(r) for event in recovery for r in event.lost)
                log(f"lost rank {names}: going on with {world.size} rank{'s' * (world.size > 1)} from epoch {at['epoch']}, step {at['step']}")


def finish_surviving(world, result: TrainResult, data: RankData, failures: list[Failure], tail):
    """Run ``tail()`` (the reporting and saving after training) until no rank is lost during it.

    Every survivor holds the parallel network's score (the ranks scored it in shares and
    summed), so a rank lost here costs no score.
    """
    while True:
        try:
            return tail()
        except RankLost as lost:
            failures.append(
                Failure(
                    len(result.epochs),
                    -1,
                    list(lost.lost),
                    list(lost.survivors),
                    time.perf_counter() - lost.detected,
                    repair_seconds=lost.repair_seconds,
                    resumed_at={"epoch": len(result.epochs), "step": -1},
                    stalled=list(lost.stalled),
                )
            )


def failure_record(world, failures: list[Failure], held: dict | None = None, policy: str = "continue") -> dict:
    """What ``metrics.json`` says about lost ranks; a run resumed from survivors (``held``, its
    checkpoint's holdings) counts the ranks its first launch had."""
    launched = held["launched_ranks"] if held else getattr(world, "launch_size", world.size)
    return {
        "on_rank_failure": policy,
        "launched_ranks": launched,
        "finished_with_ranks": world.size,
        "finished_with_fewer_ranks": world.size < launched,
        "rank_failures": [asdict(f) for f in failures],
    }


def failure_line(record: dict) -> str | None:
    """The summary's one line about lost ranks, or None when none was lost."""
    events = record.get("rank_failures") or []
    if not events:
        return None
    epochs = (record.get("config") or {}).get("epochs")

    def when(e: dict) -> str:  # a loss in the final average or the save comes after the last epoch
        if e["epoch"] == 0:
            return "at start-up"
        return "after the last epoch" if epochs is not None and e["epoch"] > epochs else f"in epoch {e['epoch']}"

    told = "; ".join(
        f"rank {', '.join(map(str, e['lost']))} {when(e)}"
        + (" (stopped responding)" if e.get("stalled") else "")
        + (f" (recovered in {e['recovery_seconds']:.2f} s)" if e.get("recovery_seconds") is not None else "")
        for e in events
    )
    return f"lost ranks: {told}; finished with {record['finished_with_ranks']} of {record['launched_ranks']} ranks"
