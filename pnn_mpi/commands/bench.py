"""``python -m pnn_mpi bench``: what a training step and a sync cost, beside references.

Absolute times drift on shared machines, so every figure is measured in the
same run as a reference doing the same arithmetic the plain way, interleaved
with it window by window and taken as the best of several windows, and
printed as a ratio: the trainer's step against the bare numpy matrix products
it contains (mini-batch) or a straightforward per-sample numpy loop (batch 1,
also for the batch-1 kernels), and the trainer's parameter sync against a bare
in-place Allreduce of the same buffer (what each adds to a loop of SGD-like
updates, and back to back: see ``_sync_seconds``). A mini-batch size also gets
a "whole run" row: whole epochs through the trainer's own loop (shuffling,
batching, loss bookkeeping, stop checks, the per-epoch sync; no scoring)
against the bare step, measured in the same interleaved windows; and a "step
overhead" row: the step against the least any numpy step must do besides its
products (gather the batch from the slice, then update every parameter in
numpy's two passes), which bounds the step-to-products ratio from above. All ranks measure at once,
so per-rank figures include the sharing of cores that a real run has. Each
rank's memory is broken down so that RSS can be checked against its parts.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..common.errors import UserError
from ..common.files import write_atomically
from ..common.wording import os_reason, plural
from ..data import datasets
from ..nn.evaluate import to_inputs
from ..nn.kernels import SampleStepper, numba_available
from ..nn.network import parameter_count
from ..nn.optim import SGD
from ..parallel.comm import Communicator, World
from ..training.config import DTYPES, TrainConfig, settled
from ..training.options import Parser, positive_int
from ..training.rank_data import RankData
from ..training.train import Hooks, LoopState, Run, build_network, end_epoch, one_step, train_epoch

T = TypeVar("T")
PIXELS = 784
SAMPLES = 4096  # each rank's stand-in slice


def _sample_images(world, n: int) -> tuple[np.ndarray, np.ndarray]:
    """This rank's slice of real MNIST when it can be found, else MNIST-like noise.

    The sparsity of real digits (about 19% of pixels non-zero) matters to
    kernels that skip zero pixels, so real data is preferred.
    """
    try:
        spec = datasets.get_spec("mnist")
        directory = datasets.locate("mnist")
        start = (world.rank * n) % max(datasets.split_count(spec, directory, "train") - n, 1)
        images, labels = datasets.load_split(spec, directory, "train", start, start + n)
    except UserError:
        rng = np.random.default_rng(world.rank)
        images = (rng.random((n, PIXELS)) < 0.19) * rng.integers(1, 256, (n, PIXELS))
        labels = rng.integers(0, 10, n)
    return to_inputs(images.reshape(n, -1).astype(np.uint8), np.float32), labels.astype(np.intp)


def _best_rates(world, seconds: float, repeats: int, runs: dict[str, Callable[[], int]], collective: frozenset[str] = frozenset()) -> dict[str, float]:
    """Units per second of each run (which returns how many units it did), best of ``repeats`` windows.

    The runs take turns window by window, so a burst of load on a shared machine
    hits them alike; every window starts at a barrier, so all ranks measure at once.
    A run named in ``collective`` holds collectives of its own, so every rank must
    call it equally often: rank 0's clock decides, after each call, for all ranks.
    """
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            world.barrier()
            done, began = 0, time.perf_counter()
            while _window_open(world, time.perf_counter() - began < seconds, name in collective):
                done += run()
            best[name] = max(best[name], done / (time.perf_counter() - began))
    return best


def _window_open(world, open_here: bool, together: bool) -> bool:
    """Whether a timing window goes on: this rank's own clock, or rank 0's for every rank alike."""
    return world.bcast(open_here) if together else open_here


def _bench_data(world: Communicator, x: np.ndarray, y: np.ndarray) -> RankData:
    """Every rank's stand-in slice as the trainer takes it (no test set: scoring is not measured)."""
    sizes = world.allgather(len(y))
    return RankData(
        directory=Path("."),
        train_total=sum(sizes),
        slice_sizes=sizes,
        start=0,
        x=x,
        y=y,
        test_images=np.zeros((0, x.shape[1]), np.uint8),
        test_labels=np.zeros(0, np.intp),
        test_total=0,
        image_shape=(28, 28),
        classes=max(world.allgather(int(y.max()))) + 1,
        load_seconds=0.0,
    )


