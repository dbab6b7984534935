"""``python -m pnn_mpi bench``: what a training step and a sync cost, beside references.

Absolute times drift on shared machines, so every figure is measured in the
same run as a reference doing the same arithmetic the plain way, and printed
as a ratio: the trainer's step against the bare numpy matrix products it
contains (mini-batch) or a straightforward per-sample numpy loop (batch 1),
and the trainer's parameter sync against a bare in-place Allreduce of the
same buffer. All ranks measure at once, so per-rank figures include the
sharing of cores that a real run has.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import numpy as np

from .cli import Parser, _positive_int
from .comm import World
from .config import DTYPES, TrainConfig
from .errors import UserError
from .optim import SGD
from .train import build_network, gradients

PIXELS = 784


def _sample_images(world: World, n: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's slice of real MNIST when it can be found, else MNIST-like noise.

    The sparsity of real digits (about 19% of pixels non-zero) matters to
    kernels that skip zero pixels, so real data is preferred.
    """
    from . import datasets
    from .evaluate import to_inputs

    try:
        spec = datasets.get_spec("mnist")
        directory = datasets.locate("mnist")
        start = (world.rank * n) % max(datasets.split_count(spec, directory, "train") - n, 1)
        images, labels = datasets.load_split(spec, directory, "train", start, start + n)
    except UserError:
        rng = np.random.default_rng(world.rank)
        images = (rng.random((n, PIXELS)) < 0.19) * rng.integers(1, 256, (n, PIXELS))
        labels = rng.integers(0, 10, n)
    return to_inputs(images.astype(np.uint8), np.float32), labels.astype(np.intp)


def _rate(world: World, seconds: float, run: Callable[[], int], repeats: int = 3) -> float:
    """Units per second of ``run`` (which returns how many units it did), best of ``repeats``.

    Every rank measures at the same time; each timing window starts at a barrier.
    """
    best = 0.0
    for _ in range(repeats):
        world.barrier()
        done, began = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds:
            done += run()
        best = max(best, done / elapsed)
    return best


def _step_rate(world, cfg: TrainConfig, x, y, seconds: float) -> float:
    net = build_network(cfg, x.shape[1])
    opt = SGD(net.params, cfg.momentum)
    batch = int(cfg.batch_size)
    ws = net.workspace(batch)
    order = np.arange(len(y))
    steps = len(y) // batch
    at = [0]

    def run() -> int:
        s = at[0] = (at[0] + 1) % steps
        gradients(net, ws, x, y, order[s * batch : (s + 1) * batch], 1.0 / batch)
        opt.step(net.params, net.grads, cfg.lr)
        return batch

    return _rate(world, seconds, run)


