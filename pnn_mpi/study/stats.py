"""The study's numbers, summarised once for both the plots and the report's sentences.

Seeds are repeats of an experiment with different random starts: accuracy is
reported as their mean and (sample) standard deviation. Timings are reported
as medians over every run of a point (seeds and repeats), which a single slow
launch on a busy machine cannot drag. Only successful runs count.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .grid import RANKS, Grid, render
from .results import Result

Line = tuple  # ((axis, value), ...): one curve of a plot, e.g. (("sync", "end"),)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class AccuracyCell:
    accuracy: Stat  # the parallel network's
    local: Stat  # mean of the local networks' accuracies, before the final average


@dataclass(frozen=True)
class SpeedRow:
    ranks: int
    runs: int
    train: float  # median train_seconds
    speedup: float  # against the smallest P of the line
    efficiency: float  # speed-up / ideal speed-up
    ideal: float
    load: float
    evaluation: float
    startup: float
    communication: float
    wall: float


@dataclass(frozen=True)
class Heat:
    row_axis: str
    col_axis: str
    row_values: list
    col_values: list
    cells: list  # cells[i][j]: Stat of accuracy, or None where no run succeeded


@dataclass(frozen=True)
class Curve:
    epochs: list[int]
    accuracy: list[float]  # mean over seeds of the parallel network's test accuracy after each scored epoch
    final: Stat
    train: float  # median train_seconds


def stat(values: list[float]) -> Stat:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return Stat(math.nan, math.nan, 0)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def successes(grid: Grid, results: list[Result]) -> list[Result]:
    return [r for r in results if r.ok and r.point.grid == grid.name]


def line_of(result: Result, axes: list[str]) -> Line:
    return tuple((k, result.point.axes[k]) for k in axes)


def line_axes(grid: Grid, *besides: str) -> list[str]:
    return [k for k in grid.varying if k not in besides]


def describe_sync(value: str) -> str:
    kind, _, every = str(value).partition(":")
    words = {
        "end": "one-shot averaging",
        "epoch": "per-epoch averaging",
        "grad": "gradient averaging at every step",
        "steps": f"averaging every {every} steps",
    }.get(kind, "averaging")
    return f"{words} (`{value}`)"


def describe_batch(value) -> str:
    kind = "stochastic updates" if value == 1 else "full batch" if value == "full" else "mini-batches"
    return f"{kind} (`batch-size={value}`)"


def line_label(line: Line, markdown: bool = True) -> str:
    """A line's name in words: sync schedules are described, other axes shown as key=value."""
    if not line:
        return "all runs"
    words = []
    for key, value in line:
        if key == "sync":
            text = describe_sync(value)
        elif key == "batch-size":
            text = describe_batch(value)
        elif key == RANKS:
            text = f"P={value}"
        else:
            text = f"{key}={render(value)}"
        words.append(text if markdown else text.replace("`", ""))
    return ", ".join(words)


def _grouped(results: list[Result], axes: list[str], by_ranks: bool = False) -> dict:
    groups: dict = {}
    for r in results:
        key = (line_of(r, axes), r.point.ranks) if by_ranks else line_of(r, axes)
        groups.setdefault(key, []).append(r)
    return groups


def accuracy_table(grid: Grid, results: list[Result]) -> dict[Line, dict[int, AccuracyCell]]:
    table: dict = {}
    for (line, ranks), runs in _grouped(successes(grid, results), line_axes(grid, RANKS), by_ranks=True).items():
        cell = AccuracyCell(stat([r.number("test_accuracy") for r in runs]), stat([r.number("local_accuracy_mean") for r in runs]))
        table.setdefault(line, {})[ranks] = cell
    return {line: dict(sorted(cells.items())) for line, cells in table.items()}


def speedup_table(grid: Grid, results: list[Result]) -> dict[Line, list[SpeedRow]]:
    table: dict = {}
    for (line, ranks), runs in _grouped(successes(grid, results), line_axes(grid, RANKS), by_ranks=True).items():
        table.setdefault(line, {})[ranks] = runs
    out = {}
    for line, by_ranks in table.items():
        base_ranks = min(by_ranks)
        base = median([r.number("train_seconds") for r in by_ranks[base_ranks]])
        rows = []
        for ranks in sorted(by_ranks):
            runs = by_ranks[ranks]
            train = median([r.number("train_seconds") for r in runs])
            ideal = ranks / base_ranks
            speedup = base / train if train > 0 else math.nan
            rows.append(
                SpeedRow(
                    ranks=ranks,
                    runs=len(runs),
                    train=train,
                    speedup=speedup,
                    efficiency=speedup / ideal,
                    ideal=ideal,
                    load=median([r.number("load_seconds") for r in runs]),
                    evaluation=median([r.number("evaluation_seconds") for r in runs]),
                    startup=median([r.number("startup_seconds") for r in runs]),
                    communication=median([r.number("communication_seconds") for r in runs]),
                    wall=median([r.number("wall_seconds") for r in runs]),
                )
            )
        out[line] = rows
    return out


def heat_table(grid: Grid, results: list[Result]) -> Heat:
    row_axis, col_axis = grid.varying[:2]
    groups = _grouped(successes(grid, results), [row_axis, col_axis])
    rows, cols = list(grid.axes[row_axis]), list(grid.axes[col_axis])
    cells: list[list] = []
    for rv in rows:
        cells.append([])
        for cv in cols:
            runs = groups.get(((row_axis, rv), (col_axis, cv)), [])
            cells[-1].append(stat([r.number("test_accuracy") for r in runs]) if runs else None)
    return Heat(row_axis, col_axis, rows, cols, cells)


def curve_table(grid: Grid, results: list[Result]) -> dict[Line, Curve]:
    out = {}
    for line, runs in _grouped(successes(grid, results), line_axes(grid)).items():
        scored: dict[int, list[float]] = {}
        for r in runs:
            for record in r.metrics["epochs"]:
                if record.get("test_accuracy") is not None:
                    scored.setdefault(record["epoch"], []).append(record["test_accuracy"])
        epochs = sorted(scored)
        out[line] = Curve(
            epochs=epochs,
            accuracy=[statistics.fmean(scored[e]) for e in epochs],
            final=stat([r.number("test_accuracy") for r in runs]),
            train=median([r.number("train_seconds") for r in runs]),
        )
    return out