def _trainer(cfg: TrainConfig, world: Communicator, data: RankData) -> tuple[Run, LoopState]:
    state = LoopState.start(cfg, world.rank, data)
    return Run.prepare(cfg, world, data, state, Hooks(), log=lambda _: None), state


def _step_run(cfg: TrainConfig, world: Communicator, data: RankData, kernel: str = "generic") -> Callable[[], int]:
    """The trainer's step (``train.one_step``: gather, forward, backward, SGD) on the next batch of a fixed order;
    ``kernel`` "numba" makes a mini-batch step the fused one (nn/fused.py).

    A local step: under the ``grad`` schedule the step would hold an Allreduce, which the sync rows measure apart.
    """
    run, state = _trainer(replace(cfg, kernel=kernel, shuffle=False, sync="epoch"), world, data)
    steps = len(data.y) // run.plan.batch
    at = [0]

    def step() -> int:
        s = at[0] = (at[0] + 1) % steps
        one_step(run, state, s, settled(cfg.lr))
        return run.plan.batch

    return step


def _epoch_run(cfg: TrainConfig, world: Communicator, data: RankData) -> Callable[[], int]:
    """A whole training epoch as ``train`` runs it: shuffling, batching, loss bookkeeping, the checks
    for stop requests, the per-epoch parameter sync and the meeting at its end; no scoring."""
    run, state = _trainer(replace(cfg, sync="epoch", epochs=2**31 - 1, eval_every=0), world, data)
    epoch = [0]

    def whole() -> int:
        train_epoch(run, state, epoch[0], settled(cfg.lr))
        end_epoch(run, state, epoch[0])
        epoch[0] += 1
        return len(data.y)

    return whole


def _kernel_run(cfg: TrainConfig, x, y, backend: str, chunk: int = 256) -> tuple[Callable[[], int], float]:
    """(run, seconds to set up and make the first call): ``chunk`` batch-1 steps per call through ``kernels``.

    The set-up (numba's compile or cache load, the numpy backend's sparse index) is not timed.
    """
    net = build_network(cfg, x.shape[1], int(y.max()) + 1)
    opt = SGD(net.params, cfg.momentum)
    began = time.perf_counter()
    stepper = SampleStepper(net, x, backend)
    order = np.arange(len(y))
    at = [0]

    def run() -> int:
        s = at[0]
        at[0] = (s + chunk) % (len(y) - chunk)
        stepper.run(opt.velocity, y, order, s, s + chunk, settled(cfg.lr), cfg.momentum)
        return chunk

    stepper.run(opt.velocity, y, order, 0, 1, settled(cfg.lr), cfg.momentum)
    return run, time.perf_counter() - began


