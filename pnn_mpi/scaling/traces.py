"""SimGrid time-independent traces of a run: what SMPI's ``smpireplaymain`` replays.

One file per rank, one action a line: ``R init``, ``R compute FLOPS``,
``R allreduce COUNT COMP_FLOPS TYPE``, ``R barrier``, ``R sleep SECONDS``, ``R finalize``. Compute
between two collectives is one action (the calibrated seconds of the rank's
steps, times the reference speed of a ``1Gf`` host); the Allreduce's own
arithmetic is already inside the fitted bandwidth, so its COMP_FLOPS is 0.
TYPE is SMPI's code for the element type (5 = MPI_FLOAT, 0 = MPI_DOUBLE). The
trainer's check (an Allreduce of two float64 flags) is written as a barrier:
recursive doubling moves the same tiny messages between the same partners, and
SimGrid 3.32 crashes replaying tiny Allreduces (simulate.py). Where a parameter
Allreduce between real steps was measured to cost more than its price
(``model.in_loop_excess``), every rank sleeps that excess before it: a sleep
holds no core, so ranks that share one do not stretch it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .costs import StepCost
from .platforms import REFERENCE_SPEED
from .program import Allreduce, Compute, Phase

SMPI_TYPE = {4: 5, 8: 0}  # itemsize -> MPI_FLOAT, MPI_DOUBLE


def rank_lines(phase: Phase, ranks: int, step: StepCost, excess: float = 0.0) -> list[list[str]]:
    """Each rank's trace of one phase, as lines without the rank number."""
    body: list[list[str]] = [[] for _ in range(ranks)]
    for e in phase.events:
        if isinstance(e, Compute):
            flops = (step.seconds(e.steps, e.samples) + e.empty_steps * step.per_step) * REFERENCE_SPEED
            for r, f in enumerate(np.asarray(flops, dtype=float)):
                if f > 0:
                    body[r].append(f"compute {f:.6g}")
        elif isinstance(e, Allreduce):
            line = "barrier" if e.purpose == "check" else f"allreduce {e.count} 0 {SMPI_TYPE[e.itemsize]}"
            for lines in body:
                if excess > 0 and e.purpose != "check":
                    lines.append(f"sleep {excess:.6g}")
                lines.append(line)
    return body


def write(folder: Path, phase: Phase, ranks: int, step: StepCost, excess: float = 0.0) -> Path:
    """Write the phase's traces into ``folder``; returns the file that lists them (smpirun's -replay)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for r, lines in enumerate(rank_lines(phase, ranks, step, excess)):
        path = folder / f"rank{r}.txt"
        path.write_text("".join(f"{r} {line}\n" for line in ["init", *lines, "finalize"]))
        names.append(str(path))
    listing = folder / "traces.txt"
    listing.write_text("".join(f"{n}\n" for n in names))
    return listing
