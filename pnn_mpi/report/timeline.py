"""``--timeline FILE``: where every rank's time goes, as one Chrome trace-event file.

Each rank listens to the training loop's ``Phases`` (the one place phases begin
and end) and keeps every span it reports: an epoch's compute (the steps between
two epoch ends, one span, with the collectives inside it as child spans), the
sync Allreduces, the stop/divergence checks, the wait for slower ranks at the
epoch's end, scoring, checkpoint writes; ``run.py`` adds the data load and the
signals received. At the end rank 0 gathers every rank's spans and writes one
JSON file (``traceEvents``, one process row per rank) that opens in Perfetto
(ui.perfetto.dev) or chrome://tracing.

Clocks: each rank's perf_counter has its own origin (and on another node its
own clock), so at the start every rank leaves a few barriers and notes the
time; the median gap to rank 0 over those barriers is its offset, and all
events are written on rank 0's clock (the spread left is about one barrier's
skew, microseconds on one host).

Off by default: without ``--timeline`` no listener is registered and the loop
runs as before. A span costs one tuple appended to a list.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from pathlib import Path

from ..common.files import write_atomically

# Phase names in the loop -> what the trace calls them.
NAMES = {
    "load": "data load",
    "compute": "compute",
    "comm": "sync allreduce",
    "check": "stop/divergence check",
    "wait": "wait for slower ranks",
    "eval": "scoring",
    "checkpoint": "checkpoint write",
}
CLOCKED = ("compute", "comm", "wait", "eval")  # the phases metrics.json totals; others charge the clocked one around them
ALIGN_BARRIERS = 5


class Timeline:
    """One rank's recorder; ``listener`` is what ``Phases`` calls."""

    def __init__(self, world):
        self.world = world
        self.spans: list[tuple[str, float, float]] = []
        self.instants: list[tuple[str, float]] = []
        self.offset = self._offset()

    def _offset(self) -> float:
        """Seconds to add to this rank's perf_counter to read rank 0's (barrier-based)."""
        marks = []
        for _ in range(ALIGN_BARRIERS):
            self.world.barrier()
            marks.append(time.perf_counter())
        zero = self.world.bcast(marks)
        return statistics.median(z - m for z, m in zip(zero, marks))

    def listener(self, phase: str, began: float, ended: float) -> None:
        self.spans.append((phase, began, ended))

    def span(self, phase: str, began: float, ended: float) -> None:
        self.spans.append((phase, began, ended))

    def instant(self, name: str, at: float) -> None:
        self.instants.append((name, at))

    def gather_and_write(self, path: Path, meta: dict) -> dict | None:
        """Collective: every rank's spans to rank 0, which writes ``path``; returns the trace on rank 0."""
        mine = {"rank": self.world.rank, "host": socket.gethostname(), "offset": self.offset, "spans": self.spans, "instants": self.instants}
        every = self.world.gather(mine)
        if self.world.rank != 0:
            return None
        assert every is not None
        trace = chrome_trace(every, meta)
        write_atomically(Path(path), (json.dumps(trace) + "\n").encode())
        return trace


def chrome_trace(ranks: list[dict], meta: dict) -> dict:
    """The trace-event JSON: complete ("X") events in microseconds on rank 0's clock, from its first event."""
    origin = min((s[1] + r["offset"] for r in ranks for s in r["spans"]), default=0.0)
    events: list[dict] = []
    for r in ranks:
        pid = r["rank"]
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": f"rank {pid} ({r['host']})"}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        epoch = 1
        for phase, began, ended in sorted(r["spans"], key=lambda s: (s[1], -s[2])):
            events.append(
                {
                    "name": NAMES.get(phase, phase),
                    "cat": phase,
                    "ph": "X",
                    "pid": pid,
                    "tid": 0,
                    "ts": round((began + r["offset"] - origin) * 1e6, 3),
                    "dur": round((ended - began) * 1e6, 3),
                    "args": {"epoch": epoch},
                }
            )
            if phase == "wait":
                epoch += 1
        for name, at in r["instants"]:
            events.append({"name": name, "cat": "signal", "ph": "i", "s": "p", "pid": pid, "tid": 0, "ts": round((at + r["offset"] - origin) * 1e6, 3)})
    other = {**meta, "clock_offsets_seconds": [r["offset"] for r in ranks], "hosts": [r["host"] for r in ranks]}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def phase_sums(trace: dict) -> list[dict[str, float]]:
    """Per rank, the seconds of each clocked phase as the loop's clock charges them (nested clocked spans
    are taken out of the span around them, as ``Phases`` pauses the outer one)."""
    by_rank: dict[int, list[dict]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            by_rank.setdefault(e["pid"], []).append(e)
    sums = []
    for pid in sorted(by_rank):
        spans = sorted(by_rank[pid], key=lambda e: (e["ts"], -e["dur"]))
        total = dict.fromkeys(CLOCKED, 0.0)
        open_: list[dict] = []  # enclosing clocked spans
        for e in spans:
            while open_ and e["ts"] >= open_[-1]["ts"] + open_[-1]["dur"]:
                open_.pop()
            if e["cat"] in CLOCKED:
                total[e["cat"]] += e["dur"] / 1e6
                if open_:
                    total[open_[-1]["cat"]] -= e["dur"] / 1e6
                open_.append(e)
        sums.append(total)
    return sums


def compute_between_collectives(trace: dict) -> list[list[float]]:
    """Per rank, the compute seconds of each epoch (its compute span less the collectives inside it):
    what the simulator needs from a real run (``scaling --from-timeline``)."""
    by_rank: dict[int, list[float]] = {}
    inside: dict[int, float] = {}  # where the rank's current compute span ends
    for e in sorted((e for e in trace["traceEvents"] if e["ph"] == "X"), key=lambda e: (e["pid"], e["ts"], -e["dur"])):
        pid = e["pid"]
        if e["cat"] == "compute":
            by_rank.setdefault(pid, []).append(e["dur"] / 1e6)
            inside[pid] = e["ts"] + e["dur"]
        elif e["cat"] in ("comm", "check") and e["ts"] < inside.get(pid, -1.0):
            by_rank[pid][-1] -= e["dur"] / 1e6
    return [by_rank[p] for p in sorted(by_rank)]
