"""What a point leaves behind: its run folder, its row of ``results.csv``.

A run folder (RESULTS/runs/POINT) holds the trainer's ``metrics.json`` and
``model.npz``, and the study's ``launch.json`` (command, exit status, wall
time), ``stdout.txt`` and ``stderr.txt``. A point counts as finished only when
its ``metrics.json`` is complete *and* records the configuration and ranks the
grid asks for now, so editing the grid reruns exactly the points it changed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import UserError
from ..common.files import write_atomically
from ..common.structured_files import Anything, Items, MiB, Nullable, Number, Record, Table, Text, read_json
from .grid import Point, render

METRICS, LAUNCH, STDOUT, STDERR = "metrics.json", "launch.json", "stdout.txt", "stderr.txt"
CHECKPOINT = "checkpoint.npz"
_MEASURE = Nullable(Number(finite=False))
_SPREAD = Record({"mean": _MEASURE, "min": _MEASURE, "max": _MEASURE}, frozenset({"mean", "min", "max"}))
_CALLS = Record({"calls": Number(integer=True, low=0), "bytes": Number(integer=True, low=0)}, frozenset({"calls", "bytes"}))
# What row() reads from a run's metrics.json: a record without all of it is not a finished run.
RECORD = Record(
    {
        "test_accuracy": _MEASURE,
        "test_loss": _MEASURE,
        "test_confidence": _MEASURE,
        "local_test_accuracy": _SPREAD,
        "train_seconds": Number(low=0),
        "samples_per_second": _MEASURE,
        "samples_per_second_per_rank": _MEASURE,
        "timings": Record(
            {
                **{k: _SPREAD for k in ("communication_seconds", "compute_seconds", "wait_seconds", "load_seconds", "evaluation_seconds")},
                "syncs": Number(integer=True, low=0),
            },
            frozenset({"communication_seconds", "compute_seconds", "wait_seconds", "load_seconds", "evaluation_seconds", "syncs"}),
        ),
        "allreduces_per_rank": Nullable(Record({k: _CALLS for k in ("total", "average", "gradient")}, frozenset({"total", "average", "gradient"}))),
        "epochs": Items(Anything()),
        "config": Table(Anything(), most=1024),
        "ranks": Number(integer=True, low=1),
    },
    frozenset(
        {
            "test_accuracy",
            "test_loss",
            "local_test_accuracy",
            "train_seconds",
            "samples_per_second",
            "samples_per_second_per_rank",
            "timings",
            "epochs",
            "config",
            "ranks",
        }
    ),
)
LAUNCH_RECORD = Record({"status": Text(100), "wall_seconds": Nullable(Number(low=0))})
OK, FAILED, TIMEOUT, STOPPED = "ok", "failed", "timeout", "stopped"
# Settings that change how a run is carried out, not what it computes: a finished run stays finished.
_NOT_RESULTS = ("out", "resume", "checkpoint_every", "expect_ranks")


@dataclass
class Result:
    point: Point
    status: str
    metrics: dict | None
    wall_seconds: float | None
    error: str = ""
    reused: bool = False  # finished by an earlier invocation
    stderr_tail: str = ""  # the last lines a failed launch wrote to stderr

    @property
    def ok(self) -> bool:
        return self.status == OK

    def number(self, column: str) -> float:
        """One numeric column of this run's row (nan when unknown)."""
        value = row(self).get(column)
        return float(value) if isinstance(value, (int, float)) else math.nan


def run_dir(results: Path, point: Point) -> Path:
    return Path(results) / "runs" / point.id


def finished_metrics(folder: Path, point: Point) -> dict | None:
    """The run's metrics if ``folder`` holds a complete record of exactly this point, else None."""
    try:
        record = read_json(Path(folder) / METRICS, RECORD, limit=256 * MiB)
    except UserError:  # missing, damaged, huge or of another shape: not finished, launched again
        return None
    config = record["config"]
    changed = [k for k, v in point.config.items() if k not in _NOT_RESULTS and config.get(k) != v]
    if record["ranks"] != point.ranks or changed:
        return None
    return record


def clear_attempt(folder: Path) -> None:
    """Remove what an earlier attempt left, so the folder reflects only the launch about to happen.

    The checkpoint of a launch that was stopped by a signal stays: the next
    launch resumes from it (every launch passes ``--resume``).
    """
    folder = Path(folder)
    keep_checkpoint = read_launch(folder).get("status") == STOPPED
    for name in (METRICS, "model.npz", LAUNCH, STDOUT, STDERR) + (() if keep_checkpoint else (CHECKPOINT,)):
        (folder / name).unlink(missing_ok=True)


