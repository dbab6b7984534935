"""The report's findings: plain sentences computed from the measured numbers.

Nothing here knows what the results "should" be: every figure, every "best"
and every comparison is read off the tables in ``stats``, so a sentence
can only say what this study measured on this machine.
"""

from __future__ import annotations

import math

from ..common.wording import plural
from .grid import render
from .machine import Machine
from .stats import AccuracyCell, Curve, Heat, Line, SpeedRow, Stat, line_label


def pct(s: Stat, seeds: bool = True) -> str:
    text = f"{s.mean:.1%}"
    if seeds and s.n > 1:
        text += f" (\u00b1 {s.std * 100:.1f} over {s.n} runs)"
    return text


def accuracy_findings(table: dict[Line, dict[int, AccuracyCell]]) -> list[str]:
    if not table:
        return ["No run of this grid succeeded."]
    ranks = sorted({p for cells in table.values() for p in cells})
    low, top = ranks[0], ranks[-1]
    at_top = {line: cells[top] for line, cells in table.items() if top in cells}
    out = []
    if at_top:
        parts = [f"{line_label(l)} reached {pct(c.accuracy)} while its local networks averaged {c.local.mean:.1%}" for l, c in at_top.items()]
        out.append(f"At P={top}, " + "; ".join(parts) + ".")
    if len(at_top) > 1:
        best = max(at_top, key=lambda l: at_top[l].accuracy.mean)
        worst = min(at_top, key=lambda l: at_top[l].accuracy.mean)
        gap = (at_top[best].accuracy.mean - at_top[worst].accuracy.mean) * 100
        out.append(
            f"At P={top} the best was {line_label(best)} ({at_top[best].accuracy.mean:.1%}) and the weakest "
            f"{line_label(worst)} ({at_top[worst].accuracy.mean:.1%}), {gap:.1f} points apart."
        )
    changes = [
        f"{(cells[top].accuracy.mean - cells[low].accuracy.mean) * 100:+.1f} points for {line_label(l)}"
        f" ({cells[low].accuracy.mean:.1%} \u2192 {cells[top].accuracy.mean:.1%})"
        for l, cells in table.items()
        if low in cells and top in cells and low != top
    ]
    if changes:
        out.append(f"From P={low} to P={top} the parallel network's accuracy changed by " + "; ".join(changes) + ".")
    return out


def speedup_findings(table: dict[Line, list[SpeedRow]], machine: Machine, work: str) -> list[str]:
    if not table:
        return ["No run of this grid succeeded."]
    out = []
    for line, rows in table.items():
        base, last = rows[0], rows[-1]
        name = f"For {line_label(line)}, with" if line else "With"
        out.append(
            f"{name} the same total work at every P ({work}), training took {base.train:.2f} s at P={base.ranks}"
            f" and {last.train:.2f} s at P={last.ranks} (medians of {base.runs} and {last.runs} runs)."
        )
        rest = rows[1:]
        if rest:
            relative = "" if base.ranks == 1 else f" relative to P={base.ranks}"
            out.append(f"Speed-up{relative}: " + ", ".join(f"{r.speedup:.2f}\u00d7 at P={r.ranks} ({r.efficiency:.0%} efficiency)" for r in rest) + ".")
            best = max(rest, key=lambda r: r.speedup if not math.isnan(r.speedup) else -1)
            if best.speedup > 1:
                out.append(f"The largest speed-up, {best.speedup:.2f}\u00d7, came at P={best.ranks}.")
            else:
                out.append(f"No P above {base.ranks} trained faster than P={base.ranks} here.")
        out.append(
            f"Outside training, a launch at P={base.ranks} spent {base.startup:.1f} s starting up and {base.load:.2f} s"
            f" loading data; at P={last.ranks}, {last.startup:.1f} s and {last.load:.2f} s. Those count in the wall time"
            f" ({base.wall:.1f} s and {last.wall:.1f} s) but not in the speed-up."
        )
        if last.train > 0 and not math.isnan(last.communication):
            out.append(
                f"At P={last.ranks}, communication took {last.communication:.2f} s of the {last.train:.2f} s of training"
                f" ({last.communication / last.train:.0%})."
            )
    out.append(oversubscription(sorted({r.ranks for rows in table.values() for r in rows}), machine))
    return out


def oversubscription(ranks: list[int], machine: Machine) -> str:
    """Whether the ranks outnumbered the cores, said plainly: speed-up beyond the cores is not on offer."""
    cores = machine.cores
    over = [p for p in ranks if p > cores]
    if not over:
        return f"This machine has {machine.describe()}; every P here fits, so each rank had a core of its own."
    listed = _and([f"P={p}" for p in over])
    return (
        f"This machine has {machine.describe()}. At {listed} it is oversubscribed: several ranks share each core,"
        f" so a speed-up beyond {cores}\u00d7 is not expected, and the times there measure ranks taking turns on"
        f" {plural(cores, 'core')}, not parallel scaling."
    )


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def heat_findings(heat: Heat) -> list[str]:
    cells = [(rv, cv, heat.cells[i][j]) for i, rv in enumerate(heat.row_values) for j, cv in enumerate(heat.col_values) if heat.cells[i][j]]
    if not cells:
        return ["No run of this grid succeeded."]
    r, c = heat.row_axis, heat.col_axis
    best = max(cells, key=lambda x: x[2].mean)
    worst = min(cells, key=lambda x: x[2].mean)
    out = [
        f"The best combination was {r}={render(best[0])} with {c}={render(best[1])}: {pct(best[2])}; the weakest,"
        f" {r}={render(worst[0])} with {c}={render(worst[1])}: {pct(worst[2])}."
    ]
    for axis, other, means in ((r, c, _margins(heat, rows=True)), (c, r, _margins(heat, rows=False))):
        if len(means) > 1:
            hi = max(means, key=lambda k: means[k])
            lo = min(means, key=lambda k: means[k])
            out.append(f"Averaged over {other}, {axis}={render(hi)} did best ({means[hi]:.1%}) and {axis}={render(lo)} worst ({means[lo]:.1%}).")
    missing = sum(cell is None for row in heat.cells for cell in row)
    if missing:
        out.append(f"{plural(missing, 'combination')} produced no successful run.")
    return out


def _margins(heat: Heat, rows: bool) -> dict:
    values = heat.row_values if rows else heat.col_values
    out = {}
    for i, value in enumerate(values):
        cells = heat.cells[i] if rows else [row[i] for row in heat.cells]
        means = [cell.mean for cell in cells if cell]
        if means:
            out[value] = sum(means) / len(means)
    return out


def curve_findings(curves: dict[Line, Curve]) -> list[str]:
    if not curves:
        return ["No run of this grid succeeded."]
    lines = list(curves)
    if not lines[0] or len(lines[0]) == 1:
        parts = [f"{line_label(l)} reached {pct(curves[l].final)} in {curves[l].train:.2f} s of training" for l in lines]
        return ["At the end of training, " + "; ".join(parts) + "."]
    first = lines[0][0][0]
    best: dict = {}
    for line in lines:
        value = line[0][1]
        if value not in best or curves[line].final.mean > curves[best[value]].final.mean:
            best[value] = line
    parts = [f"{line_label(l[:1])}: {pct(curves[l].final)} with {line_label(l[1:])} ({curves[l].train:.2f} s of training)" for l in best.values()]
    return [f"Best setting for each value of {'P' if first == 'ranks' else first}: " + "; ".join(parts) + "."]
