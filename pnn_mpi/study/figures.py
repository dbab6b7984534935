"""Which figures a study gets: one PNG per plot a grid asks for, named GRID-PLOT.png.

Kept apart from ``plots`` (how to draw) and ``report`` (what to say), so
the report can list figures without importing matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from . import plots, stats
from .grid import Study
from .machine import Machine
from .results import Result

TITLES = {
    "accuracy": "test accuracy vs ranks",
    "speedup": "speed-up and efficiency vs ranks",
    "curves": "learning curves",
    "heatmap": "accuracy heat map",
}


def figure_name(grid: str, plot: str) -> str:
    return f"{grid}-{plot}.png"


def draw_figures(study: Study, results: list[Result], machine: Machine, folder: Path) -> dict[tuple[str, str], str]:
    """Draw every figure that has at least one successful run; (grid, plot) -> file name."""
    drawn = {}
    for grid in study.grids:
        if not stats.successes(grid, results):
            continue
        for plot in grid.plots:
            name = figure_name(grid.name, plot)
            title = f"{grid.name}: {TITLES[plot]}"
            path = Path(folder) / name
            if plot == "accuracy":
                plots.accuracy(path, stats.accuracy_table(grid, results), title)
            elif plot == "speedup":
                plots.speedup(path, stats.speedup_table(grid, results), machine, title)
            elif plot == "curves":
                table = stats.curve_table(grid, results)
                if not any(c.epochs for c in table.values()):
                    continue  # no epoch was scored (eval-every 0)
                plots.curves(path, table, title)
            else:
                plots.heatmap(path, stats.heat_table(grid, results), title)
            drawn[(grid.name, plot)] = name
    if study.compare == "paper":
        from . import paper

        drawn.update({("paper", name): name for name in paper.draw(results, folder)})
    return drawn
