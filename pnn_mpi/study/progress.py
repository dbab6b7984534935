"""One progress line per point, with an honest estimate of the time left.

Points differ a lot in cost (16 ranks start slower than 1; batch 1 trains
~15x slower per sample than batch 32), so "mean time so far x points left" is
misleading. Each point gets a rough relative cost from a two-term model, and
the model's scale is calibrated on the launches already made: the estimate
uses this machine's measured speed, the model only says how points compare.
"""

from __future__ import annotations

from .grid import Point, render

# Rough costs measured on a 2-core development machine; only their ratios matter
# once a launch has calibrated them.
SECONDS_PER_RANK = 0.35  # launcher, interpreter and MPI start-up, data loading
SECONDS_PER_SAMPLE_STEP = 4.7e-6  # one sample's forward+backward, amortised over a batch
STEP_OVERHEAD_SAMPLES = 30  # a step's fixed cost, in samples' worth of work
ASSUMED_TRAIN_SAMPLES = 60000  # when the grid uses the whole training set


def cost(point: Point) -> float:
    """Rough seconds this point takes: start-up per rank plus its training work."""
    cfg = point.config
    samples = cfg["train_size"] or ASSUMED_TRAIN_SAMPLES
    batch = samples / point.ranks if cfg["batch_size"] == "full" else cfg["batch_size"]
    work = cfg["epochs"] * samples * (1 + STEP_OVERHEAD_SAMPLES / max(batch, 1))
    return 1.0 + SECONDS_PER_RANK * point.ranks + SECONDS_PER_SAMPLE_STEP * work


class Estimate:
    """Time left, from the model scaled by how the launches so far compared with it."""

    def __init__(self) -> None:
        self.measured = 0.0
        self.modelled = 0.0

    def record(self, point: Point, seconds: float) -> None:
        self.measured += seconds
        self.modelled += cost(point)

    def seconds_left(self, pending: list[Point]) -> float:
        scale = self.measured / self.modelled if self.modelled > 0 else 1.0
        return scale * sum(cost(p) for p in pending)


def duration(seconds: float) -> str:
    """'40 s', '3 min', '1 h 5 min': as precise as a wait needs."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def label(point: Point, varying: list[str]) -> str:
    """The point in a few words: its grid, P, and the axes that vary in its grid."""
    words = [point.grid, f"P={point.ranks}"]
    words += [f"{k}={render(point.axes[k])}" for k in varying if k != "ranks" and k in point.axes]
    if "seed" in point.axes:
        words.append(f"seed={point.axes['seed']}")
    if point.repeat > 1:
        words.append(f"repeat {point.repeat}")
    return " ".join(words)


def line(index: int, total: int, what: str, outcome: str, left: float | None) -> str:
    tail = f" \u2014 about {duration(left)} left" if left else ""
    return f"[{index}/{total}] {what}: {outcome}{tail}"
