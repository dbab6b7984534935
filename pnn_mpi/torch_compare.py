"""pnn_mpi against PyTorch on the same job: ``mpiexec -n P python -m pnn_mpi.torch_compare``.

An optional script (PyTorch is not a dependency, and the package never imports
this module). Both sides train the same MLP (784-128-10, relu, softmax +
cross-entropy, float32, the same initial weights) on the same MNIST slices with
the same batch, learning rate, momentum and epochs, one thread per rank:

(a) local SGD with one average at the end (pnn_mpi ``--sync end``; PyTorch: a
    plain training loop and one ``all_reduce`` over gloo when ranks > 1);
(b) gradients summed at every step (pnn_mpi ``--sync grad``; PyTorch:
    DistributedDataParallel over gloo).

pnn_mpi runs through its own trainer, ``pnn_mpi.train.train``, and is timed by
the training seconds it reports (epochs and syncs; loading and scoring
excluded). PyTorch is timed over the same span, from a barrier to a barrier.
The two alternate, ``--repeats`` times, and each keeps its best run. Printed:
samples/s over all ranks, the ratio, and the parallel network's test accuracy
as a check that both trained the same thing. The ranks' MPI rank and size set
up torch.distributed (tcp on 127.0.0.1, a port chosen by rank 0).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread per rank, as training
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from .comm import World  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .errors import UserError  # noqa: E402
from .options import Parser, positive_int  # noqa: E402
from .rank_data import load_rank_data  # noqa: E402
from .train import build_network, train  # noqa: E402
from .wording import plural  # noqa: E402

GOALS = {"end": 2.0, "grad": 4.0}  # pnn_mpi / PyTorch samples/s the project aims for


def _parser() -> Parser:
    p = Parser(prog="python -m pnn_mpi.torch_compare", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--epochs", type=positive_int, default=2)
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--train-size", type=positive_int, help="use only the first N training samples (default: all)")
    p.add_argument("--repeats", type=positive_int, default=2, help="runs of each side per mode; the best counts")
    p.add_argument("--modes", nargs="+", choices=list(GOALS), default=list(GOALS), help="end: local SGD, one average; grad: DDP-style")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torch_setup(world: World):
    """torch with one thread, and a gloo process group over the MPI ranks."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise UserError("PyTorch is not installed: pip install torch (a CPU build is enough)") from None
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    port = world.bcast(_free_port() if world.rank == 0 else None)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=world.rank, world_size=world.size)
    return torch, dist


def _torch_model(torch, cfg: TrainConfig, inputs: int, classes: int):
    """The MLP of ``cfg`` with pnn_mpi's initial weights (nn.Linear keeps W transposed)."""
    start = build_network(cfg, inputs, classes)
    model = torch.nn.Sequential(torch.nn.Linear(inputs, cfg.hidden[0]), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden[0], classes))
    with torch.no_grad():
        for linear, w, b in zip((model[0], model[2]), start.weights, start.biases):
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b.copy()))
    return model


def _torch_run(torch, dist, world: World, cfg: TrainConfig, data, mode: str) -> tuple[float, float]:
    """(samples/s over all ranks, parallel network's test accuracy) of PyTorch on this job."""
    model = _torch_model(torch, cfg, data.x.shape[1], data.classes)
    net = torch.nn.parallel.DistributedDataParallel(model) if mode == "grad" else model
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y.astype(np.int64))
    batch = int(cfg.batch_size)  # this tool's --batch-size is a number
    # DDP needs the same number of steps on every rank: the smallest slice's.
    steps = math.ceil(len(y) / batch) if mode == "end" else min(world.allgather(math.ceil(len(y) / batch)))
    shuffler = np.random.default_rng([cfg.seed, world.rank])
    order = np.arange(len(y))
    cross_entropy = torch.nn.functional.cross_entropy
    seen = 0
    world.barrier()
    began = time.perf_counter()
    for _ in range(cfg.epochs):
        shuffler.shuffle(order)
        picks = torch.from_numpy(order)
        for s in range(steps):
            idx = picks[s * batch : (s + 1) * batch]
            opt.zero_grad(set_to_none=True)
            cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            seen += len(idx)
    if mode == "end" and world.size > 1:
        with torch.no_grad():
            flat = torch.nn.utils.parameters_to_vector(model.parameters())
            dist.all_reduce(flat)
            flat /= world.size
            torch.nn.utils.vector_to_parameters(flat, model.parameters())
    world.barrier()
    seconds = time.perf_counter() - began
    total = sum(world.allgather(seen))
    with torch.no_grad():
        images = torch.from_numpy(data.test_images.reshape(len(data.test_images), -1).astype(np.float32) / 255.0)
        accuracy = float((model(images).argmax(dim=1).numpy() == data.test_labels).mean())
    return total / seconds, accuracy


def _pnn_run(world: World, cfg: TrainConfig, data) -> tuple[float, float]:
    """(samples/s over all ranks, parallel network's test accuracy) of pnn_mpi's trainer."""
    result = train(cfg, world, data, log=lambda *_: None)
    return result.samples_seen / result.train_seconds, world.bcast(result.test_accuracy)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    world = World()
    base = TrainConfig(
        hidden=(args.hidden,),
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        lr_schedule="constant",
        warmup=0,
        epochs=args.epochs,
        train_size=args.train_size,
        dtype="float32",
        eval_every=0,
    )
    data = load_rank_data(base, world)
    torch, dist = _torch_setup(world)
    results = {}
    for mode in args.modes:
        cfg = dataclasses.replace(base, sync=mode)
        best = {"pnn_mpi": (0.0, float("nan")), "torch": (0.0, float("nan"))}
        for _ in range(args.repeats):
            for side, run in (("pnn_mpi", lambda: _pnn_run(world, cfg, data)), ("torch", lambda: _torch_run(torch, dist, world, cfg, data, mode))):
                rate, accuracy = run()
                if rate > best[side][0]:
                    best[side] = (rate, accuracy)
        results[mode] = best
    dist.destroy_process_group()
    if world.rank == 0:
        per_rank = f"{min(data.slice_sizes)}" if min(data.slice_sizes) == max(data.slice_sizes) else f"{min(data.slice_sizes)}-{max(data.slice_sizes)}"
        print(
            f"pnn_mpi vs PyTorch {torch.__version__}: {plural(world.size, 'rank')} ({world.library()}), one thread each; "
            f"784-{args.hidden}-10 relu softmax-xent float32, batch {args.batch_size}, lr {args.lr}, momentum {args.momentum}, "
            f"{args.epochs} epochs of {per_rank} samples per rank; best of {args.repeats}"
        )
        print(f"{'mode':<44} {'pnn_mpi':>12} {'PyTorch':>12} {'ratio':>7} {'goal':>6}   test accuracy pnn_mpi / PyTorch")
        names = {"end": "(a) local SGD, one average at the end", "grad": "(b) gradient sync every step (DDP)"}
        for mode, best in results.items():
            (ours, our_acc), (theirs, their_acc) = best["pnn_mpi"], best["torch"]
            print(f"{names[mode]:<44} {ours:>12,.0f} {theirs:>12,.0f} {ours / theirs:>7.2f} {GOALS[mode]:>5.0f}x   {our_acc:.2%} / {their_acc:.2%}")
        print("samples/s over all ranks")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as exc:
        print(f"pnn_mpi.torch_compare: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