def write_launch(folder: Path, record: dict) -> None:
    write_atomically(Path(folder) / LAUNCH, (json.dumps(record, indent=2) + "\n").encode())


def read_launch(folder: Path) -> dict:
    try:
        return read_json(Path(folder) / LAUNCH, LAUNCH_RECORD, limit=MiB)
    except UserError:  # no launch yet, or a damaged record: as if none
        return {}


def error_line(stderr: str) -> str:
    """The line that says what went wrong, skipping Open MPI's boxed notices and teardown noise."""
    mine: list[str] = []
    boxed: list[str] = []
    in_box = False
    for line in stderr.splitlines():
        text = line.strip()
        if len(text) > 20 and set(text) == {"-"}:
            in_box = not in_box
        elif text and not text.startswith("[warn] Epoll"):
            (boxed if in_box else mine).append(text)
    ours = [t for t in mine if t.startswith("pnn_mpi:")]
    for candidates in (ours, mine, boxed):
        if candidates:
            return candidates[-1]
    return ""


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# results.csv: identity, the configuration, then what came out
_ID_COLUMNS = ["point", "grid", "status", "repeat", "ranks"]
_OUT_COLUMNS = [
    "test_accuracy",
    "test_confidence",
    "local_accuracy_mean",
    "local_accuracy_min",
    "local_accuracy_max",
    "test_loss",
    "train_seconds",
    "communication_seconds",
    "compute_seconds",
    "wait_seconds",
    "load_seconds",
    "evaluation_seconds",
    "wall_seconds",
    "startup_seconds",
    "samples_per_second",
    "samples_per_second_per_rank",
    "syncs",
    "allreduces",  # per rank, every purpose (metrics.json allreduces_per_rank)
    "allreduce_bytes",
    "average_allreduces",
    "gradient_allreduces",
    "error",
]


def columns(results: list[Result]) -> list[str]:
    config = list(results[0].point.config) if results else []
    return _ID_COLUMNS + config + _OUT_COLUMNS


def row(result: Result) -> dict:
    """One run as a flat record: numbers stay numbers (the CSV writer formats them).

    Load and evaluation use the slowest rank (the job waits for it); start-up
    is what the launch cost beyond them and training: launcher, interpreters,
    imports, MPI initialisation, saving and teardown, approximately.
    """
    p = result.point
    out = {"point": p.id, "grid": p.grid, "status": result.status, "repeat": p.repeat, "ranks": p.ranks}
    out.update({k: render(v) if isinstance(v, (list, tuple)) else v for k, v in p.config.items()})
    out["wall_seconds"] = result.wall_seconds
    out["error"] = result.error
    m = result.metrics
    if m:
        t, local = m["timings"], m["local_test_accuracy"]
        out.update(
            test_accuracy=m["test_accuracy"],
            test_loss=m["test_loss"],
            test_confidence=m.get("test_confidence"),
            local_accuracy_mean=local["mean"],
            local_accuracy_min=local["min"],
            local_accuracy_max=local["max"],
            train_seconds=m["train_seconds"],
            communication_seconds=t["communication_seconds"]["mean"],
            compute_seconds=t["compute_seconds"]["mean"],
            wait_seconds=t["wait_seconds"]["mean"],
            load_seconds=t["load_seconds"]["max"],
            evaluation_seconds=t["evaluation_seconds"]["max"],
            samples_per_second=m["samples_per_second"],
            samples_per_second_per_rank=m["samples_per_second_per_rank"],
            syncs=t["syncs"],
        )
        counts = m.get("allreduces_per_rank")  # absent from runs made before it was recorded
        if counts:
            out.update(
                allreduces=counts["total"]["calls"],
                allreduce_bytes=counts["total"]["bytes"],
                average_allreduces=counts["average"]["calls"],
                gradient_allreduces=counts["gradient"]["calls"],
            )
        if result.wall_seconds is not None:
            out["startup_seconds"] = result.wall_seconds - m["train_seconds"] - out["load_seconds"] - out["evaluation_seconds"]
    return out


def write_csv(path: Path, results: list[Result]) -> None:
    """All rows so far, written whole and atomically after every point (an interrupted study keeps its table)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(results), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({k: _cell(v) for k, v in row(result).items()})
    write_atomically(Path(path), buffer.getvalue().encode())


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value
