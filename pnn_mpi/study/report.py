"""``report.md``: where the study ran, what it found, the figures, and the tables behind them.

The report states the machine (cores, logical and physical), the MPI library
and the Python/numpy versions the runs recorded, because a speed-up or an
accuracy means little without them; every finding comes from
``findings``, computed from this study's results.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import fields
from pathlib import Path

from ..common.files import write_atomically
from ..common.version import __version__
from ..training.config import TrainConfig
from ..training.defaults import FOLLOWING
from . import stats
from .figures import TITLES
from .findings import accuracy_findings, curve_findings, heat_findings, oversubscription, speedup_findings
from .grid import RANKS, Grid, Study, render
from .machine import Machine
from .results import Result

_DEFAULTS: dict = {f.name: f.default for f in fields(TrainConfig)}


def write_report(path: Path, study: Study, results: list[Result], machine: Machine, figures: dict, command: list[str]) -> None:
    write_atomically(Path(path), ("\n".join(report_lines(study, results, machine, figures, command)) + "\n").encode())


def report_lines(study: Study, results: list[Result], machine: Machine, figures: dict, command: list[str]) -> list[str]:
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    out = [f"# {study.title}", ""]
    out += _setting(study, results, machine, ok, failed)
    if study.compare == "paper":
        from . import paper

        out += paper.report_lines(results, [name for (kind, name) in figures if kind == "paper"])
    for grid in study.grids:
        out += _grid_section(grid, results, machine, figures)
    if failed:
        out += ["## Failed points", ""]
        for r in failed:
            out += [f"- `{r.point.id}` ({r.status}): {r.error} \u2014 `runs/{r.point.id}/stderr.txt` holds all its messages"]
            if r.stderr_tail:
                out += ["", "  ```", *(f"  {text}" for text in r.stderr_tail.splitlines()), "  ```"]
        out.append("")
    out += [
        "## Reproduce",
        "",
        "```sh",
        shlex.join(command),
        "```",
        "",
        "Rerunning the same command skips every point whose run folder already holds its complete `metrics.json`.",
    ]
    return out


def _setting(study: Study, results: list[Result], machine: Machine, ok: list[Result], failed: list[Result]) -> list[str]:
    def seen(key: str) -> str:
        values = sorted({str((r.metrics or {}).get(key, "?")) for r in ok})
        return " / ".join(values) if values else "unknown"

    wall = sum(r.wall_seconds for r in results if r.wall_seconds)
    reused = sum(r.reused for r in results)
    ranks = sorted({r.point.ranks for r in results})
    return [
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by pnn_mpi {__version__} from `{Path(study.source).name}`.",
        "",
        f"- **Machine:** `{seen('host')}`, {machine.describe()}.",
        f"- **MPI:** {seen('mpi_library')} ({seen('mpi_library_version')}).",
        f"- **Python** {seen('python')}, **numpy** {seen('numpy')}.",
        f"- **Points:** {len(results)}: {len(ok)} succeeded, {len(failed)} failed; {reused} reused from an earlier invocation."
        f" Launches took {wall / 60:.1f} min of wall time in all.",
        "",
        oversubscription(ranks, machine),
        "",
        "Accuracy is the test accuracy of the parallel network (the averaged one), as a mean over seeds"
        " (\u00b1 the standard deviation where there are several); times are medians. `train` excludes start-up,"
        " data loading and evaluation, which are shown separately. Every number comes from `results.csv`"
        " (one row per run) and the runs' `runs/POINT/metrics.json`.",
        "",
    ]


def _grid_section(grid: Grid, results: list[Result], machine: Machine, figures: dict) -> list[str]:
    out = [f"## {grid.name}", ""]
    if grid.about:
        out += [grid.about, ""]
    axes = ", ".join(f"`{k}` \u2208 {{{', '.join(render(v) for v in values)}}}" for k, values in grid.axes.items())
    out += [
        f"Axes: {axes or 'none'}" + (f"; {grid.repeats} repeats of each point" if grid.repeats > 1 else "") + ".",
        f"Other settings: {_other_settings(grid, results)}.",
        "",
    ]
    runs = stats.successes(grid, results)
    if not runs:
        return out + ["No run of this grid succeeded.", ""]
    for plot in grid.plots:
        out += [f"### {TITLES[plot].capitalize()}", ""]
        if (grid.name, plot) in figures:
            name = figures[(grid.name, plot)]
            out += [f"![{grid.name}: {TITLES[plot]}]({name})", ""]
        sentences, table = _plot_text(plot, grid, results, machine, runs)
        out += [f"- {s}" for s in sentences] + [""] + table + [""]
    return out


def _other_settings(grid: Grid, results: list[Result]) -> str:
    """The settings every point of ``grid`` shares beyond its axes. A setting the grid leaves to
    the defaults rule (the rate, its schedule, warm-up and sync) is named only when the grid sets
    it: resolved, it follows each point's ranks and batch, so the first point's value would mislead."""
    point = next(r.point for r in results if r.point.grid == grid.name)
    parts = [f"`ranks={point.ranks}`"] if RANKS not in grid.axes else []
    chosen = {token[2:] for token in point.flags if token.startswith("--")}
    for key, value in point.config.items():
        flag = key.replace("_", "-")
        if flag in grid.axes or key in ("data_dir", "expect_ranks", "resume", "checkpoint_every"):
            continue
        if key in FOLLOWING and flag not in chosen:
            continue
        default = list(_DEFAULTS[key]) if isinstance(_DEFAULTS[key], tuple) else _DEFAULTS[key]
        if value != default:
            parts.append(f"`{flag}={render(value)}`")
    return ", ".join(parts) + (", the rest at their defaults" if parts else "all at their defaults")


def _plot_text(plot: str, grid: Grid, results: list[Result], machine: Machine, runs: list[Result]) -> tuple[list[str], list[str]]:
    if plot == "accuracy":
        table = stats.accuracy_table(grid, results)
        return accuracy_findings(table), _accuracy_rows(table)
    if plot == "speedup":
        speeds = stats.speedup_table(grid, results)
        return speedup_findings(speeds, machine, _work(runs[0])), _speed_rows(speeds, machine)
    if plot == "heatmap":
        heat = stats.heat_table(grid, results)
        return heat_findings(heat), _heat_rows(heat)
    curves = stats.curve_table(grid, results)
    return curve_findings(curves), _curve_rows(curves)


def _work(run: Result) -> str:
    m = run.metrics or {}
    return f"{m['dataset']['train_samples']:,} training samples \u00d7 {m['config']['epochs']} epochs, split across the ranks"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _accuracy_rows(table: dict) -> list[str]:
    ranks = sorted({p for cells in table.values() for p in cells})
    header = ["P"] + [f"{stats.line_label(l)}: parallel (local mean)" for l in table]
    rows = [[str(p)] + [f"{c[p].accuracy.mean:.2%} ({c[p].local.mean:.2%})" if p in c else "\u2014" for c in table.values()] for p in ranks]
    return _table(header, rows)


def _speed_rows(table: dict, machine: Machine) -> list[str]:
    out = []
    for line, rows in table.items():
        if line:
            out += [f"{stats.line_label(line)}:", ""]
        header = ["P", "ranks per core", "runs", "train s", "speed-up", "efficiency", "communication s", "load s", "evaluation s", "start-up s", "wall s"]
        body = [
            [
                str(r.ranks),
                f"{r.ranks / machine.cores:g}",
                str(r.runs),
                _num(r.train),
                _num(r.speedup, "\u00d7"),
                f"{r.efficiency:.0%}",
                _num(r.communication),
                _num(r.load),
                _num(r.evaluation),
                _num(r.startup),
                _num(r.wall, digits=1),
            ]
            for r in rows
        ]
        out += _table(header, body) + [""]
    return out[:-1]


def _heat_rows(heat: stats.Heat) -> list[str]:
    header = [f"{heat.row_axis} \\ {heat.col_axis}"] + [render(v) for v in heat.col_values]

    def cell_text(cell) -> str:
        if cell is None:
            return "failed"
        return f"{cell.mean:.1%} \u00b1 {cell.std * 100:.1f}" if cell.n > 1 else f"{cell.mean:.1%}"

    rows = [[render(rv)] + [cell_text(cell) for cell in heat.cells[i]] for i, rv in enumerate(heat.row_values)]
    return _table(header, rows)


def _curve_rows(curves: dict) -> list[str]:
    epochs = sorted({e for c in curves.values() for e in c.epochs})
    header = ["setting"] + [f"epoch {e}" for e in epochs] + ["train s"]
    rows = []
    for line, curve in curves.items():
        by_epoch = dict(zip(curve.epochs, curve.accuracy))
        rows.append([stats.line_label(line)] + [f"{by_epoch[e]:.2%}" if e in by_epoch else "\u2014" for e in epochs] + [_num(curve.train)])
    return _table(header, rows)


def _num(value: float, unit: str = "", digits: int = 2) -> str:
    return "\u2014" if value is None or math.isnan(value) else f"{value:.{digits}f}{unit}"
