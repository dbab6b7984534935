"""``python -m pnn_mpi study``: run a grid of real training launches and report on them.

The study answers the paper's questions on your machine: how accuracy holds
up as the data is split over more ranks under each sync schedule, what
speed-up the same total work gets, which activation and initialisation train
best, and how stochastic, mini-batch and full-batch training compare. Each
point of the grid is an ordinary ``mpiexec -n P python -m pnn_mpi ...`` launch,
so what the study measures is what a user gets. This module only strings the
steps together: grid -> launches -> results.csv -> figures -> report.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..common.errors import STOP_EXIT_CODE, UserError
from ..common.files import write_atomically
from ..common.wording import os_reason, plural
from ..data.datasets import locate
from ..training.options import Parser
from . import launch, machine, plots
from .figures import draw_figures
from .grid import STUDIES, Study, load_study, parse_override, shipped_grid
from .progress import Estimate, duration, label
from .report import write_report
from .results import STOPPED, finished_metrics, run_dir
from .runner import run_study


def build_parser() -> Parser:
    shipped = ", ".join(sorted(p.stem for p in STUDIES.glob("*.toml")))
    p = Parser(
        prog="python -m pnn_mpi study",
        description=(
            "Run a grid of training launches (mpiexec -n P python -m pnn_mpi ...), resumably, and write\n"
            "results.csv, figures and report.md. Rerunning skips every point already finished."
        ),
        epilog="exit status: 0 if every point succeeded, 1 if some failed (they are listed in report.md), 2 on a user error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--grid", default="default", metavar="FILE|NAME", help=f"the grid: a TOML file, or a grid shipped with pnn_mpi ({shipped}) (default: default)"
    )
    p.add_argument("--results", metavar="DIR", help="where results, figures, report and run folders go (default: results/GRID)")
    p.add_argument(
        "--launcher",
        metavar="COMMAND",
        help="'auto' (mpiexec, which reads a SLURM allocation itself; srun only where no mpiexec is found), 'mpiexec', 'srun', or any command such as "
        "'mpirun --bind-to none'; -n P is appended (default: the grid's [study] launcher, else auto)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a training flag (or ranks) for every point, over the grid's value, e.g. --set train-size=5000 (repeatable)",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GRID",
        help="also run this opt-in grid of the file (opt-in = true), e.g. --include long for the paper's long training (repeatable)",
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="seconds one launch may take (default: the grid's [study] timeout, else 1800)")
    p.add_argument("--dry-run", action="store_true", help="list the points and their commands; launch nothing, write nothing")
    p.add_argument("--no-plots", action="store_true", help="skip the figures (no matplotlib needed); results.csv and report.md are still written")
    return p


def grid_path(text: str) -> Path:
    path = Path(text)
    if path.is_file():
        return path
    shipped = shipped_grid(text)
    if shipped is None:
        names = ", ".join(sorted(p.stem for p in STUDIES.glob("*.toml")))
        raise UserError(f"--grid {text}: no such file, and no grid of that name ships with pnn_mpi ({names})")
    return shipped


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = grid_path(args.grid)
    study = load_study(path, dict(parse_override(item) for item in args.set), tuple(args.include))
    if args.timeout is not None:
        if not args.timeout > 0:
            raise UserError(f"--timeout {args.timeout}: expected a positive number of seconds")
        study = replace(study, timeout=args.timeout)
    results = Path(args.results) if args.results else Path("results") / path.stem
    env = launch.launch_env(os.environ, study.timeout)
    if args.dry_run:
        return _dry_run(study, results, args.launcher or study.launcher, env)

    launcher = launch.resolve_launcher(args.launcher or study.launcher, env)
    if not args.no_plots:
        plots.require()  # before an hour of launches, not after
    _check_data(study)
    try:
        results.mkdir(parents=True, exist_ok=True)
        write_atomically(results / "grid.toml", path.read_bytes())
    except OSError as exc:
        raise UserError(f"--results {results}: cannot write there ({os_reason(exc)})") from None

    outcomes = run_study(study, results, launcher, env)
    if len(outcomes) < len(study.points) or any(r.status == STOPPED for r in outcomes):
        print(f"study stopped by a signal after {len(outcomes)} of {len(study.points)} points; run the same command again to continue", file=sys.stderr)
        return STOP_EXIT_CODE
    found = machine.detect()  # through the module: tests replace detect
    figures = {} if args.no_plots else draw_figures(study, outcomes, found, results)
    command = [sys.executable, "-m", "pnn_mpi", "study", *argv]
    write_report(results / "report.md", study, outcomes, found, figures, command)
    failed = [r for r in outcomes if not r.ok]
    print(
        f"wrote {results / 'results.csv'}, {plural(len(figures), 'figure')} and {results / 'report.md'}"
        + (f"; {len(failed)} of {len(outcomes)} points failed (listed in the report)" if failed else "")
    )
    return 1 if failed else 0


def _check_data(study: Study) -> None:
    """Every dataset the grid names must be findable now, not at the first launch that needs it."""
    for dataset, data_dir in sorted({(p.config["dataset"], p.config["data_dir"]) for p in study.points}, key=str):
        locate(dataset, data_dir)


def _dry_run(study: Study, results: Path, choice, env: dict) -> int:
    try:
        launcher = launch.resolve_launcher(choice, env)
    except UserError as exc:
        print(f"note: {exc}")
        launcher = shlex.split(choice) if isinstance(choice, str) else list(choice or ["mpiexec"])
    points = list(study.points)
    pending = []
    print(f"study {study.title}: {len(points)} points; results would go to {results}")
    added = {k: v for k, v in env.items() if os.environ.get(k) != v}
    if added:  # without them the commands below fail as root, or past one rank per core, with Open MPI
        print("every launch runs with these settings (paste them first to run a command by hand):")
        print(f"    export {' '.join(f'{k}={shlex.quote(v)}' for k, v in added.items())}")
    for index, point in enumerate(points, 1):
        folder = run_dir(results, point)
        done = finished_metrics(folder, point) is not None
        if not done:
            pending.append(point)
        print(f"[{index}/{len(points)}] {label(point, study.grid(point.grid).varying)}{' (done, would be skipped)' if done else ''}")
        print(f"    {shlex.join(launch.launch_command(launcher, point.ranks, point.flags, folder))}")
    for name, count in study.left_out:
        print(f"opt-in grid {name} ({count} point{'s' * (count != 1)}) left out: add --include {name} to run it")
    if pending:
        print(
            f"{len(pending)} to launch; a rough estimate, from a 2-core development machine: about "
            f"{duration(Estimate().seconds_left(pending))} (the real run calibrates it as it goes)"
        )
    return 0
