"""Validation: predicted against measured train time, for every configuration this machine can run.

P = 1 and 2 on the cores (shared memory, platform ``thisvm``), P = 2 and 4
across the two namespace nodes (TCP, platform ``twonodes``; at P = 4 two ranks
share each core, as the platform says). Each configuration is a real
``python -m pnn_mpi`` launch whose ``metrics.json`` gives the measured train
seconds; the same run description is then simulated (and priced by the
analytic model) on the calibrated platform. The machine is shared and its load
drifts within minutes, so every case of every round is calibrated afresh just
before its launches (its own model's step cost and both links, kept beside the
runs), and the table reports the median over rounds.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import UserError
from . import model, simulate, twonodes
from .costs import Calibration
from .launches import job
from .platforms import built_in
from .predict import local_schedule
from .program import Run

PLACES = (("thisvm", "local", 1), ("thisvm", "local", 2), ("twonodes", "twonodes", 2), ("twonodes", "twonodes", 4))


@dataclass(frozen=True)
class Case:
    sizes: tuple[int, ...]
    sync: str
    epochs: int
    samples: int = 60000

    def run(self, ranks: int) -> Run:
        return Run(self.sizes, self.samples, ranks, self.sync, self.epochs)


CASES = (Case((784, 128, 10), "epoch", 3), Case((784, 128, 10), local_schedule(), 2), Case((784, 128, 10), "grad", 2), Case((784, 800, 10), "epoch", 1))
QUICK_CASES = (Case((784, 128, 10), "epoch", 1, 8192), Case((784, 128, 10), "grad", 1, 8192))


def measured_seconds(where: str, ranks: int, case: Case, folder: Path) -> dict:
    """Launch the case for real; returns its train seconds and time breakdown from metrics.json."""
    out = folder / "run"
    flags = [
        "--hidden",
        *map(str, case.sizes[1:-1]),
        "--sync",
        case.sync,
        "--epochs",
        str(case.epochs),
        "--train-size",
        str(case.samples),
        "--test-size",
        "1000",
        "--eval-every",
        "0",
        "--out",
        str(out),
    ]
    job(where, ranks, ["-m", "pnn_mpi", *flags], folder)
    record = json.loads((out / "metrics.json").read_text())
    t = record["timings"]
    return {
        "train_seconds": record["train_seconds"],
        "compute_seconds": t["compute_seconds"]["max"],
        "communication_seconds": t["communication_seconds"]["max"],
        "wait_seconds": t["wait_seconds"]["max"],
    }


def validate(calibrate_round, rounds: int, quick: bool, work: Path, log=print, tcp: bool = True) -> list[dict]:
    """Rows of the validation table: one per (case, place), medians over ``rounds``.

    ``calibrate_round(models, folder, sync)`` measures the machine afresh for those models (their compute
    under that schedule) and returns a Calibration.
    Every launch keeps its folder under ``work`` (command, output, metrics.json),
    named in the row's ``runs``, so each figure can be traced to its run.
    """
    cases = QUICK_CASES if quick else CASES
    places = list(PLACES)
    skipped = twonodes.why_not() if tcp else "not asked for (--no-tcp)"
    if skipped:
        places = [p for p in places if p[1] != "twonodes"]
        log(f"validation: the namespace-node configurations are skipped: {skipped}")
    samples: dict[tuple, list[dict]] = {}
    work = Path(work).resolve()
    if any(p[1] == "twonodes" for p in places) and (work == Path("/tmp") or Path("/tmp") in work.parents):
        raise UserError(f"--out {work.parent}: under /tmp, which each namespace node replaces by its own; choose another folder or --no-tcp")
    for r in range(rounds):
        for case in cases:
            label = "-".join(map(str, case.sizes))
            cal: Calibration = calibrate_round([label], work / f"round{r + 1}-{label}-{case.sync.replace(':', '')}-calibration", case.sync)
            for plat_name, where, ranks in places:
                key = (case, plat_name, ranks)
                log(
                    f"validation round {r + 1}/{rounds}: {'-'.join(map(str, case.sizes))} {case.sync} {case.epochs} epochs, "
                    f"{ranks} rank{'s' * (ranks > 1)} on {plat_name}"
                )
                folder = work / f"round{r + 1}-{plat_name}-{ranks}-{'-'.join(map(str, case.sizes))}-{case.sync.replace(':', '')}"
                with twonodes.up_for(where):
                    got = measured_seconds(where, ranks, case, folder)
                    got["run"] = str(folder)
                plat = built_in(plat_name, cal)
                run = case.run(ranks)
                got["analytic_seconds"] = model.predict(run, plat, cal).total
                got["in_loop_excess_seconds"] = model.in_loop_excess(run, plat, cal)
                if simulate.available():
                    with simulate.Simulator(plat, cal) as sim:
                        got["simulated_seconds"] = sim.predict(run)
                samples.setdefault(key, []).append(got)
    rows = []
    for (case, plat_name, ranks), runs in samples.items():
        row = {
            "model": "-".join(map(str, case.sizes)),
            "sync": case.sync,
            "epochs": case.epochs,
            "samples": case.samples,
            "platform": plat_name,
            "ranks": ranks,
            "rounds": len(runs),
            "runs": [g["run"] for g in runs],
            "train_seconds_rounds": [g["train_seconds"] for g in runs],  # how much identical launches differ
        }
        for field in ("train_seconds", "compute_seconds", "communication_seconds", "analytic_seconds", "simulated_seconds", "in_loop_excess_seconds"):
            values = [g[field] for g in runs if field in g]
            if values:
                row[field] = statistics.median(values)
        predicted = row.get("simulated_seconds", row["analytic_seconds"])
        row["error"] = predicted / row["train_seconds"] - 1
        row["analytic_error"] = row["analytic_seconds"] / row["train_seconds"] - 1
        rows.append(row)
    if not rows:
        raise UserError("validation made no measurement")
    return rows
