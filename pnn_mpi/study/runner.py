"""Running a study's points one after another, resumably.

A point whose run folder already holds its complete metrics is skipped; every
other point is launched. A point that fails is recorded (status, error line,
its stderr kept in the run folder) and the study goes on: one bad
combination must not cost the rest of a long study. ``results.csv`` is
rewritten after every point, so an interrupted study keeps what it measured.

SIGTERM or SIGUSR1 (a batch system's warning) stops the study: the running
point is passed SIGUSR1, checkpoints and exits, no further point starts, and
the next run of the study resumes that point where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..common.errors import STOP_EXIT_CODE
from ..common.wording import plural
from ..parallel.signals import StopRequest
from . import launch
from .grid import Study
from .progress import Estimate, label, line
from .results import (
    FAILED,
    OK,
    STDERR,
    STDOUT,
    STOPPED,
    TIMEOUT,
    Result,
    clear_attempt,
    error_line,
    finished_metrics,
    read_launch,
    run_dir,
    tail,
    write_csv,
    write_launch,
)


def run_study(study: Study, results: Path, launcher: list[str], env: dict, log: Callable[[str], None] = print) -> list[Result]:
    points = list(study.points)
    done = {p.id: finished_metrics(run_dir(results, p), p) for p in points}
    pending = [p for p in points if done[p.id] is None]
    log(
        f"study {study.title}: {len(points)} points in {plural(len(study.grids), 'grid')}, "
        f"{len(points) - len(pending)} already done, {len(pending)} to launch; results in {results}"
    )
    estimate = Estimate()
    stop = StopRequest().install()
    outcomes: list[Result] = []
    for index, point in enumerate(points, 1):
        folder = run_dir(results, point)
        what = label(point, study.grid(point.grid).varying)
        earlier = done[point.id]
        if earlier is not None:
            outcome = Result(point, OK, earlier, read_launch(folder).get("wall_seconds"), reused=True)
            text = f"{earlier['test_accuracy']:.1%}, done before (skipped)"
        elif stop():
            break  # stopped between two launches: the rest waits for the next run
        else:
            pending.remove(point)
            outcome = launch_point(study, point, folder, launcher, env, stop)
            if outcome.wall_seconds is not None:  # a launch always has one
                estimate.record(point, outcome.wall_seconds)
            text = _describe(outcome)
        outcomes.append(outcome)
        write_csv(results / "results.csv", outcomes)
        log(line(index, len(points), what, text, estimate.seconds_left(pending) if pending else None))
        if outcome.status == STOPPED:
            break
    return outcomes


def launch_point(study: Study, point, folder: Path, launcher: list[str], env: dict, stop=lambda: None) -> Result:
    folder.mkdir(parents=True, exist_ok=True)
    clear_attempt(folder)
    command = launch.launch_command(launcher, point.ranks, point.flags, folder)
    began = time.time()
    outcome = launch.run_command(command, env, study.timeout, folder / STDOUT, folder / STDERR, stop)
    metrics = finished_metrics(folder, point)
    stderr = _read(folder / STDERR)
    if outcome.returncode == 0 and metrics is not None:
        status, error = OK, ""
    elif outcome.returncode == STOP_EXIT_CODE:
        status, error = STOPPED, "stopped by a signal; its checkpoint resumes on the next run of the study"
    else:
        status = TIMEOUT if outcome.timed_out else FAILED
        error = error_line(stderr) or f"exit status {outcome.returncode}"
        if status == TIMEOUT:
            error = f"killed after {study.timeout:g} s: {error}"
        elif outcome.returncode == 0:
            error = f"exit status 0 but no complete metrics.json: {error}"
    write_launch(
        folder,
        {
            "point": point.id,
            "command": command,
            "returncode": outcome.returncode,
            "status": status,
            "wall_seconds": outcome.wall_seconds,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(began)),
            "error": error,
        },
    )
    return Result(point, status, metrics if status == OK else None, outcome.wall_seconds, error, stderr_tail="" if status == OK else tail(stderr))


def _describe(result: Result) -> str:
    if result.ok:
        return f"{(result.metrics or {})['test_accuracy']:.1%} in {result.wall_seconds:.1f} s"
    return f"{result.status.upper()} after {result.wall_seconds:.1f} s: {result.error}"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