def _matmul_rate(world, sizes: tuple[int, ...], batch: int, dtype, seconds: float) -> float:
    """Samples/s of the bare matrix products of one step: forward, weight gradients, back-propagated errors."""
    rng = np.random.default_rng(0)
    acts = [rng.random((batch, n)).astype(dtype) for n in sizes]
    weights = [rng.random((a, b)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    grads = [np.empty_like(w) for w in weights]
    outs = [np.empty((batch, n), dtype) for n in sizes]

    def run() -> int:
        for layer, w in enumerate(weights):
            np.matmul(acts[layer], w, out=outs[layer + 1])
        for layer in range(len(weights) - 1, -1, -1):
            np.matmul(acts[layer].T, acts[layer + 1], out=grads[layer])
            if layer:
                np.matmul(acts[layer + 1], weights[layer].T, out=outs[layer])
        return batch

    return _rate(world, seconds, run)


def _naive_rate(world, x, y, hidden: int, lr: float, seconds: float) -> float:
    """Samples/s of a straightforward per-sample numpy loop for one hidden layer (matmul, outer product, update)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.05, (x.shape[1], hidden)).astype(x.dtype)
    w2 = rng.normal(0, 0.05, (hidden, 10)).astype(x.dtype)
    b1, b2 = np.zeros(hidden, x.dtype), np.zeros(10, x.dtype)
    at = [0]

    def run() -> int:
        i = at[0] = (at[0] + 1) % len(y)
        h = np.maximum(x[i] @ w1 + b1, 0)
        o = h @ w2 + b2
        p = np.exp(o - o.max())
        p /= p.sum()
        p[y[i]] -= 1
        d1 = (w2 @ p) * (h > 0)
        w2[...] -= lr * np.outer(h, p)
        b2[...] -= lr * p
        w1[...] -= lr * np.outer(x[i], d1)
        b1[...] -= lr * d1
        return 1

    return _rate(world, seconds, run)


def _sync_seconds(world: World, size: int, dtype, calls: int, repeats: int) -> tuple[float, float]:
    """(median seconds of the trainer's average_, of a bare in-place Allreduce) on ``size`` values."""
    from mpi4py import MPI

    buf = np.ones(size, dtype=dtype)
    ours, bare = [], []
    for _ in range(repeats):
        for timings, call in ((ours, lambda: world.average_(buf)), (bare, lambda: world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM))):
            world.barrier()
            began = time.perf_counter()
            for _ in range(calls):
                call()
            timings.append((time.perf_counter() - began) / calls)
            buf.fill(1.0)
    return statistics.median(ours), statistics.median(bare)


def _resident_mib() -> float:
    """This process's resident memory now, in MiB (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    p = Parser(prog="python -m pnn_mpi bench", description=__doc__.split("\n\n")[0].strip("`. ") + ".",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=[128], metavar="N", help="hidden layer widths")
    p.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 32], metavar="B", help="batch sizes to measure")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--seconds", type=float, default=1.0, help="length of one timing window (each is repeated 3 times)")
    p.add_argument("--sync-calls", type=_positive_int, default=50, help="Allreduce calls per timing of a sync")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE (rank 0)")
    args = p.parse_args(argv)
    world = World()
    x, y = _sample_images(world, 4096)
    x = x.astype(args.dtype)
    sizes = (PIXELS, *args.hidden, 10)
    rows = []
    for batch in args.batch_sizes:
        cfg = TrainConfig(hidden=tuple(args.hidden), batch_size=batch, momentum=0.0, lr=0.01, dtype=args.dtype)
        ours = _step_rate(world, cfg, x, y, args.seconds)
        if batch == 1 and len(args.hidden) == 1:
            ref, what = _naive_rate(world, x, y, args.hidden[0], 0.01, args.seconds), "per-sample numpy loop"
        else:
            ref, what = _matmul_rate(world, sizes, batch, np.dtype(args.dtype), args.seconds), "bare matrix products"
        rows.append({"what": f"train step, batch {batch}", "unit": "samples/s per rank",
                     "value": statistics.fmean(world.allgather(ours)), "reference": statistics.fmean(world.allgather(ref)), "reference_is": what})
    params = build_network(TrainConfig(hidden=tuple(args.hidden), dtype=args.dtype), PIXELS).params.size
    ours, bare = _sync_seconds(world, params, np.dtype(args.dtype), args.sync_calls, 5)
    rows.append({"what": f"parameter sync ({params:,} {args.dtype})", "unit": "ms per sync",
                 "value": max(world.allgather(ours)) * 1e3, "reference": max(world.allgather(bare)) * 1e3, "reference_is": "bare in-place Allreduce"})
    memory = world.allgather(_resident_mib())
    if world.rank == 0:
        print(f"pnn_mpi bench: {world.size} rank{'s' * (world.size > 1)} ({world.library()}), network {'-'.join(map(str, sizes))}, {args.dtype}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'measurement':<34} {'pnn_mpi':>14} {'reference':>14} {'ratio':>7}  unit / reference")
        for r in rows:
            print(f"{r['what']:<34} {r['value']:>14,.2f} {r['reference']:>14,.2f} {r['value'] / r['reference']:>7.2f}  {r['unit']} / {r['reference_is']}")
        print(f"resident memory per rank: {min(memory):.0f}-{max(memory):.0f} MiB")
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"ranks": world.size, "mpi": world.library(), "rows": rows, "resident_mib": memory}, handle, indent=2)
    return 0
