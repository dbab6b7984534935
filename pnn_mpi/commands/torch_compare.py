"""pnn_mpi against PyTorch on the same job: ``mpiexec -n P python -m pnn_mpi.commands.torch_compare``.

An optional script (PyTorch is not a dependency, and the package never imports
this module). Both sides train the same MLP (784-128-10, relu, softmax +
cross-entropy, float32, the same initial weights) on the same MNIST slices with
the same batch, rates, momentum and epochs, one thread per rank. The modes:

``end``    local SGD with one average at the end (pnn_mpi ``--sync end``;
           PyTorch: a plain training loop and one ``all_reduce`` over gloo);
``grad``   gradients summed at every step (pnn_mpi ``--sync grad``; PyTorch:
           DistributedDataParallel over gloo);
``local``  the project's default schedule (pnn_mpi ``--sync local:5:64``: parameters
           and momentum averaged every 5 steps at the peak rate, up to 64 while it is
           lower) against PyTorch's post-local SGD: ``PostLocalSGDOptimizer`` with a
           ``PeriodicModelAverager``, which averages the parameters alone at a fixed
           period, after DDP gradient averaging through the warm-up epochs
           (``--torch-warmup gradients``; ``none``: averaging from the first step).
           Its period is the one whose number of averages comes closest to pnn_mpi's.

``end`` and ``grad`` run at lr 0.05, constant, for 2 epochs, as they always
have; ``local`` at the project's defaults for P ranks, as a plain ``pnn_mpi``
run would (``TrainConfig.resolved``: 10 epochs, cosine, on 2+ ranks the one-rank
rate times 1 + log2 P, at most 0.25, and a linear warm-up). ``--lr``, ``--lr-schedule``,
``--warmup`` and ``--epochs`` override these in every mode. Both sides take the
same rate each epoch (``optim.rate_fraction``; PyTorch through ``LambdaLR``).

pnn_mpi runs through its own trainer, ``pnn_mpi.training.train.train``, with its
fastest step installed (``--kernel numba`` where numba is, which the default run
leaves to ``--kernel`` since numba costs memory; ``--kernel numpy`` the default
run's step; the header names the one used), and is timed by
the training seconds it reports (epochs and syncs; loading and scoring
excluded). PyTorch is timed over the same span, from a barrier to a barrier.
The two alternate, ``--repeats`` times, and each keeps its best run. Printed:
samples/s over all ranks, the ratio, the parallel network's test accuracy as a
check that both trained the same thing, and each side's Allreduces per rank
(pnn_mpi's clock counts its own; PyTorch's are counted at ``dist.all_reduce``,
but for DDP's own reducer under ``grad``: one per gradient bucket and step).
The ranks' MPI rank and size set up torch.distributed (tcp on 127.0.0.1, a port
chosen by rank 0).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread per rank, as training
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import numpy as np  # noqa: E402

from ..common.errors import UserError  # noqa: E402
from ..common.wording import plural  # noqa: E402
from ..nn.kernels import numba_available  # noqa: E402
from ..nn.optim import SCHEDULES, rate_fraction  # noqa: E402
from ..parallel.comm import World  # noqa: E402
from ..parallel.sync import Sync  # noqa: E402
from ..training import defaults  # noqa: E402
from ..training.config import TrainConfig, settled  # noqa: E402
from ..training.options import Parser, non_negative_int, positive_int  # noqa: E402
from ..training.rank_data import load_rank_data  # noqa: E402
from ..training.train import build_network, train  # noqa: E402

MODES = ("end", "grad", "local", "time")
GOALS = {"end": 3.5, "grad": 8.0}  # pnn_mpi / PyTorch samples/s the project aims for (none set for local)
NAMES = {"end": "(a) local SGD, one average at the end", "grad": "(b) gradient sync every step (DDP)", "local": "(c) local:5:64 vs post-local SGD"}
FIXED = {"lr": 0.05, "lr_schedule": "constant", "warmup": 0, "epochs": 2}  # end and grad, where no flag is given
TORCH_WARMUPS = ("gradients", "none")


def _parser() -> Parser:
    p = Parser(prog="python -m pnn_mpi.commands.torch_compare", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, help="peak learning rate (default: 0.05 for end and grad; the project's rule for P ranks for local)")
    p.add_argument("--lr-schedule", choices=SCHEDULES, help="(default: constant for end and grad; the project's, cosine, for local)")
    p.add_argument("--warmup", type=non_negative_int, help="epochs of linear rate warm-up (default: 0 for end and grad; the project's rule for local)")
    p.add_argument("--momentum", type=float, default=defaults.MOMENTUM)
    p.add_argument("--epochs", type=positive_int, help="(default: 2 for end and grad; the project's 10 for local)")
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument(
        "--kernel",
        choices=("numba", "numpy"),
        help="pnn_mpi's mini-batch step, as train's --kernel: numba runs the steps between two collectives in one "
        "compiled call; numpy is the default run's step (default: numba when it is installed, else numpy)",
    )
    p.add_argument("--train-size", type=positive_int, help="use only the first N training samples (default: all)")
    p.add_argument("--repeats", type=positive_int, default=2, help="runs of each side per mode; the best counts")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="end: local SGD, one average; grad: DDP-style; local: the default schedule; time: the default run's time to --target against DDP's",
    )
    p.add_argument("--target", type=float, default=0.98, help="time: the test accuracy both sides are timed to")
    p.add_argument(
        "--torch-warmup",
        choices=TORCH_WARMUPS,
        default="gradients",
        help="local: PyTorch's warm-up, DDP gradient averaging through the warm-up epochs (post-local SGD) or none",
    )
    return p


def pnn_kernel(args: argparse.Namespace) -> str:
    """pnn_mpi's step here: the one asked for, else its fastest one installed."""
    return args.kernel or ("numba" if numba_available() else "numpy")


