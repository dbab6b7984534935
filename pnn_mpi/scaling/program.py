"""What every rank of a training run does, as a program of compute and collectives.

The simulator and the analytic model must predict the same run the trainer
performs, so this module restates the loop of ``train.py`` in the terms they
need: per epoch, each rank's steps (how many samples each), the Allreduces of a
sync schedule with their sizes, and the small stop/divergence checks (the
epoch's last one is where the ranks meet: no barrier follows it). It knows nothing of costs; ``Costs`` turns steps
into seconds. The loop's own helpers (``batch_plan``, ``check_interval``,
``Sync.period``, ``rate_fraction``, the configuration's defaults rule) are used,
so a change in the trainer changes the prediction too; tests/test_scaling.py
checks that the Allreduces and their bytes are the ones the trainer's clock counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from ..data.slicing import slice_sizes
from ..nn.network import parameter_count
from ..nn.optim import rate_fraction
from ..parallel.sync import Sync
from ..training import defaults
from ..training import train as loop
from ..training.config import TrainConfig, settled

CHECK_VALUES = loop.CHECK_VALUES  # the float64 values every check sums: stop requested, loss not finite, the loss (train.check_stop)


@dataclass(frozen=True)
class Run:
    """One training run to predict: model, data, schedule and ranks."""

    sizes: tuple[int, ...]  # layer widths, input first
    samples: int  # training samples over all ranks
    ranks: int
    sync: str = "epoch"
    epochs: int = 10
    batch: int = 32
    itemsize: int = 4  # float32 parameters
    momentum: float = defaults.MOMENTUM  # non-zero: every average carries the momentum too (twice the values)
    lr_schedule: str | None = None  # None: the defaults rule's (cosine for mini-batches), which sets local's periods

    @property
    def parameters(self) -> int:
        return parameter_count(self.sizes)

    @property
    def label(self) -> str:
        return "-".join(map(str, self.sizes))

    def with_ranks(self, ranks: int) -> Run:
        return replace(self, ranks=ranks)

    def config(self) -> TrainConfig:
        """The trainer's configuration of this run, resolved for its ranks as ``train.train`` resolves it
        (the schedule's periods follow the resolved learning-rate schedule)."""
        cfg = TrainConfig(
            hidden=self.sizes[1:-1],
            batch_size=self.batch,
            epochs=self.epochs,
            sync=self.sync,
            momentum=self.momentum,
            lr_schedule=self.lr_schedule,
            dtype="float32" if self.itemsize == 4 else "float64",
            eval_every=0,
        )
        return cfg.resolved(self.ranks)


@dataclass(frozen=True)
class Compute:
    """Local work up to the next collective: per rank, the steps taken and the samples in them."""

    steps: np.ndarray  # (ranks,) steps that touched at least one sample
    samples: np.ndarray  # (ranks,)
    empty_steps: int = 0  # steps some ranks take with no sample (grad: still an update)


@dataclass(frozen=True)
class Allreduce:
    count: int  # values
    itemsize: int  # bytes per value
    purpose: str  # as the trainer's clock counts them: "average" (parameters, with momentum), "gradient", "check" (stop flags)

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize


Event = Compute | Allreduce


@dataclass(frozen=True)
class Phase:
    """A stretch of the run that starts with all ranks together: an epoch, or the final average.

    ``repeat`` counts how many identical epochs it stands for: epochs with the
    same events take the same time, so each distinct one is simulated once.
    """

    name: str
    events: tuple[Event, ...]
    repeat: int = 1

    def key(self) -> tuple:
        return tuple(_event_key(e) for e in self.events)


def _event_key(e: Event) -> tuple:
    if isinstance(e, Compute):
        return ("c", e.steps.tobytes(), e.samples.tobytes(), e.empty_steps)
    if isinstance(e, Allreduce):
        return ("a", e.count, e.itemsize, e.purpose)
    return ("b",)


def phases(run: Run) -> list[Phase]:
    """The run as distinct phases with their repeat counts, in the order first met."""
    distinct: dict[tuple, Phase] = {}
    for phase in all_phases(run):
        key = phase.key()
        if key in distinct:
            seen = distinct[key]
            distinct[key] = Phase(seen.name, seen.events, seen.repeat + 1)
        else:
            distinct[key] = phase
    return list(distinct.values())


class Schedule(NamedTuple):
    """What stays fixed while the run's epochs are laid out: the trainer's ``Run`` in the program's terms."""

    sync: Sync
    steps: int  # per epoch, the same on every rank
    check_every: int  # steps between stop checks
    per_step: list[np.ndarray]  # (ranks,) samples of step s on each rank
    periods: list[int]  # per epoch, steps between averages (0: none inside it), as train.train computes them
    average: Allreduce | None  # a parameter average: the parameters and, with momentum, the momentum (SGD.beside)
    checking: Allreduce | None  # an average inside an epoch: the stop check rides in the buffer's tail (train.sync_parameters)
    final: Allreduce | None  # the average after the last epoch: the parameters alone (train.finish)
    gradient: Allreduce
    check: Allreduce


def schedule(run: Run) -> Schedule:
    """The run as the trainer sets it up: its resolved configuration, batch plan and buffers.

    The averaging buffer is ``optim.SGD.beside``'s state: the parameters followed by
    the momentum when there is one, so twice the parameters in one Allreduce. One rank
    is its own average: ``train.sync_parameters`` passes nothing then (None here).
    """
    cfg = run.config()
    sync = cfg.schedule
    sizes = np.array(slice_sizes(run.samples, run.ranks))
    batch, steps, _ = loop.batch_plan(cfg, list(sizes))
    fractions = [rate_fraction(cfg.lr_decay, e, settled(cfg.lr_schedule), cfg.epochs, settled(cfg.warmup)) for e in range(cfg.epochs)]
    params, alone = run.parameters, run.ranks == 1
    return Schedule(
        sync,
        steps,
        loop.check_interval(batch),
        [np.clip(sizes - s * batch, 0, batch) for s in range(steps)],
        [sync.period(f) for f in fractions],
        None if alone else Allreduce(params * (2 if cfg.momentum else 1), run.itemsize, "average"),
        None if alone else Allreduce(params * (2 if cfg.momentum else 1) + CHECK_VALUES, run.itemsize, "average"),
        None if alone else Allreduce(params, run.itemsize, "average"),
        Allreduce(params, run.itemsize, "gradient"),
        Allreduce(CHECK_VALUES, 8, "check"),
    )


class _Events:
    """One epoch's events as they are met: the steps between two collectives become one Compute."""

    def __init__(self, ranks: int):
        self.ranks = ranks
        self.events: list[Event] = []
        self._clear()

    def _clear(self) -> None:
        self.steps, self.samples, self.empty = np.zeros(self.ranks, int), np.zeros(self.ranks, int), 0

    def step(self, took: np.ndarray) -> None:
        self.steps = self.steps + (took > 0)
        self.samples = self.samples + took
        self.empty += int((took == 0).any())

    def meet(self, event: Event | None) -> None:
        """A collective: the compute since the last one ends here (None: no collective, the compute goes on)."""
        if event is None:
            return
        if self.steps.any() or self.empty:
            self.events.append(Compute(self.steps, self.samples, self.empty))
        self._clear()
        self.events.append(event)


def _epoch(plan: Schedule, ranks: int, period: int, final: bool, since: int) -> tuple[tuple[Event, ...], int]:
    """One epoch's events in ``train.train_epoch``'s order, and the steps since the last average after it.

    ``since`` counts the steps since the last average, across epoch ends (``Progress.since_average``):
    an average comes once it reaches ``period``, and at the epoch's end when the schedule averages
    there, never after the final epoch's last step (``finish`` averages then).
    """
    out = _Events(ranks)
    checked = 0  # the step of the last stop check, on its own or riding an average
    for s in range(plan.steps):
        out.step(plan.per_step[s])
        stop, since = s + 1, since + 1
        if plan.sync.averages_gradients:
            out.meet(plan.gradient)
        if period and since >= period and not (final and stop == plan.steps):
            rides = stop < plan.steps and plan.checking is not None
            out.meet(plan.checking if rides else plan.average)
            since, checked = 0, stop if rides else checked
        if stop == plan.steps or (stop % plan.check_every == 0 and stop - checked >= plan.check_every):
            out.meet(plan.check)
            checked = stop
    if plan.sync.averages_after_epoch and not final:
        out.meet(plan.average)
        since = 0
    return tuple(out.events), since


def all_phases(run: Run) -> Iterator[Phase]:
    """Every epoch's events as ``train.train`` performs them, then the final average if it is due.

    The ranks are out of step after any step but a gradient one, and together after
    an average (``Progress.in_sync``); ``finish`` averages only when they are not.
    """
    plan = schedule(run)
    since = 0
    for epoch, period in enumerate(plan.periods):
        events, since = _epoch(plan, run.ranks, period, epoch == run.epochs - 1, since)
        yield Phase(f"epoch {epoch + 1}", events)
    if plan.final is not None and not plan.sync.averages_gradients and since:
        yield Phase("final average", (plan.final,))


class Traffic(NamedTuple):
    """Allreduces of one purpose over a whole run, and the bytes each rank passed to them."""

    calls: int
    bytes: int


def second_epoch_share(run: Run) -> float:
    """The share of a two-epoch run's communication seconds (the clock's ``comm``) spent in its
    second epoch, taken as its share of the bytes passed by averages and gradient sums: the
    final average after the epochs counts in ``comm`` too, and an epoch-end average only in the
    first (calibrate.measure_compute times the second epoch's steps, their Allreduces left out)."""
    passed: list[int] = [sum(e.nbytes for e in p.events if isinstance(e, Allreduce) and e.purpose != "check") for p in all_phases(run)]
    total = sum(passed)
    return passed[1] / total if len(passed) > 1 and total else 0.0


def collectives(run: Run) -> dict[str, Traffic]:
    """The run's Allreduces by purpose, as the trainer's clock counts them (``<purpose>_allreduces``
    and ``<purpose>_bytes``; the scores, outside the trained seconds, are not part of the program)."""
    counts: dict[str, Traffic] = {}
    for phase in phases(run):
        for e in phase.events:
            if isinstance(e, Allreduce):
                calls, nbytes = counts.get(e.purpose, Traffic(0, 0))
                counts[e.purpose] = Traffic(calls + phase.repeat, nbytes + e.nbytes * phase.repeat)
    return counts
