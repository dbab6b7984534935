"""The training loop: local SGD on each rank's slice, averaged across ranks.

Reads top to bottom: build the same network on every rank, then per epoch
shuffle the local slice, take SGD steps, synchronise as the schedule says, and
report; at the end score the local networks, average them once more into the
parallel network and score that on rank 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np

from .checkpoint import Progress, RankState
from .comm import World
from .config import TrainConfig
from .data import RankData
from .evaluate import evaluate, score
from .faults import planned_fault
from .network import Network, Workspace
from .optim import SGD, learning_rate
from .slicing import slice_bounds


@dataclass
class Clock:
    """Seconds this rank spent in each kind of work."""

    compute: float = 0.0  # forward, backward and update steps
    comm: float = 0.0  # synchronisation Allreduces
    wait: float = 0.0  # idle at the end of an epoch, waiting for slower ranks
    eval: float = 0.0  # scoring, and the collectives that only feed a score
    syncs: int = 0


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float  # mean over every sample of every rank this epoch
    test_accuracy: float | None  # the parallel network's, when scored
    test_loss: float | None
    train_seconds: float  # training time so far, scoring excluded


@dataclass
class TrainResult:
    net: Network  # the parallel network (identical on all ranks)
    epochs: list[EpochRecord]
    test_accuracy: float  # the parallel network's, scored by rank 0 (nan elsewhere)
    test_loss: float
    local_accuracies: list[float]  # each rank's network before the final average
    clocks: list[Clock]  # every rank's
    train_seconds: float
    samples_seen: int  # over all ranks
    steps_per_epoch: int


def build_network(cfg: TrainConfig, inputs: int) -> Network:
    """The starting network: the same on every rank, because the seed is."""
    net = Network((inputs, *cfg.hidden, 10), cfg.activation, cfg.output, cfg.dtype)
    net.initialize(cfg.init, cfg.bias_init, cfg.seed)
    return net


def batch_plan(cfg: TrainConfig, sizes: list[int]) -> tuple[int, int, np.ndarray]:
    """(batch size, steps per epoch, samples summed over ranks at each step).

    Every rank takes the same number of steps per epoch, so collectives line
    up; a rank whose slice is one sample shorter takes a smaller last batch.
    """
    batch = max(sizes) if cfg.full_batch else min(int(cfg.batch_size), max(sizes))
    steps = math.ceil(max(sizes) / batch)
    starts = np.arange(steps) * batch
    global_batch = sum(np.clip(n - starts, 0, batch) for n in sizes)
    return batch, steps, global_batch


def gradients(net: Network, ws: Workspace, x_all: np.ndarray, y_all: np.ndarray, picked: np.ndarray, scale: float) -> float:
    """Gather the samples ``picked`` into the workspace, then forward and backward.

    Leaves ``scale`` times the batch's summed gradient in ``net.grads`` and
    returns the summed loss. Allocates nothing: the batch is copied into
    preallocated rows by the ndarray ``take`` method in mode "clip" (``np.take``
    in its default mode "raise" buffers the whole output, an allocation per
    step; the indices come from a permutation, so they are always valid).
    """
    x = x_all.take(picked, 0, ws.inputs[: len(picked)], "clip")
    y = y_all.take(picked, 0, ws.labels[: len(picked)], "clip")
    net.forward(x, ws)
    return net.backward(x, y, ws, scale)


class Interrupted(Exception):
    """Training stopped on request (a signal) after writing a checkpoint."""

    def __init__(self, reason: str, epoch: int, step: int):
        super().__init__(f"{reason}: stopped in epoch {epoch + 1} after step {step}")
        self.reason, self.epoch, self.step = reason, epoch, step


class Diverged(Exception):
    """The training loss became NaN or infinite on some rank."""


@dataclass
class Hooks:
    """How a run talks to the world outside the loop (all optional).

    ``stop_requested()`` says whether this rank was asked to stop (a signal);
    ``checkpoint(progress, state)`` is a collective that saves every rank's
    state; ``resume`` is where a checkpointed run left off.
    """

    stop_requested: Callable[[], str | None] = lambda: None
    checkpoint: Callable[[Progress, RankState], None] | None = None
    resume: tuple[Progress, RankState] | None = None


def check_interval(batch: int) -> int:
    """Steps between the ranks' checks for a stop request or divergence (about 2048 samples)."""
    return max(1, 2048 // batch)


def segment_end(start: int, steps: int, every: int, sync, global_step: int) -> int:
    """Where a run of batch-1 steps from ``start`` must stop: at the next check for a
    stop request, the next parameter average of ``steps:K``, or the epoch's end.
    ``global_step`` counts the steps taken before ``start``."""
    stop = min(steps, (start // every + 1) * every)
    if sync.kind == "steps":
        stop = min(stop, start + sync.every - global_step % sync.every)
    return stop


def train(cfg: TrainConfig, world: World, data: RankData, log=print, hooks: Hooks | None = None) -> TrainResult:
    hooks = hooks or Hooks()
    net = build_network(cfg, data.x.shape[1])
    opt = SGD(net.params, cfg.momentum)
    sync = cfg.schedule
    batch, steps, global_batch = batch_plan(cfg, data.slice_sizes)
    ws = net.workspace(batch)
    order = np.arange(len(data.y))
    shuffler = np.random.default_rng([cfg.seed, world.rank])
    clock = Clock()
    progress = Progress()
    loss_sum = 0.0
    if hooks.resume:
        progress, state = hooks.resume
        net.params[...] = state.params
        if opt.velocity is not None:
            opt.velocity[...] = state.velocity
        order[...] = state.order
        shuffler.bit_generator.state = state.rng
        loss_sum = state.loss_sum
        clock = Clock(**progress.clocks[world.rank])
    history = [EpochRecord(**record) for record in progress.history]
    every = check_interval(batch)
    stepper = None  # batch 1 without per-step collectives: many samples per call (kernels.py)
    if batch == 1 and not sync.averages_gradients and cfg.kernel != "generic":
        from .kernels import SampleStepper

        stepper = SampleStepper(net, data.x, cfg.kernel)  # index built, numba loaded: before the clock starts

    def synchronise(buffer: np.ndarray, average: bool = True) -> None:
        t0 = time.perf_counter()
        world.average_(buffer) if average else world.sum_(buffer)
        clock.comm += time.perf_counter() - t0
        clock.syncs += 1

    def one_step(s: int, lr: float) -> float:
        """Step ``s`` of the epoch on this rank's batch; returns the batch's summed loss."""
        picked = order[s * batch : (s + 1) * batch]
        loss = 0.0
        if len(picked):  # a slice one sample short may have an empty last batch
            scale = 1.0 / (global_batch[s] if sync.averages_gradients else len(picked))
            loss = gradients(net, ws, data.x, data.y, picked, scale)
        else:
            net.grads.fill(0.0)
        if sync.averages_gradients:
            synchronise(net.grads, average=False)  # already scaled by the global batch
        if len(picked) or sync.averages_gradients:
            opt.step(net.params, net.grads, lr)
        return loss

    def snapshot() -> RankState:
        progress.clocks = world.allgather(asdict(clock))
        progress.history = [asdict(r) for r in history]
        velocity = None if opt.velocity is None else opt.velocity.copy()
        return RankState(net.params.copy(), velocity, order.copy(), shuffler.bit_generator.state, loss_sum)

    def check(epoch: int, step: int) -> None:
        """Agree on stopping: any rank's signal or non-finite loss stops all ranks at this step."""
        flags = np.array([hooks.stop_requested() is not None, not math.isfinite(loss_sum)], dtype=np.float64)
        world.sum_(flags)
        if flags[1]:
            raise Diverged(f"training diverged in epoch {epoch + 1}: the loss became NaN or infinite; try a smaller --lr (now {cfg.lr})")
        if flags[0]:
            reason = world.allgather(hooks.stop_requested())
            if hooks.checkpoint:
                state = snapshot()  # fills progress.clocks and .history first
                hooks.checkpoint(replace(progress, epoch=epoch, step=step), state)
            raise Interrupted(next(r for r in reason if r), epoch, step)

    fault = planned_fault()
    world.barrier()
    for epoch in range(progress.epoch, cfg.epochs):
        if fault:
            fault.fire(world.rank, epoch + 1)
        began = time.perf_counter()
        comm_before = clock.comm
        lr = learning_rate(cfg.lr, cfg.lr_decay, epoch)
        final_epoch = epoch == cfg.epochs - 1
        if progress.step == 0:  # a fresh epoch, not one resumed midway
            loss_sum = 0.0
            if cfg.shuffle:
                shuffler.shuffle(order)
        s = progress.step
        while s < steps:
            # One step, or with a batch-1 kernel every step up to the next collective.
            stop = segment_end(s, steps, every, sync, progress.global_step) if stepper else s + 1
            if stepper:
                loss_sum += stepper.run(opt.velocity, data.y, order, s, stop, lr, cfg.momentum)  # fewer on a short slice
            else:
                loss_sum += one_step(s, lr)
            progress.global_step += stop - s
            progress.in_sync = sync.averages_gradients  # some rank stepped (the global batch is never empty)
            if sync.averages_after_step(progress.global_step) and not (final_epoch and stop == steps):
                synchronise(net.params)
                progress.in_sync = True
            if stop % every == 0 or stop == steps:
                progress.step = stop
                check(epoch, stop)
            s = stop
        if sync.averages_after_epoch and not final_epoch:
            synchronise(net.params)
            progress.in_sync = True
        worked = time.perf_counter()
        world.barrier()
        ended = time.perf_counter()
        clock.compute += worked - began - (clock.comm - comm_before)
        clock.wait += ended - worked
        progress.train_seconds += ended - began

        history.append(_score_epoch(cfg, world, net, data, clock, epoch, lr, loss_sum, progress.in_sync, progress.train_seconds))
        if world.rank == 0 and not final_epoch:
            log(_epoch_line(cfg, history[-1]))
        progress.epoch, progress.step = epoch + 1, 0
        if hooks.checkpoint and cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 and not final_epoch:
            state = snapshot()
            hooks.checkpoint(progress, state)

    # Score the local networks as they are, then average them into the parallel one.
    t0 = time.perf_counter()
    local_accuracy, _ = evaluate(net, data.test_images, data.test_labels)
    clock.eval += time.perf_counter() - t0
    train_seconds = progress.train_seconds
    if not progress.in_sync:
        world.barrier()
        t0 = time.perf_counter()
        synchronise(net.params)
        train_seconds += time.perf_counter() - t0

    accuracy = loss = float("nan")
    if world.rank == 0:
        t0 = time.perf_counter()
        accuracy, loss = evaluate(net, data.test_images, data.test_labels)
        clock.eval += time.perf_counter() - t0
        history[-1].test_accuracy, history[-1].test_loss = accuracy, loss
        history[-1].train_seconds = train_seconds
        log(_epoch_line(cfg, history[-1]))
    return TrainResult(
        net=net,
        epochs=history,
        test_accuracy=accuracy,
        test_loss=loss,
        local_accuracies=world.allgather(local_accuracy),
        clocks=world.allgather(clock),
        train_seconds=world.bcast(train_seconds),
        samples_seen=data.train_total * cfg.epochs,
        steps_per_epoch=steps,
    )


def _score_epoch(cfg, world, net, data, clock, epoch, lr, loss_sum, in_sync, train_seconds) -> EpochRecord:
    """The epoch's mean training loss over all ranks and, when due, the parallel network's test score.

    Between averages the parallel network exists only as the mean of the local
    ones; it is formed in a copy, so scoring never alters training. Each rank
    scores its share of the test set and the counts are summed.
    """
    t0 = time.perf_counter()
    totals = np.array([loss_sum, 0.0, 0.0])
    due = cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch < cfg.epochs - 1
    if due:
        candidate = net
        if not in_sync:
            candidate = net.copy()
            world.average_(candidate.params)
        lo, hi = slice_bounds(len(data.test_labels), world.size, world.rank)
        totals[1:] = score(candidate, data.test_images[lo:hi], data.test_labels[lo:hi])
    world.sum_(totals)
    clock.eval += time.perf_counter() - t0
    tested = len(data.test_labels)
    return EpochRecord(
        epoch=epoch + 1,
        lr=lr,
        train_loss=float(totals[0]) / data.train_total,
        test_accuracy=float(totals[1]) / tested if due else None,
        test_loss=float(totals[2]) / tested if due else None,
        train_seconds=train_seconds,
    )


def _epoch_line(cfg: TrainConfig, record: EpochRecord) -> str:
    tested = f"  test {record.test_accuracy:7.2%}" if record.test_accuracy is not None else ""
    return (
        f"epoch {record.epoch:>{len(str(cfg.epochs))}}/{cfg.epochs}  lr {record.lr:.4g}"
        f"  train loss {record.train_loss:.4f}{tested}  {record.train_seconds:6.1f} s"
    )
