"""``python -m pnn_mpi scaling``: calibrate here, validate, and predict runs of 1 to 1,024 ranks.

Steps: measure this machine (or read ``--calibration FILE``), optionally
validate predictions against real launches (``--validate``), price the
default run for every sync schedule, model size and P on the prediction
platforms (SimGrid's SMPI when installed, else the analytic model alone, said
in one line), and write ``scaling.csv``, ``scaling.png`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..common.errors import UserError
from ..common.files import write_atomically
from . import measure, platforms, predict, report, simulate, validate
from .costs import Calibration


def _parser() -> argparse.ArgumentParser:
    from ..training.options import Parser, positive_int

    p = Parser(
        prog="python -m pnn_mpi scaling",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without SimGrid (apt-get install libsimgrid-dev) the analytic alpha-beta model predicts alone.",
    )
    p.add_argument("--out", default="results/scaling", metavar="DIR", help="where scaling.csv, scaling.png, report.md go (default: results/scaling)")
    p.add_argument(
        "--platform",
        action="append",
        metavar="FILE",
        help="a SimGrid platform of <cluster>s to predict on (repeatable; default: the built-in node, cluster-25g, cluster-100g)",
    )
    p.add_argument("--calibration", metavar="FILE", help="a calibration.json from an earlier run, instead of measuring now")
    p.add_argument("--from-timeline", metavar="FILE", help="take the compute between collectives from a --timeline trace of a real run (its model's step cost)")
    p.add_argument("--validate", action="store_true", help="also launch every configuration this machine can run and compare (minutes)")
    p.add_argument("--rounds", type=positive_int, default=3, metavar="N", help="validation rounds, each recalibrating first (default 3)")
    p.add_argument("--quick", action="store_true", help="a small version: short calibration, one model, epoch, local and grad, P = 1, 2, 16 (for CI)")
    p.add_argument("--analytic", action="store_true", help="skip SimGrid even when it is installed")
    p.add_argument("--no-tcp", action="store_true", help="do not make the two namespace nodes (no TCP calibration or validation)")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs of the predicted run (default 10)")
    p.add_argument("--samples", type=positive_int, default=60000, help="training samples of the predicted run (default 60000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    use_simgrid = simulate.available() and not args.analytic
    engine = _engine(use_simgrid, args.analytic)
    print(f"scaling: {engine}", flush=True)

    def calibrate(models=measure.calibrate.SIZES, folder: Path = out, estimator: str = "min", for_validation: bool = False, sync: str = "end") -> Calibration:
        return measure.run(
            folder,
            quick=args.quick,
            tcp=not args.no_tcp,
            log=lambda s: print(s, flush=True),
            models=models,
            estimator=estimator,
            for_validation=for_validation,
            sync=sync,
        )

    cal = Calibration.load(Path(args.calibration)) if args.calibration else None
    validation: list[dict] = []
    if args.validate:
        validation = validate.validate(
            lambda models, folder, sync: cal if cal is not None else calibrate(models, folder, "median", for_validation=True, sync=sync),
            args.rounds,
            args.quick,
            out / "validation-runs",
            log=lambda s: print(s, flush=True),
            tcp=not args.no_tcp,
        )
    if cal is None:
        cal = calibrate()
    if args.from_timeline:
        from .from_timeline import apply

        cal, note = apply(cal, Path(args.from_timeline))
        print(f"scaling: {note}")
    plats = _platforms(args, cal)
    models = predict.MODELS[:1] if args.quick else predict.MODELS
    syncs = predict.QUICK_SYNCS if args.quick else predict.SYNCS
    ranks = (1, 2, 16) if args.quick else predict.RANKS
    rows = predict.sweep(cal, plats, models, syncs, ranks, args.samples, args.epochs, use_simgrid, log=lambda s: print(s, flush=True))
    report.add_speedups(rows)
    measured_rows = _measured_rows(validation)
    report.write_csv(out / "scaling.csv", rows + measured_rows)
    plotted = report.plot(out / "scaling.png", rows, [r for r in measured_rows if r["platform"] == "thisvm"], [p.name for p in plats])
    text = report.markdown(rows, validation, cal, f"Engine: {engine}.", plotted)
    write_atomically(out / "report.md", text.encode())
    if validation:
        write_atomically(out / "validation.json", (json.dumps(validation, indent=2) + "\n").encode())
    print(f"scaling: wrote {out / 'scaling.csv'}, {out / 'report.md'}" + (f", {out / 'scaling.png'}" if plotted else " (no plot: pip install matplotlib)"))
    return 0


def _engine(use_simgrid: bool, analytic: bool) -> str:
    """What predicts, in words, for the first line and the report."""
    if use_simgrid:
        return "simulated with SimGrid SMPI (smpireplaymain), cross-checked by the analytic alpha-beta model"
    if not analytic:
        return "SimGrid not found (apt-get install libsimgrid-dev): analytic alpha-beta model only"
    return "analytic alpha-beta model only (--analytic)"


def _platforms(args, cal: Calibration) -> list:
    """The platforms to predict: the --platform files, else the built-in ones the calibration can describe."""
    if args.platform:
        return [platforms.load(Path(f)) for f in args.platform]
    names = [n for n in platforms.PREDICTION_PLATFORMS if n == "node" or "tcp" in cal.links]
    if len(names) < len(platforms.PREDICTION_PLATFORMS):
        print("scaling: no TCP calibration, so only the single-node platform is predicted")
    return [platforms.built_in(n, cal) for n in names]


def _measured_rows(validation: list[dict]) -> list[dict]:
    """The validated configurations as scaling.csv rows, with measured speed-ups where P = 1 was measured too."""
    rows = []
    ones = {(v["model"], v["sync"], v["epochs"]): v["train_seconds"] for v in validation if v["ranks"] == 1}
    for v in validation:
        row = {
            "ranks": v["ranks"],
            "sync": v["sync"],
            "model": v["model"],
            "platform": v["platform"],
            "predicted_seconds": v.get("simulated_seconds", v["analytic_seconds"]),
            "measured_seconds": v["train_seconds"],
            "analytic_seconds": v["analytic_seconds"],
            "engine": "simgrid" if "simulated_seconds" in v else "analytic",
        }
        one = ones.get((v["model"], v["sync"], v["epochs"]))
        if one:
            row["speedup"] = one / v["train_seconds"]
            row["efficiency"] = row["speedup"] / v["ranks"]
        rows.append(row)
    return rows
