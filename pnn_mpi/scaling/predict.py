"""The prediction sweep: every (model, sync, platform, P) of the default run, priced twice.

SimGrid's replay gives the predicted seconds when it is installed; the analytic
model always runs beside it, as the cross-check and for the breakdown into
compute, latency and bandwidth that the report's "what bounds it" reads.
"""

from __future__ import annotations

from ..parallel.sync import Sync
from ..training import defaults
from . import model, simulate
from .costs import Calibration
from .platforms import Platform
from .program import Run


def local_schedule(batch: int = Run.batch) -> str:
    """``local`` spelled as the trainer resolves it (``local:K:L``), so a row names the periods it priced:
    the mini-batch default when that is a local schedule, else ``local`` with its own K and L."""
    chosen = Sync.parse(defaults.default_sync(batch))
    return str(chosen if chosen.kind == "local" else Sync.parse("local"))


RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SYNCS = ("end", "epoch", "steps:20", local_schedule(), "grad")
QUICK_SYNCS = ("epoch", local_schedule(), "grad")  # what --quick (CI) sweeps
MODELS = ((784, 128, 10), (784, 800, 10))


def sweep(cal: Calibration, plats: list[Platform], models, syncs, ranks, samples: int, epochs: int, use_simgrid: bool, log=print) -> list[dict]:
    rows = []
    for plat in plats:
        sim = simulate.Simulator(plat, cal) if use_simgrid else None
        try:
            for sizes in models:
                for sync in syncs:
                    for p in ranks:
                        if p > samples:
                            continue
                        run = Run(tuple(sizes), samples, p, sync, epochs)
                        parts = model.predict(run, plat, cal)
                        row = {
                            "ranks": p,
                            "sync": sync,
                            "model": run.label,
                            "platform": plat.name,
                            "analytic_seconds": parts.total,
                            "compute_seconds": parts.compute,
                            "latency_seconds": parts.latency,
                            "bandwidth_seconds": parts.bandwidth,
                        }
                        if sim is not None:
                            row["predicted_seconds"], row["engine"] = sim.predict(run), "simgrid"
                        else:
                            row["predicted_seconds"], row["engine"] = parts.total, "analytic"
                        rows.append(row)
                    log(f"predicted {plat.name} {run.label} {sync}: P up to {max(ranks)}")
        finally:
            if sim is not None:
                sim.close()
    return rows