def _matmul_run(sizes: tuple[int, ...], batch: int, dtype) -> Callable[[], int]:
    """The bare matrix products of one step: forward, weight gradients, back-propagated errors.

    Written with ``np.dot`` into preallocated outputs, the cheapest numpy form of them.
    """
    rng = np.random.default_rng(0)
    acts = [rng.random((batch, n)).astype(dtype) for n in sizes]
    weights = [rng.random((a, b)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    grads = [np.empty_like(w) for w in weights]
    outs = [np.empty((batch, n), dtype) for n in sizes]

    def run() -> int:
        for layer, w in enumerate(weights):
            np.dot(acts[layer], w, out=outs[layer + 1])
        for layer in range(len(weights) - 1, -1, -1):
            np.dot(acts[layer].T, acts[layer + 1], out=grads[layer])
            if layer:
                np.dot(acts[layer + 1], weights[layer].T, out=outs[layer])
        return batch

    return run


def _floor_run(sizes: tuple[int, ...], batch: int, x: np.ndarray, momentum: float) -> Callable[[], int]:
    """The bare matrix products plus what no numpy step can skip: gathering the batch's rows from
    the slice, and the SGD update of every parameter (two passes, four with momentum)."""
    products = _matmul_run(sizes, batch, x.dtype)
    params = np.zeros(parameter_count(sizes), x.dtype)
    grads = np.zeros_like(params)
    opt = SGD(params, momentum)
    rows = np.empty((batch, x.shape[1]), x.dtype)
    order = np.random.default_rng(0).permutation(len(x))
    steps = len(x) // batch
    at = [0]

    def run() -> int:
        s = at[0] = (at[0] + 1) % steps
        x.take(order[s * batch : (s + 1) * batch], 0, rows, "clip")
        products()
        opt.step(params, grads, 1.0)  # zeros: the same passes over memory, and no denormals
        return batch

    return run


def _naive_run(x, y, hidden: int, classes: int, lr: float) -> Callable[[], int]:
    """A straightforward per-sample numpy loop for one hidden layer (matmul, outer product, update)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.05, (x.shape[1], hidden)).astype(x.dtype)
    w2 = rng.normal(0, 0.05, (hidden, classes)).astype(x.dtype)
    b1, b2 = np.zeros(hidden, x.dtype), np.zeros(classes, x.dtype)
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

    return run


def _sync_seconds(world, size: int, dtype, calls: int, repeats: int) -> dict[str, float]:
    """Seconds per call on ``size`` values, best of ``repeats`` timings of ``calls`` calls, all interleaved.

    "average" is the trainer's ``average_``, "allreduce" a bare in-place Allreduce,
    each back to back; "step+average" and "step+allreduce" are the same after an
    SGD-like update of the buffer, and "step" that update alone. The difference
    matters: the Allreduce leaves the buffer written by other ranks through shared
    memory, out of this core's cache; ``average_``'s divide pays for fetching it
    back, which a bare Allreduce never does, but a training step after it then
    would. Net of the step, the two show what a sync adds to training.
    """
    buf = np.ones(size, dtype=dtype)
    small = np.full(size, 1e-6, dtype=dtype)

    def step() -> None:
        buf.__isub__(small)

    def bare() -> None:
        world.sum_(buf)  # World.sum_ is one in-place Allreduce and nothing else

    def ours() -> None:
        world.average_(buf)

    def step_average() -> None:
        step()
        ours()

    def step_allreduce() -> None:
        step()
        bare()

    candidates = {"average": ours, "allreduce": bare, "step": step, "step+average": step_average, "step+allreduce": step_allreduce}
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeats):
        for name, call in candidates.items():
            world.barrier()
            began = time.perf_counter()
            for _ in range(calls):
                call()
            best[name] = min(best[name], (time.perf_counter() - began) / calls)
            buf.fill(1.0)
    return best


def _memory() -> dict[str, int]:
    """This process's resident memory in bytes: all of it, and the part backed by files
    (shared libraries, which ranks on one machine share). Linux; elsewhere the peak."""
    try:
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle if line.startswith(("VmRSS", "RssFile")))
        return {"rss": int(fields["VmRSS"].split()[0]) * 1024, "file": int(fields["RssFile"].split()[0]) * 1024}
    except (OSError, KeyError, ValueError):
        return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "file": 0}


def _release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc), so that RSS shows what is alive."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _parser() -> Parser:
    p = Parser(
        prog="python -m pnn_mpi bench",
        description="Measure samples/s of a training step and the cost of a parameter sync, each beside a "
        "reference doing the same arithmetic the plain way in the same run (best of interleaved "
        "windows; ratio = pnn_mpi / reference), and break down each rank's memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Batch 1 is also measured through the batch-1 kernels (numpy, and numba when it is installed); "
        "a mini-batch through the fused numba step (--kernel numba) when numba is installed. Run under mpiexec to measure at several ranks.",
    )
    p.add_argument("--hidden", type=positive_int, nargs="+", default=[128], metavar="N", help="hidden layer widths")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 32], metavar="B", help="batch sizes to measure")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum of the measured steps (0 lets batch-1 kernels update sparsely)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="inputs and parameters")
    p.add_argument("--seconds", type=float, default=0.3, help="length of one timing window")
    p.add_argument("--repeats", type=positive_int, default=5, help="timing windows per candidate; the best counts")
    p.add_argument("--sync-calls", type=positive_int, default=50, help="Allreduce calls per timing of a sync")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE (rank 0)")
    return p


@dataclass
class Table:
    """The rows and notes a bench run prints, each row averaged over the ranks."""

    world: Communicator
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numba_bytes: int = 0  # resident memory the numba kernel added

    def add(self, what: str, ours: float, reference: float, reference_is: str, unit: str = "samples/s per rank") -> None:
        self.rows.append(
            {
                "what": what,
                "unit": unit,
                "value": statistics.fmean(self.world.allgather(ours)),
                "reference": statistics.fmean(self.world.allgather(reference)),
                "reference_is": reference_is,
            }
        )


def main(argv: list[str], world: Communicator | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 <= args.momentum < 1:
        raise UserError(f"--momentum {args.momentum}: expected a value in [0, 1)")
    world = world or World()
    baseline = _memory()["rss"]  # interpreter, numpy, mpi4py and MPI, before any data
    x, y = _sample_images(world, SAMPLES)
    data = _bench_data(world, x.astype(args.dtype, copy=False), y)
    sizes = (PIXELS, *args.hidden, data.classes)
    table = Table(world)
    for batch in args.batch_sizes:
        _measure_batch(args, data, sizes, batch, table)
    params = build_network(TrainConfig(hidden=tuple(args.hidden), dtype=args.dtype), PIXELS, data.classes).params
    _measure_sync(args, params, table)
    _release_freed_memory()
    memory = world.allgather({"baseline": baseline, "slice": data.x.nbytes + data.y.nbytes, "params": params.nbytes, "numba": table.numba_bytes, **_memory()})
    if world.rank == 0:
        _print(world, args, sizes, table.rows, table.notes, memory)
        if args.json:
            record = {
                "ranks": world.size,
                "mpi": world.library(),
                "network": list(sizes),
                "dtype": args.dtype,
                "momentum": args.momentum,
                "rows": table.rows,
                "notes": table.notes,
                "memory_bytes": memory,
                "resident_mib": [m["rss"] / 2**20 for m in memory],
            }
            try:
                write_atomically(args.json, json.dumps(record, indent=2).encode())
            except OSError as exc:
                raise UserError(f"--json {args.json}: cannot write there ({os_reason(exc)})") from None
    return 0


def _measure_batch(args: argparse.Namespace, data: RankData, sizes: tuple[int, ...], batch: int, table: Table) -> None:
    """The rows of one batch size: the step (and with numba the fused step) against its reference, the
    batch-1 kernels, the whole run against the step."""
    world, x, y = table.world, data.x, data.y
    cfg = TrainConfig(hidden=tuple(args.hidden), batch_size=batch, momentum=args.momentum, lr=0.01, dtype=args.dtype)
    runs = {"step": _step_run(cfg, world, data)}
    if batch == 1 and len(args.hidden) == 1:
        runs["reference"], what = _naive_run(x, y, args.hidden[0], data.classes, 0.01), "per-sample numpy loop"
    else:
        runs["reference"], what = _matmul_run(sizes, batch, np.dtype(args.dtype)), "bare matrix products"
    if batch > 1:
        runs["whole run"] = _epoch_run(cfg, world, data)
        runs["floor"] = _floor_run(sizes, batch, x, args.momentum)
        if numba_available():
            runs["fused"] = _with_numba(table, lambda: _step_run(cfg, world, data, "numba"))
            runs["whole run, numba"] = _epoch_run(replace(cfg, kernel="numba"), world, data)
    if batch == 1:
        runs["numpy"], _ = _kernel_run(cfg, x, y, "numpy")
        if numba_available():
            runs["numba"], first = _with_numba(table, lambda: _kernel_run(cfg, x, y, "numba"))
            table.notes.append(f"numba kernel ready in {max(world.allgather(first)):.2f} s (compiled, or loaded from numba's cache)")
        else:
            table.notes.append("numba is not installed: no numba row (pip install numba, or the fast extra)")
    rates = _best_rates(world, args.seconds, args.repeats, runs, collective=frozenset({"whole run", "whole run, numba"}))
    del runs
    table.add(f"train step, batch {batch}", rates["step"], rates["reference"], what)
    if "fused" in rates:
        table.add(f"train step, batch {batch}, numba", rates["fused"], rates["reference"], what)
    for backend in ("numpy", "numba"):
        if backend in rates:
            table.add(f"batch-1 kernel, {backend}", rates[backend], rates["reference"], what)
    if "floor" in rates:
        table.add(f"step overhead, batch {batch}", rates["step"], rates["floor"], "bare products + batch gather + SGD update")
    if "whole run" in rates:
        table.add(f"whole run, batch {batch}", rates["whole run"], rates["step"], "train step alone (epochs: shuffle, steps, loss, sync)")
    if "whole run, numba" in rates:
        table.add(f"whole run, batch {batch}, numba", rates["whole run, numba"], rates["fused"], "numba train step alone (its steps run many to a call)")


def _with_numba(table: Table, build: Callable[[], T]) -> T:
    """``build()``, which loads numba kernels: the resident memory it adds counts as numba's."""
    _release_freed_memory()
    before = _memory()["rss"]
    built = build()
    _release_freed_memory()
    table.numba_bytes += _memory()["rss"] - before
    return built


def _measure_sync(args: argparse.Namespace, params: np.ndarray, table: Table) -> None:
    world = table.world
    if not world.mpi:
        table.notes.append("no MPI communicator: no sync row")
        return
    # Training's average carries the momentum (the default MOMENTUM, whatever --momentum the steps here
    # take) with the parameters: one buffer of twice their size (SGD.beside).
    size = 2 * params.size
    seconds = _sync_seconds(world, size, np.dtype(args.dtype), args.sync_calls, args.repeats)
    t = {k: max(world.allgather(v)) * 1e6 for k, v in seconds.items()}
    table.add(
        f"parameter sync (parameters and momentum: {size:,} {args.dtype})",
        t["step+average"] - t["step"],
        t["step+allreduce"] - t["step"],
        "bare in-place Allreduce, in a training loop",
        unit="µs per sync",
    )
    table.add("parameter sync, back to back", t["average"], t["allreduce"], "bare in-place Allreduce, back to back", unit="µs per sync")


MEMORY_COLUMNS = (
    ("baseline", "interpreter, numpy, mpi4py and MPI, before any data"),
    ("slice", "this rank's inputs and labels"),
    ("params", "one copy of the parameters"),
    ("numba", "growth when the numba kernel loaded"),
    ("RSS", "resident memory after freed heap is returned"),
    ("files", "of RSS: shared libraries and the like, one copy in memory for all ranks"),
    ("rest", "RSS less baseline, slice and numba (bench's networks and code loaded since)"),
)


def _print(world, args, sizes, rows, notes, memory) -> None:
    print(
        f"pnn_mpi bench: {plural(world.size, 'rank')} ({world.library()}), network {'-'.join(map(str, sizes))}, "
        f"{args.dtype}, momentum {args.momentum:g}, {os.cpu_count()} CPUs; best of {args.repeats} interleaved windows"
    )
    print(f"{'measurement':<34} {'pnn_mpi':>14} {'reference':>14} {'ratio':>7}  unit / reference")
    for r in rows:
        print(f"{r['what']:<34} {r['value']:>14,.2f} {r['reference']:>14,.2f} {r['value'] / r['reference']:>7.2f}  {r['unit']} / {r['reference_is']}")
    for note in notes:
        print(f"note: {note}")
    mib = 2**20
    print("memory per rank, MiB:")
    for column, meaning in MEMORY_COLUMNS:
        print(f"  {column:<8}  {meaning}")
    print(f"{'rank':>4} {'baseline':>9} {'slice':>7} {'params':>7} {'numba':>7} {'RSS':>7} {'files':>7} {'rest':>7}")
    for rank, m in enumerate(memory):
        rest = m["rss"] - m["baseline"] - m["slice"] - m["numba"]
        print(
            f"{rank:>4} {m['baseline'] / mib:>9.1f} {m['slice'] / mib:>7.1f} {m['params'] / mib:>7.2f} {m['numba'] / mib:>7.1f} "
            f"{m['rss'] / mib:>7.1f} {m['file'] / mib:>7.1f} {rest / mib:>7.1f} = {rest / m['params']:.0f} parameter copies"
        )
