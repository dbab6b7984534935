"""``python -m pnn_mpi.commands.timeline_overhead``: what ``--timeline`` costs the default run.

Launches the default run (``mpiexec -n P python -m pnn_mpi``, every option at
its default) in pairs, once without and once with ``--timeline``, the order
alternating from pair to pair so that a burst of load on a shared machine hits
both alike, and prints each run's train seconds (from its metrics.json), the
median of each side and the overhead: median(on) / median(off) - 1, and the
median of the pairs' own ratios. On a shared machine those launches differ by
more than the timeline costs, so the cost is also measured directly: the time
``Phases`` takes per span with the timeline's listener against without it,
times the spans the run recorded, as a share of its train time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from ..study.launch import launch_env, resolve_launcher, run_command


def one_run(ranks: int, folder: Path, timeline: bool, extra: list[str]) -> float:
    env = launch_env(os.environ, 600)
    out = folder / "run"
    flags = ["--out", str(out), *extra] + (["--timeline", str(folder / "timeline.json")] if timeline else [])
    command = [*resolve_launcher(None, env), "-n", str(ranks), sys.executable, "-m", "pnn_mpi", *flags]
    folder.mkdir(parents=True)
    outcome = run_command(command, env, 600, folder / "stdout.txt", folder / "stderr.txt")
    if outcome.returncode != 0:
        raise SystemExit(f"pnn_mpi: error: {' '.join(command)} failed: {(folder / 'stderr.txt').read_text()[-500:]}")
    return json.loads((out / "metrics.json").read_text())["train_seconds"]


def listener_cost(spans: int = 200_000, repeats: int = 7) -> tuple[float, float]:
    """Seconds ``Phases`` takes per span without and with the timeline's listener (best of ``repeats``, interleaved)."""
    import time

    from ..parallel.comm import SerialWorld
    from ..report.timeline import Timeline
    from ..training.train import Clock, Phases

    def per_span(listen: bool) -> float:
        best = float("inf")
        for _ in range(1):
            phases = Phases(Clock())
            if listen:
                phases.listeners.append(Timeline(SerialWorld()).listener)
            began = time.perf_counter()
            for _ in range(spans):
                phases.begin("comm")
                phases.end()
            best = min(best, (time.perf_counter() - began) / spans)
        return best

    off, on = float("inf"), float("inf")
    for _ in range(repeats):
        off, on = min(off, per_span(False)), min(on, per_span(True))
    return off, on


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pnn_mpi.commands.timeline_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4, help="ranks of the default run (default 4, as make train)")
    p.add_argument("--pairs", type=int, default=5, help="on/off pairs (default 5)")
    p.add_argument("extra", nargs="*", help="training flags after --, e.g. -- --sync grad")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pnn-timeline-overhead-"))
    on, off, ratios, spans = [], [], [], []
    try:
        for i in range(args.pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {}
            for timeline in order:
                got[timeline] = one_run(args.ranks, work / f"{i}-{'on' if timeline else 'off'}", timeline, args.extra)
            trace = json.loads((work / f"{i}-on" / "timeline.json").read_text())
            spans.append(max(sum(e["pid"] == r and e["ph"] == "X" for e in trace["traceEvents"]) for r in range(args.ranks)))
            off.append(got[False])
            on.append(got[True])
            ratios.append(got[True] / got[False])
            print(f"pair {i + 1}: off {got[False]:.3f} s, on {got[True]:.3f} s ({ratios[-1] - 1:+.2%})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"{args.ranks} ranks, {args.pairs} pairs, flags: {' '.join(args.extra) or '(defaults)'}")
    print(
        f"median train seconds: off {m_off:.3f}, on {m_on:.3f}: overhead {m_on / m_off - 1:+.2%} (median of pair ratios {statistics.median(ratios) - 1:+.2%})"
    )
    bare, listened = listener_cost()
    cost, most = max(listened - bare, 0.0), max(spans)
    print(
        f"direct: a phase span costs {bare * 1e9:.0f} ns without the timeline, {listened * 1e9:.0f} ns with it; "
        f"{cost * 1e9:.0f} ns x {most} spans on the busiest rank = {cost * most * 1e3:.3f} ms, {cost * most / m_off:.4%} of the median train time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
