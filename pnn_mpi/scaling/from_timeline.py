"""A real run's timeline as the source of the simulator's compute: ``scaling --from-timeline FILE``.

A ``--timeline`` trace holds, per rank and epoch, the compute span with the
collectives inside it; less those, it is the compute between collectives that
the simulator replays. Its seconds per step replace the calibrated step cost of
that model (scaled along the calibrated line, so the per-step and per-sample
parts keep their ratio): the loaded-core cost when the run had two or more
ranks, the idle-core cost when it had one.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..common.errors import UserError
from ..common.structured_files import Items, MiB, Number, Record, Text, check, read_json
from ..common.wording import quote
from ..report.timeline import compute_between_collectives
from .costs import Calibration, StepCost

_COUNT = Number(integer=True, low=1, high=1 << 40)
_RUN = Record(
    {
        "sizes": Items(_COUNT, most=64, fewest=2),
        "batch_size": _COUNT,
        "slice_sizes": Items(Number(integer=True, low=0, high=1 << 40), most=1 << 20, fewest=1),
        "epochs": Number(integer=True, low=1, high=1 << 20),
        "ranks": Number(integer=True, low=1, high=1 << 20),
    },
    frozenset({"sizes", "batch_size", "slice_sizes", "epochs", "ranks"}),
)
# A trace as compute_between_collectives reads it; a complete ("X") event also needs a span.
TRACE = Record(
    {"otherData": _RUN, "traceEvents": Items(Record({"ph": Text(8), "pid": Number(integer=True)}, frozenset({"ph", "pid"})))},
    frozenset({"otherData", "traceEvents"}),
)
_SPAN = Record({"ts": Number(), "dur": Number(low=0), "cat": Text(100)}, frozenset({"ts", "dur", "cat"}))


def seconds_per_step(trace: dict) -> tuple[tuple[int, ...], int, float]:
    """(model sizes, ranks, compute seconds per step of the slowest rank) of the traced run."""
    meta = trace.get("otherData", {})
    try:
        sizes = tuple(int(v) for v in meta["sizes"])
        batch = int(meta["batch_size"])
        steps = math.ceil(max(meta["slice_sizes"]) / batch)
        epochs = int(meta["epochs"])
        ranks = int(meta["ranks"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"the timeline does not describe its run ({exc}); write it with this version's --timeline") from None
    per_rank = compute_between_collectives(trace)
    if not per_rank or any(len(epochs_) != epochs for epochs_ in per_rank):
        raise UserError(f"the timeline has not one compute span per epoch for every rank (expected {epochs})")
    slowest = sum(max(rank[e] for rank in per_rank) for e in range(epochs))
    return sizes, ranks, slowest / (epochs * steps)


def apply(cal: Calibration, path: Path) -> tuple[Calibration, str]:
    """``cal`` with the traced model's step cost taken from the timeline at ``path``; and a line saying so."""
    label = f"--from-timeline {quote(path)}"
    trace = read_json(path, TRACE, label, limit=512 * MiB)
    for i, event in enumerate(trace["traceEvents"]):
        if event["ph"] == "X":
            check(event, _SPAN, label, f"traceEvents[{i}]")
    sizes, ranks, per_step = seconds_per_step(trace)
    batch = int(trace["otherData"]["batch_size"])
    label = "-".join(map(str, sizes))
    which = "all" if ranks > 1 else "one"
    known = cal.compute.get(label, {})
    if which in known:
        base = known[which]
        factor = per_step / base.seconds(1, batch)
        cost = StepCost(base.per_step * factor, base.per_sample * factor)
    else:
        cost = StepCost(0.0, per_step / batch)
    compute = {**cal.compute, label: {**known, which: cost, **({} if known else {"one": cost, "all": cost})}}
    note = f"compute of {label} from the timeline {path} ({ranks} rank{'s' * (ranks > 1)}): {per_step * 1e3:.3f} ms per step of {batch}"
    updated = Calibration(cal.machine, cal.cores, compute, cal.links, {**cal.measured, "from_timeline": note}, cal.in_loop)
    return updated, note
