"""Our runs of the paper's experiments beside the paper's own numbers.

Kalwarowskyj & Schikuta (2023), "Parallel Neural Networks in Golang", show
their results only as figures. The values below are read off those figures
(approximate; ranges where a bar or a point could not be read more closely) and
were collected in issue #10. ``grids/paper.toml`` runs the same experiments;
this module turns its results into one table per figure, our figures in the
paper's form (a bar chart for the activations, learning curves for the network
counts), and sentences saying which of the paper's findings our runs repeat.

A study opts in with ``compare = "paper"`` in its ``[study]`` table; the grids
are found by the names below, which ``paper.toml`` uses.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .results import Result

ACTIVATIONS_ONE, ACTIVATIONS_MANY, LEARNING_SPEED, LONG = "activations-1", "activations-10", "learning-speed", "long"
ACTIVATION_ORDER = ("tanh", "leaky-relu", "relu", "sigmoid")  # the paper's bar order
SYNCS = ("end", "epoch")  # average once at the end (the paper's scheme) / after every epoch

# Test accuracy in percent, (low, high) as read from the paper's figures.
PAPER_ACTIVATIONS = {
    ("tanh", 1): (97.5, 97.8),
    ("leaky-relu", 1): (95.2, 95.5),
    ("relu", 1): (97.6, 98.0),
    ("sigmoid", 1): (93.0, 95.5),
    ("tanh", 10): (94.0, 94.5),
    ("leaky-relu", 10): (94.2, 95.8),
    ("relu", 10): (94.0, 95.5),
    ("sigmoid", 10): (91.5, 91.7),
}
# networks -> {epoch: (low, high)}
PAPER_LEARNING_SPEED = {
    2: {1: (94.5, 94.5), 5: (97.2, 97.2), 10: (97.6, 97.6), 20: (97.9, 97.9)},
    10: {5: (95.2, 95.2), 10: (96.3, 96.3), 20: (97.1, 97.1)},
    20: {20: (96.2, 96.5)},
    30: {20: (95.2, 95.2)},
}
PAPER_LONG = {
    2: {100: (98.08, 98.08), 200: (98.17, 98.17), 300: (98.18, 98.18)},
    10: {100: (97.76, 97.76), 200: (98.00, 98.00), 300: (98.05, 98.05)},
    20: {100: (97.50, 97.50), 200: (97.92, 97.92), 300: (97.97, 97.97)},
}
PAPER_FINAL_COST = 0.015  # the paper's average cost at the end of long training, approximately
CLOSE = 0.5  # points: a value of ours this close to the paper's range counts as reproduced


@dataclass(frozen=True)
class Run:
    """The few facts of one finished run the comparison needs."""

    networks: int
    activation: str
    sync: str
    epochs: dict  # epoch -> (test accuracy, confidence or nan), in percent, for every scored epoch
    train_loss: dict  # epoch -> mean training loss
    final: tuple  # (test accuracy, confidence) in percent
    seconds: float  # wall time of the launch


def _runs(results: list[Result], grid: str) -> list[Run]:
    out = []
    for r in results:
        if not r.ok or r.point.grid != grid:
            continue
        m, cfg = r.metrics or {}, r.point.config
        epochs = {e["epoch"]: (100 * e["test_accuracy"], 100 * e.get("test_confidence", math.nan)) for e in m["epochs"] if e.get("test_accuracy") is not None}
        final = (100 * m["test_accuracy"], 100 * m.get("test_confidence", math.nan))
        out.append(
            Run(r.point.ranks, cfg["activation"], cfg["sync"], epochs, {e["epoch"]: e["train_loss"] for e in m["epochs"]}, final, r.wall_seconds or math.nan)
        )
    return out


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def _paper(span: tuple | None) -> str:
    if span is None:
        return "\u2014"
    low, high = span
    if low != high:
        return f"{low:.1f}\u2013{high:.1f}%"
    return f"{low:.2f}%" if abs(low * 10 - round(low * 10)) > 1e-6 else f"{low:.1f}%"  # as precise as the paper's figure


def _ours(value: float, confidence: float = math.nan) -> str:
    if math.isnan(value):
        return "\u2014"
    return f"{value:.2f}% ({confidence:.1f})" if not math.isnan(confidence) else f"{value:.2f}%"


def _distance(value: float, span: tuple) -> float:
    """How far ``value`` lies outside the paper's range, in points (0 inside it)."""
    low, high = span
    return max(low - value, value - high, 0.0)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def activation_cells(results: list[Result]) -> dict:
    """(activation, networks, sync) -> (accuracy, confidence) of the final parallel network, mean over runs."""
    cells: dict = {}
    for grid in (ACTIVATIONS_ONE, ACTIVATIONS_MANY):
        for run in _runs(results, grid):
            sync = run.sync if run.networks > 1 else "-"
            cells.setdefault((run.activation, run.networks, sync), []).append(run.final)
    return {k: (_mean(a for a, _ in v), _mean(c for _, c in v)) for k, v in cells.items()}


