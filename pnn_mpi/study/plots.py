"""The study's figures as PNG files, drawn with matplotlib's Agg backend.

matplotlib is imported only here and only when a figure is drawn, so training
and every other command work without it; a study that needs it says how to
get it before it launches anything (``require``). Each function takes a table
from ``stats`` and a path: what is plotted is decided there, how here.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..common.errors import UserError
from ..common.files import write_atomically
from .grid import render
from .machine import Machine
from .stats import Curve, Heat, Line, SpeedRow, line_label

_INSTALL = 'plots need matplotlib: pip install "pnn_mpi[study]" (from a checkout: pip install -e ".[study]"), or run the study with --no-plots'


def require():
    """matplotlib.pyplot on the Agg backend, or a UserError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(_INSTALL) from None
    return plt


def _label(line: Line) -> str:
    return line_label(line, markdown=False)


def _rank_axis(ax, ranks: list[int], cores: int | None = None) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks)
    ax.set_xticklabels([f"{p}\n{p / cores:g}/core" if cores else str(p) for p in ranks])
    ax.minorticks_off()
    ax.set_xlabel("ranks P" + (" (ranks per physical core)" if cores else ""))
    ax.grid(True, alpha=0.3)


def _save(plt, fig, path) -> None:
    image = io.BytesIO()  # rendered in memory, then written like every file we make (files.py)
    fig.savefig(image, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_atomically(path, image.getvalue())


def accuracy(path, table: dict, title: str) -> None:
    """Parallel accuracy vs P, one solid line per schedule (error bars: std over seeds), local mean dashed."""
    plt = require()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ranks = sorted({p for cells in table.values() for p in cells})
    for i, (line, cells) in enumerate(table.items()):
        xs = list(cells)
        color = f"C{i % 10}"
        ax.errorbar(
            xs,
            [c.accuracy.mean * 100 for c in cells.values()],
            yerr=[c.accuracy.std * 100 for c in cells.values()],
            marker="o",
            capsize=3,
            color=color,
            label=_label(line),
        )
        ax.plot(xs, [c.local.mean * 100 for c in cells.values()], linestyle="--", marker=".", color=color, alpha=0.7)
    ax.plot([], [], linestyle="--", color="grey", label="dashed: local networks' mean")
    _rank_axis(ax, ranks)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    _save(plt, fig, path)


def speedup(path, table: dict[Line, list[SpeedRow]], machine: Machine, title: str) -> None:
    """Speed-up and efficiency vs P against the ideal, the physical cores marked; and where a launch's time goes."""
    plt = require()
    fig, (ax_s, ax_e, ax_t) = plt.subplots(1, 3, figsize=(15, 4.5))
    cores = machine.cores
    ranks = sorted({r.ranks for rows in table.values() for r in rows})
    for i, (line, rows) in enumerate(table.items()):
        color = f"C{i % 10}"
        ax_s.plot([r.ranks for r in rows], [r.speedup for r in rows], marker="o", color=color, label=_label(line) if line else "measured")
        ax_e.plot([r.ranks for r in rows], [r.efficiency * 100 for r in rows], marker="o", color=color, label=_label(line) if line else "measured")
    base = ranks[0]
    ax_s.plot(ranks, [p / base for p in ranks], linestyle="--", color="black", label="ideal")
    ax_e.axhline(100, linestyle="--", color="black", label="ideal")
    for ax in (ax_s, ax_e):
        if ranks[-1] > cores:
            ax.axvspan(cores, ranks[-1] * 1.2, color="red", alpha=0.07, label=f"oversubscribed (> {cores} physical cores)")
        ax.axvline(cores, linestyle=":", color="red")
        _rank_axis(ax, ranks, cores)
        ax.legend(fontsize="small")
    ax_s.set_ylabel(f"speed-up (train time at P={base} / at P)")
    ax_e.set_ylabel("efficiency (%)")
    ax_s.set_title("speed-up")
    ax_e.set_title("efficiency")

    rows = next(iter(table.values()))
    parts = [
        ("train", [r.train for r in rows]),
        ("load", [r.load for r in rows]),
        ("evaluation", [r.evaluation for r in rows]),
        ("start-up", [max(0.0, r.startup) for r in rows]),
    ]
    positions = range(len(rows))
    bottom = [0.0] * len(rows)
    for i, (name, values) in enumerate(parts):
        values = [0.0 if math.isnan(v) else v for v in values]
        ax_t.bar(positions, values, bottom=bottom, color=f"C{i}", label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax_t.set_xticks(list(positions))
    ax_t.set_xticklabels([f"{r.ranks}\n{r.ranks / cores:g}/core" for r in rows])
    ax_t.set_xlabel("ranks P (ranks per physical core)")
    ax_t.set_ylabel("seconds per launch (medians)")
    ax_t.set_title("where a launch's time goes")
    ax_t.legend(fontsize="small")
    fig.suptitle(title)
    _save(plt, fig, path)


def curves(path, table: dict[Line, Curve], title: str) -> None:
    """Test accuracy after each scored epoch, mean over seeds: colour by the first axis, line style by the rest."""
    plt = require()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict = {}
    styles: dict = {}
    for line, curve in table.items():
        if not curve.epochs:
            continue
        head, rest = line[:1], line[1:]
        color = colors.setdefault(head, f"C{len(colors) % 10}")
        style = styles.setdefault(rest, ("-", "--", ":", "-.")[len(styles) % 4])
        ax.plot(curve.epochs, [a * 100 for a in curve.accuracy], marker="o", color=color, linestyle=style, label=_label(line))
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("test accuracy of the parallel network (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(plt, fig, path)


def heatmap(path, heat: Heat, title: str) -> None:
    """Mean test accuracy for every pair of the two axes, each cell labelled with its value."""
    plt = require()
    values = [[math.nan if cell is None else cell.mean * 100 for cell in row] for row in heat.cells]
    fig, ax = plt.subplots(figsize=(1.4 * len(heat.col_values) + 3, 0.7 * len(heat.row_values) + 2))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    finite = [v for row in values for v in row if not math.isnan(v)]
    middle = (min(finite) + max(finite)) / 2 if finite else 0
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            text = "failed" if math.isnan(v) else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", color="black" if not math.isnan(v) and v > middle else "white")
    ax.set_xticks(range(len(heat.col_values)))
    ax.set_xticklabels([render(v) for v in heat.col_values])
    ax.set_yticks(range(len(heat.row_values)))
    ax.set_yticklabels([render(v) for v in heat.row_values])
    ax.set_xlabel(heat.col_axis)
    ax.set_ylabel(heat.row_axis)
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    ax.set_title(title)
    _save(plt, fig, path)
