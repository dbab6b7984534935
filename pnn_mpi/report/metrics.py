"""What a run tells its user: the summary lines and ``metrics.json``.

Everything here is computed on rank 0 from the gathered ``TrainResult``; the
same dictionary feeds the printed summary and the metrics file, so the two
can never disagree.
"""

from __future__ import annotations

import json
import platform
import socket
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..common.files import write_atomically
from ..common.version import __version__
from ..common.wording import plural
from ..nn.network import parameter_count
from ..training.config import TrainConfig
from ..training.identity import kernel_used
from ..training.rank_data import RankData
from ..training.train import TrainResult, early_stop_summary


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


PURPOSES = ("average", "gradient", "score", "check")  # train.Clock's Allreduce counters


def allreduce_counts(clock) -> dict:
    """Rank ``clock``'s Allreduces and the bytes of the buffers it passed, by purpose and in all.

    The same on every rank (every rank takes part in each), so rank 0's stand for all.
    """
    kinds = {k: {"calls": getattr(clock, f"{k}_allreduces"), "bytes": getattr(clock, f"{k}_bytes")} for k in PURPOSES}
    return {**kinds, "total": {"calls": sum(v["calls"] for v in kinds.values()), "bytes": sum(v["bytes"] for v in kinds.values())}}


def metrics(cfg: TrainConfig, result: TrainResult, data: RankData, ranks: int, mpi: dict[str, str], loads: list[float], peaks: list[float]) -> dict:
    """The whole record of a run, as stored in ``metrics.json``."""
    clocks = result.clocks
    syncs = clocks[0].syncs
    comm = [c.comm for c in clocks]
    throughput = result.samples_seen / result.train_seconds if result.train_seconds > 0 else float("nan")
    return {
        "pnn_mpi_version": __version__,
        "command": sys.argv,
        "config": cfg.as_dict(),
        "seed": cfg.seed,
        "ranks": ranks,
        "mpi_library": mpi["name"],
        "mpi_library_version": mpi["version"],
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "kernel": kernel_used(cfg),  # what --kernel (in "config") came to: numba, numpy or generic
        "dataset": {
            "name": cfg.dataset,
            "directory": str(data.directory),
            "train_samples": data.train_total,
            "test_samples": data.test_total,
            "slice_sizes": data.slice_sizes,
            "val_samples": data.val_total,
        },
        "network": {"sizes": list(result.net.sizes), "parameters": parameter_count(result.net.sizes)},
        "steps_per_epoch": result.steps_per_epoch,
        "test_accuracy": result.test_accuracy,
        "early_stop": early_stop_summary(cfg, result.epochs),  # the validation's best epoch (None without --val-size)
        "test_loss": result.test_loss,
        "test_confidence": result.test_confidence,
        "warnings": result.warnings,
        "local_test_accuracy": {**_spread(result.local_accuracies), "per_rank": result.local_accuracies},
        "train_seconds": result.train_seconds,
        "samples_per_second": throughput,
        "samples_per_second_per_rank": throughput / ranks,
        "timings": {
            "load_seconds": _spread(loads),
            "compute_seconds": _spread([c.compute for c in clocks]),
            "communication_seconds": _spread(comm),
            "wait_seconds": _spread([c.wait for c in clocks]),
            "evaluation_seconds": _spread([c.eval for c in clocks]),
            "syncs": syncs,
            "seconds_per_sync": statistics.fmean(comm) / syncs if syncs else None,
        },
        "allreduces_per_rank": allreduce_counts(clocks[0]),
        "peak_memory_mib": {**_spread(peaks), "per_rank": peaks},
        "epochs": [asdict(e) for e in result.epochs],
    }


def summary_lines(record: dict) -> list[str]:
    t = record["timings"]
    local = record["local_test_accuracy"]

    def split(name: str) -> str:
        return f"{t[name]['mean']:.2f}/{t[name]['max']:.2f}"

    per_sync = f", {t['seconds_per_sync'] * 1e3:.2f} ms each" if t["syncs"] else ""
    ranks = plural(record["ranks"], "rank")
    syncs = plural(t["syncs"], "sync")
    validation = []
    if record.get("early_stop"):
        e = record["early_stop"]
        stopped = f"; stopped early after epoch {e['stopped_after_epoch']}" if e["stopped_early"] else ""
        validation = [
            f"validation ({record['dataset']['val_samples']} held-out samples): best {e['best_val_accuracy']:.2%} after epoch {e['best_epoch']}{stopped}"
        ]
    return [
        *validation,
        f"parallel network: test accuracy {record['test_accuracy']:.2%}, confidence {record['test_confidence']:.2%} (loss {record['test_loss']:.4f})",
        f"local networks before averaging: mean {local['mean']:.2%}, min {local['min']:.2%}, max {local['max']:.2%} ({ranks})",
        f"train time {record['train_seconds']:.2f} s, {record['samples_per_second']:,.0f} samples/s ({record['samples_per_second_per_rank']:,.0f} per rank)",
        f"seconds per rank (mean/max): load {split('load_seconds')}, compute {split('compute_seconds')},"
        f" communication {split('communication_seconds')} ({syncs}{per_sync}), waiting {split('wait_seconds')},"
        f" evaluation {split('evaluation_seconds')}",
        allreduce_line(record["allreduces_per_rank"]),
        f"peak memory per rank {record['peak_memory_mib']['mean']:.0f} MiB (max {record['peak_memory_mib']['max']:.0f})",
    ]


def allreduce_line(counts: dict) -> str:
    """One line: every Allreduce a rank took part in, by purpose, with the megabytes it passed."""
    parts = ", ".join(f"{counts[k]['calls']} {k}" for k in PURPOSES if counts[k]["calls"])
    total = counts["total"]
    return f"Allreduces per rank: {total['calls']} ({parts or 'none'}), {total['bytes'] / 1e6:.1f} MB passed"


def write_metrics(path: Path, record: dict) -> None:
    write_atomically(Path(path), (json.dumps(record, indent=2, allow_nan=True) + "\n").encode())