def curve_cells(results: list[Result], grid: str) -> dict:
    """(networks, sync) -> {epoch: (accuracy, confidence)}, mean over runs."""
    grouped: dict = {}
    for run in _runs(results, grid):
        for epoch, pair in run.epochs.items():
            grouped.setdefault((run.networks, run.sync), {}).setdefault(epoch, []).append(pair)
    return {k: {e: (_mean(a for a, _ in v), _mean(c for _, c in v)) for e, v in sorted(by.items())} for k, by in sorted(grouped.items())}


def _activation_section(results: list[Result]) -> list[str]:
    cells = activation_cells(results)
    if not cells:
        return []
    many = sorted({n for (_, n, _) in cells if n > 1}) or [10]
    n = many[0]
    header = ["activation", "paper, 1 network", "ours, 1 network", f"paper, {n} networks", f"ours, {n} networks, `end`", f"ours, {n} networks, `epoch`"]
    rows = []
    for act in ACTIVATION_ORDER:
        rows.append(
            [
                act,
                _paper(PAPER_ACTIVATIONS.get((act, 1))),
                _ours(*cells.get((act, 1, "-"), (math.nan, math.nan))),
                _paper(PAPER_ACTIVATIONS.get((act, 10))),
                _ours(*cells.get((act, n, "end"), (math.nan, math.nan))),
                _ours(*cells.get((act, n, "epoch"), (math.nan, math.nan))),
            ]
        )
    out = [
        "### Activations, 1 network and 10 networks",
        "",
        "Test accuracy of the (parallel) network after the last epoch; in brackets our confidence (mean probability of the predicted class, in percent).",
        "",
    ]
    out += _table(header, rows) + [""]
    out += [f"- {s}" for s in activation_findings(cells, n)] + [""]
    return out


def activation_findings(cells: dict, n: int = 10) -> list[str]:
    """Which of the paper's activation findings our numbers repeat."""
    out = []

    def acc(act, nets, sync):
        return cells.get((act, nets, sync if nets > 1 else "-"), (math.nan,))[0]

    ones = {a: acc(a, 1, "-") for a in ACTIVATION_ORDER}
    close = [a for a in ACTIVATION_ORDER if not math.isnan(ones[a]) and _distance(ones[a], PAPER_ACTIVATIONS[(a, 1)]) <= CLOSE]
    if any(not math.isnan(v) for v in ones.values()):
        out.append(
            f"1 network: {len(close)} of 4 activations land within {CLOSE} points of the paper's bar" + (f" ({', '.join(close)})" if close else "") + "."
        )
        if not math.isnan(ones["leaky-relu"]) and not math.isnan(ones["relu"]):
            gap = ones["relu"] - ones["leaky-relu"]
            verdict = "as in the paper" if gap > 1.0 else "unlike the paper, where it trails ReLU by about 2.4 points"
            out.append(f"Leaky ReLU against ReLU at 1 network: {gap:+.2f} points in ReLU's favour ({verdict}).")
        worst = min((a for a in ones if not math.isnan(ones[a])), key=lambda a: ones[a])
        out.append(f"Weakest at 1 network: {worst}" + (" (the paper's weakest too)." if worst == "sigmoid" else " (the paper's weakest is sigmoid)."))
    for sync in SYNCS:
        drops = {a: ones[a] - acc(a, n, sync) for a in ACTIVATION_ORDER if not math.isnan(ones[a]) and not math.isnan(acc(a, n, sync))}
        if drops:
            mean_drop = _mean(drops.values())
            paper_drop = _mean(_mid(PAPER_ACTIVATIONS[(a, 1)]) - _mid(PAPER_ACTIVATIONS[(a, 10)]) for a in drops)
            below = sum(d > 0 for d in drops.values())
            out.append(
                f"{n} networks with `{sync}` lose {mean_drop:.2f} points on average against 1 network (the paper's"
                f" bars: {paper_drop:.2f}); they are below 1 network for {below} of {len(drops)} activations"
                " (in the paper: all but leaky ReLU, which is about level)."
            )
    return out


