"""What ``scaling`` writes: scaling.csv, the speed-up and efficiency figure, and report.md.

Rows are predictions (one per ranks, sync, model, platform) and, where a
configuration was also run here, the measured seconds beside the predicted
ones. The report names, per schedule and platform, the largest P that keeps
80% efficiency and what stops the next P: the smallest slice (compute itself
stops shrinking as 1/P: per-step costs and partial batches), latency, or
bandwidth (whichever part of the communication the analytic model says is
larger there).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..common.files import write_atomically
from ..parallel.sync import Sync
from .program import Run

FIELDS = (
    "ranks",
    "sync",
    "model",
    "platform",
    "predicted_seconds",
    "speedup",
    "efficiency",
    "measured_seconds",
    "engine",
    "analytic_seconds",
    "compute_seconds",
    "latency_seconds",
    "bandwidth_seconds",
)
GOOD = 0.8


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items() if k in FIELDS})
    write_atomically(path, buf.getvalue().encode())


def add_speedups(rows: list[dict]) -> None:
    """Speed-up and efficiency against the same model, schedule and platform at one rank."""
    base = {(r["sync"], r["model"], r["platform"]): r["predicted_seconds"] for r in rows if r["ranks"] == 1}
    for r in rows:
        one = base.get((r["sync"], r["model"], r["platform"]))
        if one:
            r["speedup"] = one / r["predicted_seconds"]
            r["efficiency"] = r["speedup"] / r["ranks"]


def bound(rows: list[dict]) -> dict[tuple, tuple[int, str]]:
    """(sync, model, platform) -> (largest P keeping >= 80% efficiency, what bounds it)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "efficiency" in r:
            groups.setdefault((r["sync"], r["model"], r["platform"]), []).append(r)
    found = {}
    for key, group in groups.items():
        group.sort(key=lambda r: r["ranks"])
        one = group[0]
        best, reason = group[0]["ranks"], f"none up to {group[-1]['ranks']}"
        for r in group:
            if r["efficiency"] < GOOD:
                compute_eff = one["compute_seconds"] / (r["ranks"] * r["compute_seconds"]) if r["compute_seconds"] else 1.0
                comm_lat, comm_bw = r["latency_seconds"], r["bandwidth_seconds"]
                if compute_eff < GOOD and (r["compute_seconds"] >= comm_lat + comm_bw or compute_eff < r["efficiency"] + 0.1):
                    reason = f"smallest slice (at P = {r['ranks']} compute alone is {compute_eff:.0%} efficient)"
                elif comm_lat >= comm_bw:
                    reason = f"latency (at P = {r['ranks']}: {comm_lat:.3g} s latency, {comm_bw:.3g} s transfer)"
                else:
                    reason = f"bandwidth (at P = {r['ranks']}: {comm_bw:.3g} s transfer, {comm_lat:.3g} s latency)"
                break
            best = r["ranks"]
        found[key] = (best, reason)
    return found


def plot(path: Path, rows: list[dict], measured: list[dict], platforms: list[str]) -> bool:
    """Speed-up (top) and efficiency (bottom) against P, one column per platform; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    syncs = list(dict.fromkeys(r["sync"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(platforms), figsize=(4.2 * len(platforms), 7), squeeze=False, sharex=True)
    colours = dict(zip(syncs, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = dict(zip(models, ("-", "--", ":", "-.")))
    for col, plat in enumerate(platforms):
        for sync in syncs:
            for m in models:
                pts = sorted(
                    (r["ranks"], r["speedup"], r["efficiency"])
                    for r in rows
                    if r["platform"] == plat and r["sync"] == sync and r["model"] == m and "speedup" in r
                )
                if not pts:
                    continue
                p, s, e = zip(*pts)
                axes[0][col].plot(p, s, styles[m], color=colours[sync], label=f"{sync}, {m}")
                axes[1][col].plot(p, e, styles[m], color=colours[sync])
        for r in measured:
            if r.get("speedup") is not None:
                axes[0][col].plot(r["ranks"], r["speedup"], "k*", markersize=9)
                axes[1][col].plot(r["ranks"], r["efficiency"], "k*", markersize=9)
        axes[0][col].set_title(plat)
        axes[0][col].set_xscale("log", base=2)
        axes[0][col].set_yscale("log", base=2)
        axes[1][col].set_ylim(0, 1.1)
        axes[1][col].axhline(GOOD, color="grey", lw=0.8, ls=":")
        axes[1][col].set_xlabel("ranks P")
    axes[0][0].set_ylabel("speed-up (predicted)")
    axes[1][0].set_ylabel("efficiency (predicted)")
    axes[0][0].plot([], [], "k*", label="measured on this machine")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("pnn_mpi scaling: simulated from this machine's calibration (default run: 60,000 samples, 10 epochs, batch 32)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomically(path, buf.getvalue())
    return True


def schedule_words(sync: str) -> str:
    """What a schedule's rows priced, in words: a label such as ``local:8:64`` does not say it."""
    s = Sync.parse(sync)
    return {
        "end": "one parameter average, after the last epoch",
        "epoch": "a parameter average after every epoch",
        "steps": f"a parameter average every {s.every} local steps",
        "local": f"a parameter average every {s.every} local steps at the peak rate, up to {s.largest} while the rate is lower (warm-up, decay), counted across epoch ends",
        "grad": "a gradient Allreduce every step",
    }[s.kind]