def mode_config(args: argparse.Namespace, mode: str, ranks: int) -> TrainConfig:
    """The run of ``mode`` on ``ranks`` ranks: the flags given, else end and grad's fixed
    settings (as before local existed), or local's from the project's defaults rule."""
    if mode == "local":
        return _config(args, defaults.MINI_BATCH_SYNC, ranks)
    return _config(args, mode, ranks, FIXED)


def _config(args: argparse.Namespace, sync: str, ranks: int, fixed: dict | None = None, eval_every: int = 0) -> TrainConfig:
    """A run under ``sync`` on ``ranks`` ranks: the flags given, else ``fixed``, else the project's rule."""
    base = TrainConfig(
        hidden=(args.hidden,),
        batch_size=args.batch_size,
        momentum=args.momentum,
        sync=sync,
        train_size=args.train_size,
        dtype="float32",
        eval_every=eval_every,
        kernel=pnn_kernel(args),
    )
    given = {k: getattr(args, k) for k in FIXED if getattr(args, k) is not None}
    return dataclasses.replace(base, **{**(fixed or {}), **given}).resolved(ranks)


def matching_period(steps: int, warmup_steps: int, averages: int) -> int:
    """PeriodicModelAverager's period whose averages over ``steps`` steps come closest to
    ``averages`` (pnn_mpi's, whose period varies): it averages after step ``warmup_steps``
    and every period steps from there, plus a final average when the last step did not.
    On a tie the longer period (fewer Allreduces)."""
    local = steps - warmup_steps
    if local < 1:
        return 1

    def made(period: int) -> int:
        return -(-local // period) + ((local - 1) % period != 0)

    return min(range(1, local + 1), key=lambda p: (abs(made(p) - averages), -p))


@dataclasses.dataclass
class Outcome:
    """One run of one side, as the table reports it."""

    rate: float = 0.0  # samples/s over all ranks
    accuracy: float = float("nan")  # the parallel network's test accuracy
    averages: int = 0  # Allreduces per rank that averaged the model
    gradients: int = 0  # Allreduces per rank that summed gradients
    other: int = 0  # pnn_mpi: the stop checks' and epoch losses' (a few floats each)
    period: int = 0  # PyTorch under local: PeriodicModelAverager's period (0: none, one rank)
    warmup_steps: int = 0  # PyTorch under local: steps of DDP gradient averaging before it

    @property
    def allreduces(self) -> int:
        return self.averages + self.gradients


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


@contextlib.contextmanager
def _counted_allreduces(dist) -> Iterator[list[int]]:
    """This rank's ``dist.all_reduce`` calls, counted while inside: the averager, its
    utilities and DDP's Python comm hooks all call it (DDP without a hook does not)."""
    calls, original = [0], dist.all_reduce

    def all_reduce(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    dist.all_reduce = all_reduce
    try:
        yield calls
    finally:
        dist.all_reduce = original


def _torch_optimizer(torch, model, cfg: TrainConfig, mode: str, period: int, warmup_steps: int):
    """(the module to call, the optimizer to step, the SGD under it that the rate schedule sets).

    local is PyTorch's post-local SGD as its docs set it up: DDP with the
    post-localSGD hook averages the gradients for ``warmup_steps`` steps, then a
    PostLocalSGDOptimizer's PeriodicModelAverager averages the parameters every
    ``period`` steps. After the warm-up the hook sums nothing: its default sums
    within a subgroup per node (all ranks here, DDP again), and ``new_subgroups``
    cannot size those without GPUs.
    """
    sgd = torch.optim.SGD(model.parameters(), lr=settled(cfg.lr), momentum=cfg.momentum)
    ddp = torch.nn.parallel.DistributedDataParallel
    if mode == "grad":
        return ddp(model), sgd, sgd
    if mode == "end" or not period:
        return model, sgd, sgd
    from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import PostLocalSGDState, post_localSGD_hook
    from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
    from torch.distributed.optim import PostLocalSGDOptimizer

    net = model
    if warmup_steps:
        net = ddp(model)
        net.register_comm_hook(PostLocalSGDState(None, None, warmup_steps, post_local_gradient_allreduce=False), post_localSGD_hook)
    return net, PostLocalSGDOptimizer(sgd, PeriodicModelAverager(period, warmup_steps)), sgd


def _torch_epochs(torch, net, opt, rates, cfg: TrainConfig, x, y, steps: int, rank: int, calls: list[int], after_epoch=None) -> tuple[int, int, int]:
    """Every epoch's steps, the rate set per epoch by ``rates``; returns (samples this rank
    saw, steps after which the optimizer averaged, steps since its last average).
    ``after_epoch(epoch)``, when given, runs after each epoch and stops them by returning True."""
    batch = int(cfg.batch_size)  # this tool's --batch-size is a number
    shuffler = np.random.default_rng([cfg.seed, rank])
    order = np.arange(len(y))
    cross_entropy = torch.nn.functional.cross_entropy
    seen = averaged = since = 0
    for epoch in range(cfg.epochs):
        shuffler.shuffle(order)
        picks = torch.from_numpy(order)
        for s in range(steps):
            idx = picks[s * batch : (s + 1) * batch]
            opt.zero_grad(set_to_none=True)
            cross_entropy(net(x[idx]), y[idx]).backward()
            before = calls[0]
            opt.step()  # under local: the averager's Allreduce, when due
            if calls[0] > before:
                averaged, since = averaged + 1, 0
            else:
                since += 1
            seen += len(idx)
        rates.step()
        if after_epoch is not None and after_epoch(epoch):
            break
    return seen, averaged, since


def _torch_final_average(torch, dist, model, mode: str, ranks: int) -> None:
    """The parallel network: end as before (one all_reduce of the flat parameters), local
    through model_averaging's own ``average_parameters``."""
    if mode == "end":
        with torch.no_grad():
            flat = torch.nn.utils.parameters_to_vector(model.parameters())
            dist.all_reduce(flat)
            flat /= ranks
            torch.nn.utils.vector_to_parameters(flat, model.parameters())
    else:
        from torch.distributed.algorithms.model_averaging.utils import average_parameters

        average_parameters(iter(model.parameters()), dist.group.WORLD)


def _torch_plan(world: World, cfg: TrainConfig, data, mode: str, target: int, warmup: str) -> tuple[int, int, int]:
    """(steps per epoch, averaging period, DDP warm-up steps) of PyTorch's run. DDP and the
    averager need every rank to take the same steps: the smallest slice's (end: each its own)."""
    steps = math.ceil(len(data.y) / int(cfg.batch_size))
    if mode == "end":
        return steps, 0, 0
    steps = min(world.allgather(steps))
    if mode == "grad" or world.size == 1:
        return steps, 0, 0
    total = steps * cfg.epochs
    warmup_steps = min(total, settled(cfg.warmup) * steps) if warmup == "gradients" else 0
    return steps, matching_period(total, warmup_steps, target), warmup_steps


def _torch_run(torch, dist, world: World, cfg: TrainConfig, data, mode: str, target: int = 0, warmup: str = "gradients") -> Outcome:
    """PyTorch on this job; under local, its averages tuned to ``target`` (pnn_mpi's)."""
    steps, period, warmup_steps = _torch_plan(world, cfg, data, mode, target, warmup)
    model, net, opt, rates, x, y = _torch_side(torch, cfg, data, mode, period, warmup_steps)
    with _counted_allreduces(dist) as calls:
        world.barrier()
        began = time.perf_counter()
        seen, averaged, since = _torch_epochs(torch, net, opt, rates, cfg, x, y, steps, world.rank, calls)
        final = world.size > 1 and (mode == "end" or (averaged > 0 and since > 0))
        if final:
            _torch_final_average(torch, dist, model, mode, world.size)
        world.barrier()
        seconds = time.perf_counter() - began
    averages = averaged + final
    gradients = calls[0] - averages  # DDP's post-localSGD hook, in the warm-up
    if mode == "grad" and world.size > 1:  # DDP's own reducer: one Allreduce per bucket and step
        gradients = steps * cfg.epochs * len(str(net._get_ddp_logging_data().get("bucket_sizes", "0")).split(","))
    total = sum(world.allgather(seen))
    accuracy = _torch_accuracy(torch, world, model, _test_share(torch, data), data)
    return Outcome(total / seconds, accuracy, averages, gradients, period=period, warmup_steps=warmup_steps)


def _torch_side(torch, cfg: TrainConfig, data, mode: str, period: int, warmup_steps: int):
    """(model, module to call, optimizer to step, per-epoch rates, inputs, labels) of PyTorch's run of ``mode``."""
    model = _torch_model(torch, cfg, data.x.shape[1], data.classes)
    net, opt, sgd = _torch_optimizer(torch, model, cfg, mode, period, warmup_steps)
    fraction = functools.partial(rate_fraction, cfg.lr_decay, schedule=settled(cfg.lr_schedule), epochs=cfg.epochs, warmup=settled(cfg.warmup))
    rates = torch.optim.lr_scheduler.LambdaLR(sgd, fraction)
    return model, net, opt, rates, torch.from_numpy(data.x), torch.from_numpy(data.y.astype(np.int64))


def _test_share(torch, data):
    """This rank's share of the test set as PyTorch's inputs (the ranks hold the test set in shares)."""
    return torch.from_numpy(data.test_images.reshape(len(data.test_images), -1).astype(np.float32) / 255.0)


def _torch_accuracy(torch, world: World, model, images, data) -> float:
    """The test accuracy of a model that every rank holds alike: each rank counts its share, the counts are summed."""
    with torch.no_grad():
        correct = int((model(images).argmax(dim=1).numpy() == data.test_labels).sum())
    return sum(world.allgather(correct)) / data.test_total


def _pnn_run(world: World, cfg: TrainConfig, data) -> Outcome:
    """pnn_mpi's own trainer; its clock counts the Allreduces by purpose."""
    result = train(cfg, world, data, log=lambda *_: None)
    clock = result.clocks[world.rank]
    other = clock.score_allreduces + clock.check_allreduces
    return Outcome(result.samples_seen / result.train_seconds, world.bcast(result.test_accuracy), clock.average_allreduces, clock.gradient_allreduces, other)


def time_configs(args: argparse.Namespace, ranks: int) -> tuple[TrainConfig, TrainConfig]:
    """(pnn_mpi's, PyTorch DDP's) runs for the time to accuracy, both scored after every epoch:
    the default schedule with its rule, and gradient averaging with the rule pnn_mpi's own
    ``--sync grad`` takes for these ranks (the recipe a gradient-averaging run gets here)."""
    return _config(args, defaults.MINI_BATCH_SYNC, ranks, eval_every=1), _config(args, "grad", ranks, eval_every=1)


def _first_reaching(times: list[float], accuracies: list[float], target: float) -> tuple[float, int]:
    """(training seconds, epoch) of the first epoch whose test accuracy reached ``target``; (nan, 0) if none did."""
    for epoch, (seconds, accuracy) in enumerate(zip(times, accuracies), 1):
        if accuracy >= target:
            return seconds, epoch
    return float("nan"), 0


def _pnn_time(world: World, cfg: TrainConfig, data, target: float) -> tuple[float, int]:
    """pnn_mpi's training seconds (scoring excluded, as its clock keeps them) to ``target``."""
    result = train(cfg, world, data, log=lambda *_: None)
    accuracies = [r.test_accuracy if r.test_accuracy is not None else -1.0 for r in result.epochs]
    return _first_reaching([r.train_seconds for r in result.epochs], accuracies, target)


def _torch_time(torch, world: World, cfg: TrainConfig, data, target: float) -> tuple[float, int]:
    """DDP's training seconds to ``target``: the test set scored after each epoch, off the clock."""
    steps, _, _ = _torch_plan(world, cfg, data, "grad", 0, "none")
    model, net, opt, rates, x, y = _torch_side(torch, cfg, data, "grad", 0, 0)
    images = _test_share(torch, data)
    times: list[float] = []
    accuracies: list[float] = []
    clock = {"began": 0.0, "paused": 0.0}

    def after_epoch(epoch: int) -> bool:
        world.barrier()
        stopped = time.perf_counter()
        times.append(stopped - clock["began"] - clock["paused"])
        accuracies.append(_torch_accuracy(torch, world, model, images, data))
        reached = accuracies[-1] >= target  # the same on every rank
        clock["paused"] += time.perf_counter() - stopped
        return reached

    world.barrier()
    clock["began"] = time.perf_counter()
    _torch_epochs(torch, net, opt, rates, cfg, x, y, steps, world.rank, [0], after_epoch)
    return _first_reaching(times, accuracies, target)


def _time_line(target: float, cfgs: tuple[TrainConfig, TrainConfig], ours: tuple[float, int], theirs: tuple[float, int]) -> str:
    def said(side: tuple[float, int], cfg: TrainConfig) -> str:
        reached = f"{side[0]:.2f} s (epoch {side[1]})" if side[1] else f"not reached in {plural(cfg.epochs, 'epoch')}"
        return f"{reached}, {_settings(cfg)}"

    ratio = f"; ratio {theirs[0] / ours[0]:.2f}x" if ours[1] and theirs[1] else ""
    return f"time to {target:.0%} test accuracy (training seconds, scoring off the clock): pnn_mpi {said(ours, cfgs[0])}; PyTorch DDP {said(theirs, cfgs[1])}{ratio}"


def _settings(cfg: TrainConfig) -> str:
    """A mode's rate, schedule and epochs in words."""
    warm = f", {plural(settled(cfg.warmup), 'warm-up epoch')}" if cfg.warmup else ""
    return f"lr {settled(cfg.lr):g} {cfg.lr_schedule}{warm}, {plural(cfg.epochs, 'epoch')}, pnn_mpi --sync {cfg.sync}"


def _local_notes(cfg: TrainConfig, ours: Outcome, theirs: Outcome) -> list[str]:
    """What the two sides of local averaged, and how often: their schemes differ, and the table hides how."""
    fractions = [rate_fraction(cfg.lr_decay, e, settled(cfg.lr_schedule), cfg.epochs, settled(cfg.warmup)) for e in range(cfg.epochs)]
    periods = " ".join(str(Sync.parse(settled(cfg.sync)).period(f)) for f in fractions)
    if not theirs.period:
        return ["    one rank: nothing to average on either side"]
    warm = theirs.warmup_steps
    return [
        f"    pnn_mpi: {ours.averages} averages of parameters and momentum (the last of the parameters alone), "
        f"every {periods} steps by epoch (steps counted across epoch ends)",
        f"    PyTorch: PostLocalSGDOptimizer + PeriodicModelAverager(period={theirs.period}, warmup_steps={warm}): "
        + (f"DDP gradient averaging for {warm} steps ({theirs.gradients} Allreduces, post-localSGD hook; none after it), then " if warm else "")
        + f"{theirs.averages} averages of the parameters alone (the momentum stays each rank's own; the last by average_parameters)",
        f"    pnn_mpi also made {ours.other} small Allreduces per rank (3-7 floats: stop checks, epoch losses), not counted above",
    ]


def _report(world: World, args: argparse.Namespace, data, torch_version: str, results: dict) -> None:
    """Rank 0's table: speed, accuracy and Allreduces per mode, then what each mode ran."""
    sizes = data.slice_sizes
    per_rank = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
    print(
        f"pnn_mpi vs PyTorch {torch_version}: {plural(world.size, 'rank')} ({world.library()}), one thread each; "
        f"784-{args.hidden}-10 relu softmax-xent float32, batch {args.batch_size}, momentum {args.momentum}, "
        f"{per_rank} samples per rank; pnn_mpi --kernel {pnn_kernel(args)}; best of {args.repeats}"
    )
    print(f"{'mode':<44} {'pnn_mpi':>12} {'PyTorch':>12} {'ratio':>7} {'goal':>6}   {'test accuracy':>17}   Allreduces per rank")
    for mode, (_, ours, theirs) in results.items():
        goal = f"{GOALS[mode]:>5g}x" if mode in GOALS else f"{'-':>6}"
        accuracy = f"{ours.accuracy:.2%} / {theirs.accuracy:.2%}"
        print(
            f"{NAMES[mode]:<44} {ours.rate:>12,.0f} {theirs.rate:>12,.0f} {ours.rate / theirs.rate:>7.2f} {goal}   {accuracy:>17}   {ours.allreduces} / {theirs.allreduces}"
        )
    print("samples/s over all ranks; test accuracy of the parallel network and Allreduces per rank: pnn_mpi / PyTorch")
    for mode, (cfg, ours, theirs) in results.items():
        print(f"{NAMES[mode][:3]} {_settings(cfg)}")
        if mode == "local":
            print("\n".join(_local_notes(cfg, ours, theirs)))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    world = World()
    configs = {mode: mode_config(args, mode, world.size) for mode in args.modes if mode != "time"}
    data = load_rank_data(mode_config(args, args.modes[0].replace("time", "local"), world.size), world)
    torch, dist = _torch_setup(world)
    results = {}
    timed = time_to_target(torch, world, args, data) if "time" in args.modes else None
    for mode, cfg in configs.items():
        best: dict[str, Outcome] = {}
        for _ in range(args.repeats):
            ours = _pnn_run(world, cfg, data)
            theirs = _torch_run(torch, dist, world, cfg, data, mode, ours.averages, args.torch_warmup)
            for side, outcome in (("pnn_mpi", ours), ("torch", theirs)):
                if side not in best or outcome.rate > best[side].rate:
                    best[side] = outcome
        results[mode] = (cfg, best["pnn_mpi"], best["torch"])
    dist.destroy_process_group()
    if world.rank == 0:
        _report(world, args, data, torch.__version__, results)
        if timed is not None:
            print(timed)
    return 0


def time_to_target(torch, world: World, args: argparse.Namespace, data) -> str:
    """The time mode's line: each side ``--repeats`` times, alternating, the fastest kept."""
    cfgs = time_configs(args, world.size)
    ours: list[tuple[float, int]] = []
    theirs: list[tuple[float, int]] = []
    for _ in range(args.repeats):
        ours.append(_pnn_time(world, cfgs[0], data, args.target))
        theirs.append(_torch_time(torch, world, cfgs[1], data, args.target))
    return _time_line(args.target, cfgs, min(ours, key=_unreached_last), min(theirs, key=_unreached_last))


def _unreached_last(side: tuple[float, int]) -> float:
    return side[0] if side[1] else math.inf


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as exc:
        print(f"pnn_mpi.commands.torch_compare: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