def _mid(span: tuple) -> float:
    return (span[0] + span[1]) / 2


def _curve_section(results: list[Result], grid: str, paper: dict, title: str, what: str) -> list[str]:
    cells = curve_cells(results, grid)
    if not cells:
        return []
    epochs = sorted({e for by in paper.values() for e in by})
    header = ["networks", "sync"] + [f"epoch {e}: paper / ours" for e in epochs]
    rows = []
    for (nets, sync), by_epoch in cells.items():
        row = [str(nets), f"`{sync}`"]
        for e in epochs:
            ours = by_epoch.get(e)
            row.append(f"{_paper(paper.get(nets, {}).get(e))} / {_ours(*ours) if ours else chr(0x2014)}")
        rows.append(row)
    out = [f"### {title}", "", what, ""] + _table(header, rows) + [""]
    out += [f"- {s}" for s in curve_findings(cells, paper)] + [""]
    return out


def curve_findings(cells: dict, paper: dict) -> list[str]:
    out = []
    for sync in SYNCS:
        lines = {nets: by for (nets, s), by in cells.items() if s == sync}
        if not lines:
            continue
        pairs = [(nets, e, by[e][0], span) for nets, by in lines.items() for e, span in paper.get(nets, {}).items() if e in by]
        if pairs:
            off = [_distance(v, span) for _, _, v, span in pairs]
            close = sum(d <= CLOSE for d in off)
            out.append(f"`{sync}`: {close} of {len(pairs)} of the paper's points are matched within {CLOSE} points (mean distance {_mean(off):.2f} points).")
        last = {nets: by[max(by)][0] for nets, by in lines.items() if by}
        order = sorted(last)
        falling = all(last[a] >= last[b] for a, b in zip(order, order[1:]))
        out.append(
            f"`{sync}`: at the last epoch, more networks give "
            + ("lower or equal accuracy at every step, as in the paper" if falling else "not always lower accuracy (the paper: always lower)")
            + ": "
            + ", ".join(f"{n}: {last[n]:.2f}%" for n in order)
            + "."
        )
    return out


def _long_section(results: list[Result]) -> list[str]:
    out = _curve_section(
        results,
        LONG,
        PAPER_LONG,
        "Long training: 2, 10 and 20 networks for 100, 200 and 300 epochs",
        "One 300-epoch run per network count at a constant learning rate, scored every 10 epochs: the scores"
        " at epochs 100 and 200 are those of 100- and 200-epoch runs, since scoring never changes training.",
    )
    runs = _runs(results, LONG)
    if runs:
        costs = ", ".join(f"{r.networks} networks {r.train_loss[max(r.train_loss)]:.4f}" for r in sorted(runs, key=lambda r: r.networks))
        out += [
            f"- Mean training loss (cross-entropy) in the last epoch: {costs}; the paper's average cost ends near {PAPER_FINAL_COST}"
            " (its cost function may differ from ours).",
            "",
        ]
    return out