def markdown(rows: list[dict], validation: list[dict], cal, engine_note: str, plotted: bool, show=(16, 64, 256, 1024)) -> str:
    """report.md: the calibration, the validation, then per model the bounds and efficiencies, and what was priced."""
    lines = ["# pnn_mpi scaling", "", engine_note, "", *_calibration_lines(cal)]
    if validation:
        lines += _validation_lines(validation, cal)
    best = bound(rows)
    for m in dict.fromkeys(r["model"] for r in rows):
        lines += _model_lines([r for r in rows if r["model"] == m], m, best, show)
    if plotted:
        lines += ["", "![speed-up and efficiency](scaling.png)"]
    lines += _schedule_lines(list(dict.fromkeys(r["sync"] for r in rows)))
    lines += [
        "",
        "Every prediction is the default run (60,000 samples, 10 epochs, batch 32, float32) priced with the calibration above, "
        "which was measured on this shared 2-core machine; a slice shrinks as 60,000/P, so at P = 1,024 each rank holds 58 samples "
        "(2 steps an epoch).",
    ]
    return "\n".join(lines) + "\n"


def _calibration_lines(cal) -> list[str]:
    """What the predictions were priced with, and how disturbed the machine was when it was measured."""
    lines = [f"Calibration: {cal.machine}. Compute per step (one busy core / all busy):"]
    for m, c in cal.compute.items():
        lines.append(
            f"- {m}: {c['one'].per_step * 1e6:.0f} µs + {c['one'].per_sample * 1e6:.2f} µs/sample"
            f" / {c['all'].per_step * 1e6:.0f} µs + {c['all'].per_sample * 1e6:.2f} µs/sample"
        )
    for name, link in cal.links.items():
        lines.append(f"- link {name}: latency {link.latency * 1e6:.1f} µs, bandwidth {link.bandwidth / 1e9:.3g} GB/s")
    if cal.measured.get("estimator") == "min":
        lines.append("- each figure is the least disturbed of its repeats (the machine is shared; the predicted machines' cores are not)")
    if "load_average_before" in cal.measured:
        lines.append(
            f"- the machine was shared: load average {cal.measured['load_average_before']:.1f} when calibration began, "
            f"{cal.measured.get('load_average_after', float('nan')):.1f} when it ended ({cal.cores} cores)"
        )
    if "from_timeline" in cal.measured:
        lines.append(f"- {cal.measured['from_timeline']}")
    if "tcp_unavailable" in cal.measured:
        lines.append(f"- no TCP measurement: {cal.measured['tcp_unavailable']}")
    return lines


def _validation_lines(validation: list[dict], cal) -> list[str]:
    """The validation table, and what a reader needs to read its oversubscribed and in-loop rows."""
    lines = [
        "",
        "## Validation: predicted against measured train seconds on this machine",
        "",
        "| model | sync | epochs | platform | P | measured s | measured range s | simulated s | error | analytic s | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in validation:
        sim = v.get("simulated_seconds")
        simulated = "| |" if sim is None else f"| {sim:.3f} | {v['error']:+.1%} |"
        spread = v.get("train_seconds_rounds") or [v["train_seconds"]]
        lines.append(
            f"| {v['model']} | {v['sync']} | {v['epochs']} | {v['platform']} | {v['ranks']} | {v['train_seconds']:.3f} "
            f"| {min(spread):.2f}–{max(spread):.2f} {simulated} {v['analytic_seconds']:.3f} | {v['analytic_error']:+.1%} |"
        )
    if any(v["ranks"] > cal.cores or (v["platform"] == "twonodes" and v["ranks"] > 2) for v in validation):
        lines.append("")
        lines.append(
            f"P = 4 on the two namespace nodes puts two ranks on each of this machine's {cal.cores} cores (oversubscribed); "
            "those ranks compute at the rate measured with two ranks to a core."
        )
    excess = {(v["model"], v["platform"], v["ranks"]): v["in_loop_excess_seconds"] for v in validation if v.get("in_loop_excess_seconds")}
    if excess:
        lines.append("")
        lines.append(
            "Each parameter Allreduce of these runs is priced as one between real steps, measured at the same place just before: "
            "its price back to back plus (median over rounds) "
            + "; ".join(f"{m} on {plat} at P = {p}: {t * 1e6:.0f} µs" for (m, plat, p), t in excess.items())
            + "."
        )
    return lines


def _model_lines(rows: list[dict], m: str, best: dict, show) -> list[str]:
    """One model's two tables: the largest efficient P per schedule and platform, and the efficiency at ``show``."""
    platforms = list(dict.fromkeys(r["platform"] for r in rows))
    syncs = list(dict.fromkeys(r["sync"] for r in rows))
    lines = [
        "",
        f"## {m}: largest P with at least 80% efficiency, and what bounds it",
        "",
        "| sync | " + " | ".join(platforms) + " |",
        "|---|" + "---|" * len(platforms),
    ]
    for s in syncs:
        cells = ["" if best.get((s, m, plat)) is None else "{}: {}".format(*best[(s, m, plat)]) for plat in platforms]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Predicted efficiency of {m}:",
        "",
        "| sync | platform | " + " | ".join(f"P = {p}" for p in show) + " |",
        "|---|---|" + "---|" * len(show),
    ]
    for s in syncs:
        for plat in platforms:
            eff = {r["ranks"]: r.get("efficiency") for r in rows if r["sync"] == s and r["platform"] == plat}
            lines.append(f"| {s} | {plat} | " + " | ".join("" if eff.get(p) is None else f"{eff[p]:.0%}" for p in show) + " |")
    return lines


def _schedule_lines(syncs: list[str]) -> list[str]:
    """The schedules in words (a label such as ``local:8:64`` does not say what it averages, or how much)."""
    lines = ["", "The schedules priced:", "", *[f"- {s}: {schedule_words(s)}" for s in syncs]]
    if Run.momentum and any(Sync.parse(s).kind != "grad" for s in syncs):
        lines.append(f"- every parameter average but the final one also averages the momentum ({Run.momentum:g}): twice the parameters in one Allreduce")
    return lines
