"""Measuring this machine: the training step's cost and the Allreduce's, for the platforms.

Two measurements, each run by ``python -m pnn_mpi.scaling.calibrate`` under a
launcher and written as JSON by rank 0:

``compute``  the real training loop (``train.train`` on real MNIST slices, no
             scoring, ``--sync end``) at two batch sizes; the seconds per step
             of its second epoch give the line ``per_step + per_sample * b``. Run
             with one rank, then with as many ranks as cores, so both the idle
             and the loaded machine are known. Repeats interleave the batch
             sizes; the median and the least of them are kept (the machine is
             shared; ``measure.run`` picks which).
``allreduce`` in-place Allreduces of float32 buffers of sizes from 2 values to
             the larger model's parameters, timed back to back after a barrier,
             median and least per size; run with two ranks on one host
             (shared memory) or on two namespace nodes (TCP).
``in-loop``  the real training loop under ``--sync grad``: the seconds of one
             gradient Allreduce between real steps (the clock's communication
             over its syncs, averaged over the ranks: a rank that computed less
             waits longer in it), per model; run at each place the validation
             launches more than one rank.

``fit_link`` turns Allreduce timings into a link's latency and bandwidth by
least squares on the structure of the algorithm that will replay them
(``coefficients``), so the platform reproduces the two-rank measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .costs import Link, StepCost

BATCHES = (16, 32)  # a slice of 60,000/P samples takes batches of 32 and one of 16-32 at the end
SIZES = ("784-128-10", "784-800-10")
COUNTS = (2, 256, 2048, 16384, 65536, 101770, 262144, 636010)


def _sizes(label: str) -> tuple[int, ...]:
    return tuple(int(v) for v in label.split("-"))


def measure_compute(world, models, samples: int, repeats: int, sync: str = "end") -> dict:
    """Seconds per step of the real training loop on this rank, per model and batch size (median and least of repeats).

    Each repeat trains two epochs and times the second: the first also pays for
    what a run pays once (a fresh network's buffers faulted in, caches filled),
    which in a short run would pass for a per-step cost. ``sync`` is the
    schedule trained under (its Allreduces are not compute: the clock keeps
    them apart, and the second epoch's share of them comes off its seconds);
    a gradient step does a little more than a local one.
    """
    from ..training.config import TrainConfig
    from ..training.rank_data import load_rank_data
    from ..training.train import train
    from .program import Run, second_epoch_share

    timings: dict[str, dict[str, list[float]]] = {m: {str(b): [] for b in BATCHES} for m in models}
    loaded = {}
    for label in models:
        sizes = _sizes(label)
        base = TrainConfig(hidden=sizes[1:-1], train_size=samples * world.size, test_size=100, epochs=2, sync=sync, eval_every=0)
        loaded[label] = (base, load_rank_data(base, world))
    for _ in range(repeats):
        for label in models:
            base, data = loaded[label]
            for b in BATCHES:
                cfg = TrainConfig(**{**base.as_dict(), "hidden": base.hidden, "batch_size": b})
                result = train(cfg, world, data, log=lambda *_: None)
                clock = result.clocks[world.rank]
                first, second = result.epochs[0].train_seconds, result.epochs[1].train_seconds
                comm = clock.comm * second_epoch_share(Run(_sizes(label), data.train_total, world.size, sync, 2, b))
                timings[label][str(b)].append((second - first - comm) / result.steps_per_epoch)
    return {
        "median": {m: {b: statistics.median(v) for b, v in per.items()} for m, per in timings.items()},
        "min": {m: {b: min(v) for b, v in per.items()} for m, per in timings.items()},
    }


def measure_in_loop(world, models, samples: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per gradient Allreduce inside the real training loop (``--sync grad``, batch 32), per model and repeat."""
    from ..training.config import TrainConfig
    from ..training.rank_data import load_rank_data
    from ..training.train import train

    seen: dict[str, list[float]] = {m: [] for m in models}
    for label in models:
        sizes = _sizes(label)
        cfg = TrainConfig(hidden=sizes[1:-1], train_size=samples * world.size, test_size=100, epochs=1, sync="grad", eval_every=0, batch_size=32)
        data = load_rank_data(cfg, world)
        for _ in range(repeats):
            clock = train(cfg, world, data, log=lambda *_: None).clocks[world.rank]
            seen[label].append(clock.comm / max(clock.syncs, 1))
    return seen


def step_cost(per_batch: dict[str, float]) -> StepCost:
    """The line through the seconds per step at the two measured batch sizes."""
    (b1, t1), (b2, t2) = sorted((int(b), t) for b, t in per_batch.items())[:2]
    per_sample = max((t2 - t1) / (b2 - b1), 0.0)
    return StepCost(max(t1 - per_sample * b1, 0.0), per_sample)


def measure_allreduce(world, counts, repeats: int, budget: float = 0.05) -> dict[str, dict[str, float]]:
    """Seconds of one in-place float32 Allreduce, per count: median and least of the repeats (all ranks time together)."""
    from mpi4py import MPI

    comm = world.comm
    result: dict[str, dict[str, float]] = {"median": {}, "min": {}}
    for count in counts:
        buf = np.ones(count, dtype=np.float32)
        comm.Allreduce(MPI.IN_PLACE, buf)  # connections and buffers set up before timing
        began = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf)
        calls = int(comm.allreduce(max(1, min(200, budget / max(time.perf_counter() - began, 1e-6))), op=MPI.MIN))
        times = []
        for _ in range(repeats):
            comm.Barrier()
            began = time.perf_counter()
            for _ in range(calls):
                comm.Allreduce(MPI.IN_PLACE, buf)
            times.append((time.perf_counter() - began) / calls)
        result["median"][str(count)] = comm.allreduce(statistics.median(times), op=MPI.MAX)
        result["min"][str(count)] = comm.allreduce(min(times), op=MPI.MAX)
    return result


def fit_link(timings: dict[str, float], coefficients) -> Link:
    """Latency and bandwidth that best reproduce ``timings`` (count -> seconds, float32), relative least squares.

    ``coefficients(nbytes)`` gives (messages on the critical path, bytes on it)
    for a two-rank Allreduce under the replay's algorithm.
    """
    rows, rhs = [], []
    for count, seconds in timings.items():
        a, b = coefficients(int(count) * 4)
        rows.append([a / seconds, b / seconds])
        rhs.append(1.0)
    (alpha, beta), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    alpha = max(float(alpha), 1e-7)
    beta = max(float(beta), 1e-12)
    return Link(alpha, 1.0 / beta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pnn_mpi.scaling.calibrate", description="One calibration measurement (run under a launcher).")
    p.add_argument("what", choices=("compute", "allreduce", "in-loop"))
    p.add_argument("--out", required=True, help="JSON file rank 0 writes")
    p.add_argument("--models", nargs="+", default=list(SIZES))
    p.add_argument("--samples", type=int, default=16384, help="training samples per rank")
    p.add_argument("--counts", nargs="+", type=int, default=list(COUNTS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sync", default="end", help="the schedule the compute is measured under")
    args = p.parse_args(argv)
    from ..parallel.comm import World

    world = World()
    if args.what == "compute":
        mine = measure_compute(world, args.models, args.samples, args.repeats, args.sync)
        gathered = world.allgather(mine)
        # The slowest rank sets the pace of a synchronous run.
        slowest = {stat: {m: {b: max(g[stat][m][b] for g in gathered) for b in mine[stat][m]} for m in mine[stat]} for stat in mine}
        record = {"ranks": world.size, "seconds_per_step": slowest["median"], "seconds_per_step_min": slowest["min"]}
    elif args.what == "in-loop":
        per_rank = world.allgather(measure_in_loop(world, args.models, args.samples, args.repeats))
        # Ranks leave each Allreduce together, so one that computed faster waits longer in it: the
        # mean over ranks is what the Allreduce adds to a step the model prices at the mean compute.
        mean = {m: [statistics.fmean(g[m][i] for g in per_rank) for i in range(args.repeats)] for m in args.models}
        record = {
            "ranks": world.size,
            "seconds": {m: statistics.median(v) for m, v in mean.items()},
            "seconds_min": {m: min(v) for m, v in mean.items()},
        }
    else:
        from mpi4py import MPI

        timed = measure_allreduce(world, args.counts, args.repeats)
        record = {"ranks": world.size, "hosts": sorted(set(world.allgather(MPI.Get_processor_name()))), "seconds": timed["median"], "seconds_min": timed["min"]}
    if world.rank == 0:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