def report_lines(results: list[Result], figures: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The report's section on the paper: a table per figure, findings, our figures."""
    body = _activation_section(results)
    body += _curve_section(
        results,
        LEARNING_SPEED,
        PAPER_LEARNING_SPEED,
        "Learning speed: 2, 10, 20 and 30 networks over 20 epochs",
        "Test accuracy of the parallel network (the average of the local networks) after each epoch;"
        " in brackets our confidence. `end` trains each network alone and scores their average every"
        " epoch without changing training; `epoch` replaces every network by the average after each epoch.",
    )
    body += _long_section(results)
    if not body:
        return []
    head = [
        "## Beside the paper",
        "",
        "Kalwarowskyj & Schikuta (2023) give their results as figures only; the paper's values here are read off"
        " them (approximate, ranges where a bar could not be read more closely). Ours: `confidence` = mean, over the"
        " test set, of the probability the network gives its predicted class.",
        "",
    ]
    shown = [f"![{name}]({name})" for name in figures]
    return head + shown + ([""] if shown else []) + body


BARS, CURVES = "paper-activations.png", "paper-learning-speed.png"


def draw(results: list[Result], folder: Path) -> list[str]:
    """Our figures in the paper's form; the names of the files drawn."""
    from .plots import require

    drawn = []
    cells = activation_cells(results)
    if cells:
        _bars(require(), cells, Path(folder) / BARS)
        drawn.append(BARS)
    curves = curve_cells(results, LEARNING_SPEED)
    if curves:
        _curves(require(), curves, Path(folder) / CURVES)
        drawn.append(CURVES)
    return drawn


def _bars(plt, cells: dict, path: Path) -> None:
    """Grouped bars per activation: 1 network, then the many-network runs by sync; the paper's ranges as black whiskers."""
    many = sorted({n for (_, n, _) in cells if n > 1})
    series = [(1, "-", "1 network")] + [(n, s, f"{n} networks, {s}") for n in many for s in SYNCS]
    series = [s for s in series if any((a, s[0], s[1]) in cells for a in ACTIVATION_ORDER)]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(len(series), 1)
    for i, (nets, sync, label) in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(ACTIVATION_ORDER))]
        ys = [cells.get((a, nets, sync), (math.nan,))[0] for a in ACTIVATION_ORDER]
        ax.bar(xs, ys, width=width * 0.95, color=f"C{i}", label=f"ours, {label}")
        for x, a in zip(xs, ACTIVATION_ORDER):
            span = PAPER_ACTIVATIONS.get((a, 10 if nets > 1 else 1))
            if span:
                ax.plot([x, x], [span[0] - 0.05, span[1] + 0.05], color="black", linewidth=3)
    ax.plot([], [], color="black", linewidth=3, label="the paper (as read from its figure)")
    ax.set_xticks(range(len(ACTIVATION_ORDER)))
    ax.set_xticklabels(ACTIVATION_ORDER)
    finite = [v[0] for v in cells.values() if not math.isnan(v[0])] + [s[0] for s in PAPER_ACTIVATIONS.values()]
    ax.set_ylim(max(0.0, min(finite) - 2), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("activations: 1 network vs 10 networks (784-256-10)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _curves(plt, cells: dict, path: Path) -> None:
    """Accuracy after each epoch per network count (colour) and sync (line style); the paper's points as crosses."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    counts = sorted({n for n, _ in cells})
    colour = {n: f"C{i}" for i, n in enumerate(counts)}
    for (nets, sync), by_epoch in cells.items():
        ax.plot(
            list(by_epoch),
            [v[0] for v in by_epoch.values()],
            color=colour[nets],
            linestyle="-" if sync == "end" else "--",
            marker=".",
            label=f"ours, {nets} networks, {sync}",
        )
    for nets in counts:
        points = PAPER_LEARNING_SPEED.get(nets, {})
        if points:
            ax.plot(
                list(points),
                [_mid(s) for s in points.values()],
                linestyle="none",
                marker="X",
                markersize=9,
                color=colour[nets],
                markeredgecolor="black",
                label=f"the paper, {nets} networks",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy of the parallel network (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.set_title("learning speed: 2, 10, 20, 30 networks (784-256-10)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
