"""What every rank of a training run does, as a program of compute and collectives.

The simulator and the analytic model must predict the same run the trainer
performs, so this module restates the loop of ``train.py`` in the terms they
need: per epoch, each rank's steps (how many samples each), the Allreduces of a
sync schedule with their sizes, the small stop/divergence checks, and the
barrier that ends the epoch. It knows nothing of costs; ``Costs`` turns steps
into seconds. The loop's own helpers (``batch_plan``, ``check_interval``,
``Sync``) are used, so a change in the trainer changes the prediction too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..config import TrainConfig
from ..network import parameter_count
from ..slicing import slice_sizes
from ..sync import Sync
from ..train import batch_plan, check_interval

CHECK_VALUES = 2  # the float64 flags every check sums: (stop requested, loss not finite)


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

    @property
    def parameters(self) -> int:
        return parameter_count(self.sizes)

    @property
    def label(self) -> str:
        return "-".join(map(str, self.sizes))

    def with_ranks(self, ranks: int) -> Run:
        return Run(self.sizes, self.samples, ranks, self.sync, self.epochs, self.batch, self.itemsize)


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
    purpose: str  # "sync" (parameters or gradients), "check" (stop/divergence flags)

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize


@dataclass(frozen=True)
class Barrier:
    purpose: str = "epoch end"


Event = Compute | Allreduce | Barrier


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
    for phase in _all_phases(run):
        key = phase.key()
        if key in distinct:
            seen = distinct[key]
            distinct[key] = Phase(seen.name, seen.events, seen.repeat + 1)
        else:
            distinct[key] = phase
    return list(distinct.values())


def _all_phases(run: Run) -> Iterator[Phase]:
    """Every epoch's events as ``train.train`` performs them, then the final average if it is due."""
    cfg = TrainConfig(hidden=run.sizes[1:-1], batch_size=run.batch, epochs=run.epochs, sync=run.sync, eval_every=0)
    sync: Sync = cfg.schedule
    sizes = slice_sizes(run.samples, run.ranks)
    batch, steps, _ = batch_plan(cfg, sizes)
    every = check_interval(batch)
    n = np.array(sizes)
    per_step = [np.clip(n - s * batch, 0, batch) for s in range(steps)]  # (ranks,) samples of step s
    params = Allreduce(run.parameters, run.itemsize, "sync")
    check = Allreduce(CHECK_VALUES, 8, "check")
    global_step = 0
    in_sync = True
    for epoch in range(run.epochs):
        final = epoch == run.epochs - 1
        events: list[Event] = []
        pending_steps, pending_samples, pending_empty = np.zeros(run.ranks, int), np.zeros(run.ranks, int), 0

        def flush() -> None:
            nonlocal pending_steps, pending_samples, pending_empty
            if pending_steps.any() or pending_empty:
                events.append(Compute(pending_steps, pending_samples, pending_empty))
            pending_steps, pending_samples, pending_empty = np.zeros(run.ranks, int), np.zeros(run.ranks, int), 0

        for s in range(steps):
            took = per_step[s]
            pending_steps = pending_steps + (took > 0)
            pending_samples = pending_samples + took
            pending_empty += int((took == 0).any())
            if sync.averages_gradients:
                flush()
                events.append(params)
            global_step += 1
            in_sync = sync.averages_gradients
            if sync.averages_after_step(global_step) and not (final and s + 1 == steps):
                flush()
                events.append(params)
                in_sync = True
            if (s + 1) % every == 0 or s + 1 == steps:
                flush()
                events.append(check)
        if sync.averages_after_epoch and not final:
            flush()
            events.append(params)
            in_sync = True
        flush()
        events.append(Barrier())
        yield Phase(f"epoch {epoch + 1}", tuple(events))
    if not in_sync:
        yield Phase("final average", (params,))


def collectives(run: Run) -> dict[str, int]:
    """How many Allreduces of each purpose the whole run makes (what the trainer's clock counts as syncs)."""
    counts: dict[str, int] = {}
    for phase in phases(run):
        for e in phase.events:
            if isinstance(e, Allreduce):
                counts[e.purpose] = counts.get(e.purpose, 0) + phase.repeat
    return counts
