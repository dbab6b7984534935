"""Replaying traces with SimGrid's SMPI: ``smpirun -replay ... smpireplaymain``.

SMPI replays the parameter Allreduce with Rabenseifner's algorithm (what its
``ompi`` selector, Open MPI's decision rules, picks for these sizes) and the
barrier by recursive doubling. The algorithms are named rather than left to
the selector because SimGrid 3.32's selector crashes replaying tiny Allreduces
(exit 134 at 16, 256, 1,024 ranks); the trainer's tiny stop/divergence check is
replayed as a barrier, the same pattern of messages (traces.py). SMPI takes
latencies and bandwidths as the platform states them (its default correction
factors were fitted to another cluster; ours come from our own calibration). Each phase of a run (an epoch, the final average) starts with all
ranks together, so each distinct phase is simulated once and multiplied by how
often it occurs. SimGrid is optional: ``available()`` says whether it is here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from ..common.errors import UserError
from . import model, traces
from .costs import Calibration
from .platforms import Platform
from .program import Phase, Run, phases

REPLAYER_PLACES = (
    "/usr/lib/x86_64-linux-gnu/simgrid/smpireplaymain",
    "/usr/lib/aarch64-linux-gnu/simgrid/smpireplaymain",
    "/usr/lib/simgrid/smpireplaymain",
    "/usr/local/lib/simgrid/smpireplaymain",
)
SMPI_CONFIG = (
    "--cfg=smpi/allreduce:rab_rdb",
    "--cfg=smpi/barrier:ompi_recursivedoubling",
    "--cfg=smpi/bw-factor:0:1",
    "--cfg=smpi/lat-factor:0:1",
    "--log=root.thres:warning",
    "--log=smpi_replay.thres:info",
)
_TIME = re.compile(r"Simulation time ([0-9.eE+-]+)")


@lru_cache(maxsize=1)
def tools() -> tuple[str, str] | None:
    """(smpirun, smpireplaymain), or None when SimGrid is not installed."""
    smpirun = shutil.which("smpirun")
    if not smpirun:
        return None
    found = os.environ.get("PNN_MPI_SMPIREPLAY") or next((p for p in REPLAYER_PLACES if os.access(p, os.X_OK)), None)
    if found is None:
        prefix = Path(smpirun).resolve().parent.parent
        found = next((str(p) for p in prefix.glob("lib*/**/smpireplaymain") if os.access(p, os.X_OK)), None)
    return (smpirun, found) if found else None


def available() -> bool:
    return tools() is not None


def replay(plat: Platform, ranks: int, listing: Path, work: Path) -> float:
    """Simulated seconds of one replay (the last rank to finish)."""
    found = tools()
    if found is None:
        raise UserError("SimGrid is not installed (apt-get install libsimgrid-dev)")
    smpirun, replayer = found
    platform_file = work / "platform.xml"
    if not platform_file.exists():
        platform_file.write_text(plat.xml)
    hostfile = work / f"hosts-{ranks}"
    hostfile.write_text(plat.hostfile(ranks))
    command = [
        smpirun,
        "-no-privatize",
        "-np",
        str(ranks),
        "-platform",
        str(platform_file),
        "-hostfile",
        str(hostfile),
        "-replay",
        str(listing),
        replayer,
        *SMPI_CONFIG,
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, timeout=3600)
    times = [float(t) for t in _TIME.findall(done.stdout + done.stderr)]
    if done.returncode != 0 or not times:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise UserError(f"smpirun failed on platform {plat.name} with {ranks} ranks (exit {done.returncode}): {' | '.join(tail)}")
    return max(times)


class Simulator:
    """Replays runs on one platform, remembering phases it has simulated already."""

    def __init__(self, plat: Platform, cal: Calibration, work: Path | None = None):
        self.plat, self.cal = plat, cal
        self._own = work is None
        self.work = Path(tempfile.mkdtemp(prefix="pnn-smpi-")) if work is None else work
        self.work.mkdir(parents=True, exist_ok=True)
        self._seen: dict[tuple, float] = {}
        self.replays = 0

    def phase_seconds(self, ranks: int, phase: Phase, run: Run) -> float:
        step = self.cal.step_cost(run.sizes, self.plat.rate(ranks))
        excess = model.in_loop_excess(run.with_ranks(ranks), self.plat, self.cal)
        key = (ranks, step, excess, phase.key())
        if key not in self._seen:
            folder = self.work / f"replay-{self.replays}"
            listing = traces.write(folder, phase, ranks, step, excess)
            self._seen[key] = replay(self.plat, ranks, listing, self.work)
            self.replays += 1
            shutil.rmtree(folder, ignore_errors=True)
        return self._seen[key]

    def predict(self, run: Run) -> float:
        """Simulated train seconds of ``run``."""
        return sum(self.phase_seconds(run.ranks, p, run) * p.repeat for p in phases(run))

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
