"""``python -m pnn_mpi.commands.readme_figures`` (``make readme-figures``): every figure the docs show, measured here.

A figure on a page is true of one machine on one day. This command re-measures
each of them with the command the page names, prints it with that command and
with the machine it ran on (cores, CPU, load), and says which page and section it
belongs to (``SHOWN_IN``), so a reader can check a figure and a maintainer can refresh it. The
study's table takes ~10 minutes: it is read from the last ``make study``
(results/default/report.md) unless ``--study`` runs it again.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..common.version import __version__
from ..study.machine import detect
from .launch import Request, command_line

PYTHON = [sys.executable, "-m", "pnn_mpi"]
OLD_DEFAULTS = ["--lr", "0.05", "--lr-schedule", "constant", "--warmup", "0", "--sync", "epoch"]  # as the docs' transcript names them

# Where each figure is shown: (page, section heading). tests/test_readme_figures.py checks that every heading is on its page.
SHOWN_IN = {
    "first run": ("docs/running.md", "A first run: what `make train` prints"),
    "defaults": ("docs/options.md", "Defaults that follow the gradient mode"),
    "tests": ("docs/development.md", "Tests"),
    "validation": ("docs/options.md", "A validation split and early stopping"),
    "progress": ("docs/options.md", "Progress inside long epochs"),
    "speed": ("docs/performance.md", "Speed: `make bench` and the PyTorch comparison"),
    "study": ("docs/science.md", "How the defaults were found"),
    "local": ("docs/science.md", "The paper's method by default: `--sync local`"),
}


def where(figure: str) -> str:
    """The page and section that show a figure, as its printed title names them."""
    page, heading = SHOWN_IN[figure]
    return f"{page}, '{heading}'"


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = " (shared: other work was running)" if load > 0.5 else ""
    return (
        f"machine: {platform.node()}, {detect().describe()}, Linux {platform.release()}, Python {platform.python_version()}, "
        f"pnn_mpi {__version__}; load average {load:.2f} at start{busy}"
    )


def _run(ranks: int, flags: Sequence[str], timeout: float = 1800) -> tuple[str, str]:
    """(the command as run, its stdout); a launch as ``pnn-mpi launch -n`` makes it."""
    command, added = command_line(Request(ranks=ranks, rest=[*flags, "--overwrite"]), os.environ)  # regenerating replaces the last figures' runs
    shown = shlex.join(["mpiexec", "-n", str(ranks), "python", "-m", "pnn_mpi", *flags]) if ranks > 1 else shlex.join(["python", "-m", "pnn_mpi", *flags])
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **added}, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        return shown, f"(failed with status {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''})\n"
    return shown, proc.stdout


def _accuracy(stdout: str) -> str:
    found = re.search(r"parallel network: test accuracy ([\d.]+%)", stdout)
    return found.group(1) if found else "?"


def section(title: str, command: str, body: str) -> None:
    print(f"\n== {title}\n$ {command}\n{body.rstrip()}", flush=True)


PROGRESS_RUN = ["--batch-size", "1", "--lr", "0.01", "--momentum", "0", "--lr-schedule", "constant", "--warmup", "0", "--sync", "epoch"]
PROGRESS_RUN += ["--kernel", "generic", "--epochs", "1", "--train-size", "20000", "--progress-every", "2"]


def training_figures(out: Path) -> None:
    """The figures of real training runs: the transcript, the default's accuracies, the end-to-end
    run, early stopping and the progress lines."""
    accuracies = {}
    for ranks in (1, 4, 16):
        command, stdout = _run(ranks, ["--out", str(out / f"default-n{ranks}")])
        accuracies[ranks] = _accuracy(stdout)
        if ranks == 4:
            section(f"{where('first run')}: the make train transcript (mpiexec -n 4, every option at its default)", command, stdout)
    runs = ", ".join(f"{accuracies[r]} at {r} rank{'s' * (r > 1)}" for r in (1, 4, 16))
    section(f"{where('defaults')}: default run, test accuracy of the parallel network", "the three runs above", runs)
    command, stdout = _run(4, ["--train-size", "20000", "--epochs", "3", "--seed", "1", "--out", str(out / "e2e")])
    section(f"{where('tests')}: the end-to-end test's run (>= 93% asserted)", command, f"test accuracy {_accuracy(stdout)}")
    command, stdout = _run(2, ["--val-size", "5000", "--early-stop", "2", "--epochs", "30", *OLD_DEFAULTS, "--out", str(out / "val")])
    kept = ("epoch", "validation", "early stop", "parallel")
    section(
        f"{where('validation')}: early stopping on 5,000 held-out samples", command, "\n".join(line for line in stdout.splitlines() if line.startswith(kept))
    )
    command, stdout = _run(1, [*PROGRESS_RUN, "--out", str(out / "progress")])
    section(where("progress"), command, "\n".join(line for line in stdout.splitlines() if line.startswith("epoch")))


def speed_figures() -> None:
    """bench at 2 ranks, and the PyTorch comparison when PyTorch is installed."""
    command, stdout = _run(2, ["bench"])
    section(f"{where('speed')}: make bench (2 ranks)", command, stdout)
    try:
        import torch  # noqa: F401
    except ImportError:
        section(f"{where('speed')}: pnn_mpi against PyTorch", "make torch-compare", "(PyTorch is not installed here: pip install torch)")
        return
    torch_run = [*PYTHON[:-1], "pnn_mpi.commands.torch_compare"]
    launch_words, added = command_line(Request(ranks=2, rest=[]), os.environ)
    proc = subprocess.run([*launch_words[:3], *torch_run], capture_output=True, text=True, env={**os.environ, **added}, timeout=1800)
    section(f"{where('speed')}: pnn_mpi against PyTorch", "mpiexec -n 2 python -m pnn_mpi.commands.torch_compare", proc.stdout)


def report_figure(shown_in: str, report: Path, command: str, what: str) -> None:
    """A study's tables, read from its last report (a study takes from ten minutes to most of an hour)."""
    if report.exists():
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.stat().st_mtime))
        section(f"{shown_in}: {what} (from {report}, written {stamp})", command, report.read_text())
    else:
        section(f"{shown_in}: {what}", command, f"(no {report} yet: run {command})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pnn_mpi.commands.readme_figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", action="store_true", help="run the study again (~10 min on 2 cores) instead of reading its last report")
    p.add_argument("--out", metavar="DIR", default="results/readme-figures", help="where the runs go (default: results/readme-figures)")
    args = p.parse_args(argv)
    began = time.monotonic()
    print(machine_line())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}; past 2 ranks a 2-core machine is oversubscribed")
    training_figures(Path(args.out))
    speed_figures()
    if args.study:
        subprocess.run([*PYTHON, "study", "--grid", "default"], check=False)
    report_figure(where("study"), Path("results/default/report.md"), "make study", "its table")
    report_figure(where("local"), Path("results/local/report.md"), "python -m pnn_mpi study --grid local", "its tables")
    print(f"\nall figures measured in {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
