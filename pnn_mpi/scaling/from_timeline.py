"""A real run's timeline as the source of the simulator's compute: ``scaling --from-timeline FILE``.

A ``--timeline`` trace holds, per rank and epoch, the compute span with the
collectives inside it; less those, it is the compute between collectives that
the simulator replays. Its seconds per step replace the calibrated step cost of
that model (scaled along the calibrated line, so the per-step and per-sample
parts keep their ratio): the loaded-core cost when the run had two or more
ranks, the idle-core cost when it had one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import UserError
from ..timeline import compute_between_collectives
from .costs import Calibration, StepCost


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
    try:
        trace = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--from-timeline {path}: not a readable trace ({exc})") from None
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
