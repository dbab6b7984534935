"""The training loop: local SGD on each rank's slice, averaged across ranks.

``train`` reads top to bottom: build the same network on every rank, then per
epoch shuffle the local slice, take SGD steps, synchronise as the schedule
says, score and report; at the end score the local networks, average them once
more into the parallel network and score that. Every rank holds a share of the
test set: scores are counted share by share and summed.

Everything the loop changes lives in one ``LoopState`` (network, optimizer,
order, shuffler, progress, loss sum, clock, history), which ``snapshot`` copies
and ``restore`` puts back: a checkpoint is a snapshot, a resume a restore.
What stays fixed during a run lives in ``Run`` (settings, world, data, batch
plan, hooks); its ``world`` is only ever read through ``run.world``, so it can be
replaced between steps. Time is charged through ``Phases``, the one place where
phases (compute, comm, wait, eval, checkpoint, ...) begin and end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import NamedTuple

import numpy as np

from ..common.errors import Diverged, Interrupted, UserError
from ..nn import fused
from ..nn.evaluate import score
from ..nn.kernels import SampleStepper
from ..nn.network import Network, Workspace
from ..nn.optim import SGD, rate_fraction
from ..parallel.comm import Communicator
from ..parallel.faults import Fault, planned_faults
from ..parallel.stall import PROGRESS
from ..parallel.sync import Sync
from . import defaults
from .checkpoint import Progress, RankState
from .config import TrainConfig, runs_batch_one_kernel, settled
from .health import Watch
from .pace import Pace
from .rank_data import RankData


@dataclass
class Clock:
    """Seconds this rank spent in each kind of work (charged by ``Phases``)."""

    compute: float = 0.0  # forward, backward and update steps
    comm: float = 0.0  # synchronisation Allreduces
    wait: float = 0.0  # idle at the end of an epoch, waiting for slower ranks
    eval: float = 0.0  # scoring, and the collectives that only feed a score
    # Every Allreduce this rank took part in, and the bytes of the buffers it passed, by purpose:
    # parameter (and momentum) averages, gradient sums, scores, stop checks.
    average_allreduces: int = 0
    average_bytes: int = 0
    gradient_allreduces: int = 0
    gradient_bytes: int = 0
    score_allreduces: int = 0
    score_bytes: int = 0
    check_allreduces: int = 0
    check_bytes: int = 0

    @property
    def syncs(self) -> int:
        """The synchronising Allreduces: parameter averages and gradient sums."""
        return self.average_allreduces + self.gradient_allreduces


CLOCKED = tuple(f.name for f in fields(Clock) if f.type in ("float", float))  # the phases with a total in Clock


class Phases:
    """Where the loop's phases begin and end; every second goes to the innermost clocked phase.

    ``with phases("comm"):`` inside ``with phases("compute"):`` pauses compute
    while comm runs, so the totals in ``clock`` add up to the time spent. Phases
    without a total in ``Clock`` (checkpoint, check, ...) are reported to the
    listeners but charge their time to the clocked phase around them. Each
    listener is called ``listener(phase, began, ended)`` with perf_counter
    seconds when a phase ends (spans nest): a timeline hooks in here.
    """

    def __init__(self, clock: Clock):
        self.clock = clock
        self.listeners: list[Callable[[str, float, float], None]] = []
        self._open: list[tuple[str, float]] = []
        self._charging: list = []  # [phase, since] of the innermost open clocked phase, or empty

    def begin(self, phase: str) -> None:
        now = time.perf_counter()
        self._open.append((phase, now))
        if phase in CLOCKED:
            self._charge(now)
            self._charging = [phase, now]

    def end(self) -> None:
        now = time.perf_counter()
        phase, began = self._open.pop()
        if phase in CLOCKED:
            self._charge(now)
            outer = next((name for name, _ in reversed(self._open) if name in CLOCKED), None)
            self._charging = [outer, now] if outer else []
        for listener in self.listeners:
            listener(phase, began, now)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self.begin(phase)
        try:
            yield
        finally:
            self.end()

    def _charge(self, now: float) -> None:
        if self._charging:
            phase, since = self._charging
            setattr(self.clock, phase, getattr(self.clock, phase) + now - since)


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    train_loss: float  # mean over every sample of every rank this epoch
    test_accuracy: float | None  # the parallel network's, when scored
    test_loss: float | None
    train_seconds: float  # training time so far, scoring excluded
    val_accuracy: float | None = None  # the parallel network's on the held-out samples (--val-size)
    val_loss: float | None = None
    test_confidence: float | None = None  # the parallel network's mean probability of its predicted class, when scored


@dataclass
class TrainResult:
    net: Network  # the parallel network (identical on all ranks)
    epochs: list[EpochRecord]
    test_accuracy: float  # the parallel network's, scored in shares by all ranks (every rank holds it)
    test_loss: float
    test_confidence: float  # mean probability of the predicted class (evaluate.py), on every rank
    warnings: list[str]  # what health.py warned about, on rank 0 (empty elsewhere)
    local_accuracies: list[float]  # each rank's network before the final average
    clocks: list[Clock]  # every rank's
    train_seconds: float
    samples_seen: int  # over all ranks
    steps_per_epoch: int


class BatchPlan(NamedTuple):
    batch: int  # samples per step on a rank (a shorter slice's last batch may hold fewer)
    steps: int  # steps per epoch, the same on every rank
    step_samples: np.ndarray  # samples summed over all ranks at each step of an epoch


def build_network(cfg: TrainConfig, inputs: int, classes: int) -> Network:
    """The starting network: the same on every rank, because the seed is."""
    net = Network((inputs, *cfg.hidden, classes), cfg.activation, cfg.output, cfg.dtype)
    net.initialize(cfg.init, cfg.bias_init, cfg.seed)
    return net


def batch_plan(cfg: TrainConfig, sizes: list[int]) -> BatchPlan:
    """The batch size, the steps per epoch and the samples of each step over all ranks.

    Every rank takes the same number of steps per epoch, so collectives line
    up; a rank whose slice is one sample shorter takes a smaller last batch.
    """
    batch = max(sizes) if cfg.full_batch else min(int(cfg.batch_size), max(sizes))
    steps = math.ceil(max(sizes) / batch)
    starts = np.arange(steps) * batch
    step_samples = sum(np.clip(n - starts, 0, batch) for n in sizes)
    return BatchPlan(batch, steps, np.asarray(step_samples))


def gradients(
    net: Network, ws: Workspace, x_all: np.ndarray, y_all: np.ndarray, picked: np.ndarray, scale: float, step: fused.FusedStep | None = None
) -> float:
    """Gather the samples ``picked`` into the workspace, then forward and backward.

    Leaves ``scale`` times the batch's summed gradient in ``net.grads`` and
    returns the summed loss. Allocates nothing: the batch is copied into
    preallocated rows by the ndarray ``take`` method in mode "clip" (``np.take``
    in its default mode "raise" buffers the whole output, an allocation per
    step; the indices come from a permutation, so they are always valid).
    """
    x = x_all.take(picked, 0, ws.inputs[: len(picked)], "clip")
    y = y_all.take(picked, 0, ws.labels[: len(picked)], "clip")
    if step is not None:  # the fused numba passes (--kernel numba)
        return step.gradients(x, y, ws, scale)
    net.forward(x, ws)
    return net.backward(x, y, ws, scale)


def mini_batch_step(cfg: TrainConfig, net: Network) -> fused.FusedStep | None:
    """The fused numba step (fused.py) under ``--kernel numba``, else None: the numpy step.

    ``auto`` keeps the numpy step for mini-batches: numba adds about 100 MiB per
    rank, which the default run (batch 32, many ranks to a machine) cannot spare.
    A network without fused kernels takes the numpy step.
    """
    if cfg.kernel != "numba" or not fused.supports(net):
        return None
    try:
        return fused.FusedStep(net)
    except ImportError as exc:  # installed, but cannot load (e.g. too old for this numpy)
        raise UserError(f"--kernel numba: numba cannot be loaded here ({exc})") from None


@dataclass
class Hooks:
    """How a run talks to the world outside the loop (all optional).

    ``stop_reason()`` names why this rank was asked to stop (a signal), or is
    None; ``checkpoint(progress, state)`` is a collective that saves every
    rank's state; ``resume`` is where a checkpointed run left off.
    """

    stop_reason: Callable[[], str | None] = lambda: None
    checkpoint: Callable[..., None] | None = None  # (progress, state); survive.py adds who holds which records
    resume: tuple[Progress, RankState] | None = None
    phase_listener: Callable[[str, float, float], None] | None = None  # told of every phase span (the timeline)
    # Called where every rank has passed the same collective, with what it changed: "start"
    # (the first barrier), "grad" (a gradient step), "average" (a parameter average), "check"
    # (a stop check), "epoch" (an epoch's end). survive.py keeps its roll-back point here.
    consistent: Callable[[LoopState, str], None] | None = None


CHECK_VALUES = 3  # what a stop check sums: a stop asked for, a loss not finite, the loss so far


def check_interval(batch: int) -> int:
    """Steps between the ranks' checks for a stop request or divergence (about 2048 samples)."""
    return max(1, 2048 // batch)


def segment_end(start: int, steps: int, every: int, period: int, since_average: int) -> int:
    """Where a run of batch-1 steps from ``start`` must stop: at the next check for a
    stop request, the next parameter average (every ``period`` steps, 0: none inside
    the epoch), or the epoch's end. ``since_average`` counts the steps already taken
    since the last average."""
    stop = min(steps, (start // every + 1) * every)
    if period:
        stop = min(stop, start + max(period - since_average, 1))
    return stop


@dataclass
class LoopState:
    """Everything the training loop changes as it runs, on one rank."""

    net: Network
    opt: SGD
    order: np.ndarray  # this epoch's order of the rank's slice
    shuffler: np.random.Generator
    progress: Progress = field(default_factory=Progress)
    loss_sum: float = 0.0  # summed training loss of the epoch so far
    epoch_loss: float | None = None  # the epoch's loss summed over all ranks, once its last stop check summed it
    checked_at: int = 0  # the step of the epoch where the ranks last checked for a stop (on its own or riding an average)
    clock: Clock = field(default_factory=Clock)
    history: list[EpochRecord] = field(default_factory=list)

    @classmethod
    def start(cls, cfg: TrainConfig, rank: int, data: RankData) -> LoopState:
        """The state before the first step: the seeded network, zero momentum, the slice in file order."""
        net = build_network(cfg, data.x.shape[1], data.classes)
        return cls(net, SGD.beside(net, cfg.momentum, CHECK_VALUES), np.arange(len(data.y)), np.random.default_rng([cfg.seed, rank]))

    def snapshot(self) -> tuple[Progress, RankState]:
        """A copy of where this rank stands, taken without any collective.

        The progress carries the history and this rank's clock alone in
        ``clocks``; a checkpoint replaces that by every rank's clock.
        """
        progress = replace(self.progress, history=[asdict(r) for r in self.history], clocks=[asdict(self.clock)])
        velocity = None if self.opt.velocity is None else self.opt.velocity.copy()
        return progress, RankState(self.net.params.copy(), velocity, self.order.copy(), dict(self.shuffler.bit_generator.state), self.loss_sum)

    def restore(self, progress: Progress, state: RankState, clock: dict | None = None) -> None:
        """Put back a snapshot (or a checkpoint's share of this rank); ``clock`` as well when given."""
        self.net.params[...] = state.params
        if self.opt.velocity is not None:
            self.opt.velocity[...] = state.velocity
        self.order[...] = state.order
        self.shuffler.bit_generator.state = state.rng
        self.loss_sum = state.loss_sum
        self.epoch_loss = None
        self.progress = replace(progress, history=[], clocks=[])
        self.history = [EpochRecord(**record) for record in progress.history]
        for name, value in (clock or {}).items():
            setattr(self.clock, name, value)  # in place: Phases holds this clock


@dataclass
class Run:
    """What stays fixed while the loop runs (but ``world``, which is read afresh at every use)."""

    cfg: TrainConfig
    world: Communicator
    data: RankData
    hooks: Hooks
    log: Callable[[str], None]
    plan: BatchPlan
    sync: Sync
    ws: Workspace
    stepper: SampleStepper | None  # batch 1 without per-step collectives: many samples per call
    check_every: int
    phases: Phases
    watch: Watch  # rank 0's warnings about a run that trains without learning (health.py)
    pace: Pace  # when rank 0 prints a progress line inside an epoch
    faults: list[Fault] = field(default_factory=list)  # injected by tests (faults.py)
    fused_step: fused.FusedStep | None = None  # mini-batches under --kernel numba: the compiled elementwise passes

    @property
    def whole_step(self) -> fused.FusedStep | None:
        """The fused step when it runs whole steps in one compiled call (it found numpy's gemm), else None."""
        return self.fused_step if self.fused_step is not None and self.fused_step.whole else None

    @classmethod
    def prepare(cls, cfg: TrainConfig, world: Communicator, data: RankData, state: LoopState, hooks: Hooks, log) -> Run:
        cfg = cfg.resolved(world.size)  # a no-op when the caller (train, run_training) resolved it already
        plan = batch_plan(cfg, data.slice_sizes)
        sync = cfg.schedule
        stepper = None
        if runs_batch_one_kernel(plan.batch, sync, cfg.kernel):
            stepper = SampleStepper(state.net, data.x, cfg.kernel)  # index built, numba loaded: before the clock starts
        phases = Phases(state.clock)
        if hooks.phase_listener is not None:
            phases.listeners.append(hooks.phase_listener)
        return cls(
            cfg,
            world,
            data,
            hooks,
            log,
            plan,
            sync,
            state.net.workspace(plan.batch),
            stepper,
            check_interval(plan.batch),
            phases,
            watch_for(cfg, world.size, data.classes),
            Pace(cfg.progress_every),
            planned_faults(),
            None if stepper else mini_batch_step(cfg, state.net),
        )

    @property
    def launch_rank(self) -> int:
        """This process's rank when the job started (a shrunk world renumbers its survivors)."""
        return getattr(self.world, "launch_rank", self.world.rank)


def consistent(run: Run, state: LoopState, kind: str) -> None:
    """Tell the hook that every rank has passed the same collective (see ``Hooks.consistent``)."""
    if run.hooks.consistent is not None:
        run.hooks.consistent(state, kind)


def train(cfg: TrainConfig, world: Communicator, data: RankData, log=print, hooks: Hooks | None = None) -> TrainResult:
    """Train on this rank's data with the others; while it runs, a rank outside MPI must keep
    taking steps, or the stall watchdog counts it as stuck (parallel/stall.py)."""
    try:
        return _train(cfg, world, data, log, hooks)
    finally:
        PROGRESS.training = False


def _train(cfg: TrainConfig, world: Communicator, data: RankData, log, hooks: Hooks | None) -> TrainResult:
    hooks = hooks or Hooks()
    cfg = cfg.resolved(world.size)  # a no-op when the caller resolved it already
    state = LoopState.start(cfg, world.rank, data)
    if hooks.resume:
        progress, rank_state = hooks.resume
        state.restore(progress, rank_state, progress.clocks[world.rank])
    run = Run.prepare(cfg, world, data, state, hooks, log)
    world.barrier()
    PROGRESS.training = True  # from here, not before: preparing (say, compiling a kernel) takes each rank its own time
    consistent(run, state, "start")
    for epoch in range(state.progress.epoch, cfg.epochs):
        for fault in run.faults:
            fault.fire(run.launch_rank, epoch + 1)
        fraction = rate_fraction(cfg.lr_decay, epoch, settled(cfg.lr_schedule), cfg.epochs, settled(cfg.warmup))
        lr = settled(cfg.lr) * fraction
        period = run.sync.period(fraction)  # local: averages less often while the rate is low
        train_epoch(run, state, epoch, lr, period)
        record = score_epoch(run, state, epoch, lr)
        stopping = epoch < cfg.epochs - 1 and early_stop_due(cfg, [*state.history, record])
        report_epoch(run, state, record, last=stopping)
        if stopping:
            break  # every rank saw the same validation scores: all stop here
        end_epoch(run, state, epoch)
    result = finish(run, state)
    summary = early_stop_summary(cfg, state.history)
    if summary and summary["stopped_early"] and run.world.rank == 0:
        log(
            f"early stop: no better validation accuracy for {cfg.early_stop} epochs "
            f"(best {summary['best_val_accuracy']:.2%} after epoch {summary['best_epoch']})"
        )
    return result


# --- one epoch ---------------------------------------------------------------------------


def train_epoch(run: Run, state: LoopState, epoch: int, lr: float, period: int = 0) -> None:
    """Every step of ``epoch`` on this rank, the syncs the schedule asks for (an average
    every ``period`` steps, 0: none inside the epoch), then meet the other ranks.

    The ranks meet in the epoch's last stop check: it already waits for the slowest
    rank, so it is clocked as waiting, and no barrier of its own follows (one
    latency-bound collective an epoch fewer, which counts at a thousand ranks)."""
    progress, final = state.progress, epoch == run.cfg.epochs - 1
    began = time.perf_counter()
    run.pace.start_epoch()
    with run.phases("compute"):
        if progress.step == 0:  # a fresh epoch, not one resumed midway
            state.loss_sum = 0.0
            if run.cfg.shuffle:
                state.shuffler.shuffle(state.order)
        state.epoch_loss = None
        s = state.checked_at = progress.step
        while s < run.plan.steps:
            stop = take_steps(run, state, s, lr, period)
            progress.step = stop
            if run.sync.averages_gradients:
                consistent(run, state, "grad")
            if period and progress.since_average >= period and not (final and stop == run.plan.steps):
                # after the final step, finish averages (the parameters alone); inside the epoch the stop check rides along
                sync_parameters(run, state, check_at=None if stop == run.plan.steps else (epoch, stop))
            if stop < run.plan.steps and stop % run.check_every == 0 and stop - state.checked_at >= run.check_every:
                check_stop(run, state, epoch, stop)  # no average carried a check for a while
            s = stop
    with run.phases("wait"):
        check_stop(run, state, epoch, run.plan.steps)  # the epoch's end: every rank waits here for the slowest
    if run.sync.averages_after_epoch and not final:
        sync_parameters(run, state)
    progress.train_seconds += time.perf_counter() - began


def take_steps(run: Run, state: LoopState, s: int, lr: float, period: int = 0) -> int:
    """Step ``s`` of the epoch, or with a batch-1 kernel every step up to the next collective; returns where it stopped."""
    for fault in run.faults:
        fault.fire(run.launch_rank, state.progress.epoch + 1, s)
    if run.stepper:
        stop = segment_end(s, run.plan.steps, run.check_every, period, state.progress.since_average)
        state.loss_sum += run.stepper.run(state.opt.velocity, run.data.y, state.order, s, stop, lr, run.cfg.momentum)  # fewer on a short slice
    elif run.whole_step and not run.sync.averages_gradients:
        stop = segment_end(s, run.plan.steps, run.check_every, period, state.progress.since_average)
        state.loss_sum += run.whole_step.steps(run.data.x, run.data.y, state.order, s, stop, run.plan.batch, run.ws, state.opt.velocity, lr, state.opt.momentum)
    else:
        stop = s + 1
        one_step(run, state, s, lr)
    PROGRESS.moved()
    state.progress.global_step += stop - s
    state.progress.since_average += stop - s
    state.progress.in_sync = run.sync.averages_gradients  # some rank stepped (a step's samples are never 0 over all ranks)
    return stop


def one_step(run: Run, state: LoopState, s: int, lr: float) -> None:
    """Step ``s`` of the epoch on this rank's batch; its summed loss is added to the epoch's.

    The loss is added before the gradient Allreduce: a survivor that sees a lost rank inside
    it, while others passed it, adopts the step's result (survive.py) and so counts the step's
    loss once; one that rolls back restores a loss taken before the step."""
    net, batch, by_gradients = state.net, run.plan.batch, run.sync.averages_gradients
    picked = state.order[s * batch : (s + 1) * batch]
    whole = run.whole_step  # gather, gradients (and update) in one compiled call
    if len(picked) and whole and not by_gradients:
        state.loss_sum += whole.step(run.data.x, run.data.y, picked, run.ws, 1.0 / len(picked), state.opt.velocity, lr, state.opt.momentum)
        return
    if len(picked):  # a slice one sample short may have an empty last batch
        scale = 1.0 / (run.plan.step_samples[s] if by_gradients else len(picked))
        if whole:
            state.loss_sum += whole.step(run.data.x, run.data.y, picked, run.ws, scale, update=False)
        else:
            state.loss_sum += gradients(net, run.ws, run.data.x, run.data.y, picked, scale, run.fused_step)
    else:
        net.grads.fill(0.0)
    if by_gradients:
        with run.phases("comm"):
            allreduce(run, state, "gradient", net.grads)  # already scaled by the step's samples over all ranks
        for fault in run.faults:
            fault.fire_after_sum(run.launch_rank, state.progress.epoch + 1, s, run.world)
    if len(picked) or by_gradients:
        if run.fused_step:
            run.fused_step.update(net.params, net.grads, state.opt.velocity, lr, state.opt.momentum)
        else:
            state.opt.step(net.params, net.grads, lr)


def allreduce(run: Run, state: LoopState, purpose: str, buffer: np.ndarray, average: bool = False) -> None:
    """One in-place Allreduce of ``buffer`` (summed, or averaged), counted under ``purpose``
    (average, gradient, score or check) with the bytes this rank passed."""
    run.world.average_(buffer) if average else run.world.sum_(buffer)
    clock = state.clock
    setattr(clock, f"{purpose}_allreduces", getattr(clock, f"{purpose}_allreduces") + 1)
    setattr(clock, f"{purpose}_bytes", getattr(clock, f"{purpose}_bytes") + buffer.nbytes)


def sync_parameters(run: Run, state: LoopState, with_momentum: bool = True, check_at: tuple[int, int] | None = None) -> None:
    """Average the parameters, and the momentum with them (one buffer, one Allreduce):
    every rank then holds the same network and optimizer. The final average leaves
    the momentum (``with_momentum=False``): nothing steps after it. One rank alone is
    its own average: no Allreduce then.

    With ``check_at`` (epoch, step) the stop check rides in the buffer's tail, so an
    average is also a check and the two cost one call: averaged, its flags are the
    fractions of ranks that asked to stop or diverged (0 stays exactly 0).
    """
    riding = check_at if with_momentum and run.world.size > 1 else None  # where the stop check rides along
    reason = None
    if run.world.size > 1:
        buffer = state.opt.carrier if riding else state.opt.state if with_momentum else state.net.params
        if riding:
            reason, buffer[-CHECK_VALUES:] = stop_flags(run, state)
        with run.phases("comm"):
            allreduce(run, state, "average", buffer, average=True)
    state.progress.in_sync = True
    state.progress.since_average = 0
    consistent(run, state, "average")
    if riding:
        act_on_check(run, state, *riding, reason, buffer[-CHECK_VALUES:].astype(np.float64) * run.world.size)


def stop_flags(run: Run, state: LoopState) -> tuple[str | None, np.ndarray]:
    """This rank's stop request (None: none) and its stop check's values."""
    reason = run.hooks.stop_reason()
    return reason, np.array([reason is not None, not math.isfinite(state.loss_sum), state.loss_sum], dtype=np.float64)


def check_stop(run: Run, state: LoopState, epoch: int, step: int) -> None:
    """Agree on stopping: any rank's signal or non-finite loss stops all ranks at this step."""
    reason, flags = stop_flags(run, state)
    with run.phases("check"):  # not clocked: charged to the phase around it (compute inside an epoch, wait at its end)
        allreduce(run, state, "check", flags)  # the loss rides along for rank 0's progress line: no collective of its own
    act_on_check(run, state, epoch, step, reason, flags)
    consistent(run, state, "check")


def act_on_check(run: Run, state: LoopState, epoch: int, step: int, reason: str | None, flags: np.ndarray) -> None:
    """What every rank does with a stop check's sums: report progress, stop on divergence or a request."""
    state.checked_at = step
    if step == run.plan.steps:
        state.epoch_loss = float(flags[2])  # spares score_epoch an Allreduce when nothing is scored
    if run.world.rank == 0 and math.isfinite(flags[2]):
        seen = float(run.plan.step_samples[:step].sum())
        line = run.pace.line(epoch + 1, run.cfg.epochs, step, run.plan.steps, flags[2] / max(seen, 1.0))
        if line:
            run.log(line)
    if flags[1]:
        raise Diverged(f"training diverged in epoch {epoch + 1}: the loss became NaN or infinite; try a smaller --lr (now {run.cfg.lr})")
    if flags[0]:
        reasons = run.world.allgather(reason)
        save_checkpoint(run, state)
        raise Interrupted(next(r for r in reasons if r), epoch, step)


def save_checkpoint(run: Run, state: LoopState) -> None:
    """Hand every rank's snapshot to the checkpoint hook (a collective), if there is one."""
    if run.hooks.checkpoint is None:
        return
    with run.phases("checkpoint"), PROGRESS.aside():  # one rank writes while the others wait: not stuck
        progress, rank_state = state.snapshot()
        progress.clocks = run.world.allgather(progress.clocks[0])
        run.hooks.checkpoint(progress, rank_state)


def score_epoch(run: Run, state: LoopState, epoch: int, lr: float) -> EpochRecord:
    """The epoch's mean training loss over all ranks and, when due, the parallel network's test score.

    Between averages the parallel network exists only as the mean of the local
    ones; it is formed in a copy, so scoring never alters training. Each rank
    scores its share of the test set and the counts are summed.
    """
    cfg, data = run.cfg, run.data
    validating = data.val_total > 0  # then the test set waits for the final score
    with run.phases("eval"):
        totals = np.zeros(7)  # loss; test correct, loss, confidence; validation correct, loss, confidence
        known = state.epoch_loss  # the epoch's summed loss, from its last stop check (None when resumed past it)
        totals[0] = state.loss_sum if known is None else 0.0
        due = not validating and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch < cfg.epochs - 1
        if due or validating:
            candidate = state.net
            if not state.progress.in_sync:
                candidate = state.net.copy()
                allreduce(run, state, "score", candidate.params, average=True)
            if due:  # this rank's share of the test set
                totals[1:4] = score(candidate, data.test_images, data.test_labels)
            if data.val_images is not None and data.val_labels is not None:  # validating: this rank's share of them
                totals[4:7] = score(candidate, data.val_images, data.val_labels)
        if due or validating or known is None:
            allreduce(run, state, "score", totals)
        if known is not None:
            totals[0] = known
    tested = data.test_total
    return EpochRecord(
        epoch=epoch + 1,
        lr=lr,
        train_loss=float(totals[0]) / data.train_total,
        test_accuracy=float(totals[1]) / tested if due else None,
        test_loss=float(totals[2]) / tested if due else None,
        train_seconds=state.progress.train_seconds,
        test_confidence=float(totals[3]) / tested if due else None,
        val_accuracy=float(totals[4]) / data.val_total if validating else None,
        val_loss=float(totals[5]) / data.val_total if validating else None,
    )


def early_stop_due(cfg: TrainConfig, history: list[EpochRecord]) -> bool:
    """Whether ``cfg.early_stop`` epochs have passed without beating the best validation accuracy.

    Read from the history alone, so a resumed run decides as the uninterrupted one would."""
    if not cfg.early_stop or not history or history[-1].val_accuracy is None:
        return False
    scores = [r.val_accuracy if r.val_accuracy is not None else -1.0 for r in history]
    best = scores.index(max(scores))  # the first epoch that reached the best
    return len(scores) - 1 - best >= cfg.early_stop


def early_stop_summary(cfg: TrainConfig, history: list[EpochRecord]) -> dict | None:
    """What metrics.json records of the validation: the best epoch, and where training stopped."""
    scores = [r.val_accuracy for r in history if r.val_accuracy is not None]
    if not scores:
        return None
    best = scores.index(max(scores))
    stopped = len(history) < cfg.epochs
    return {
        "patience": cfg.early_stop or None,
        "best_epoch": history[best].epoch,
        "best_val_accuracy": scores[best],
        "stopped_early": stopped,
        "stopped_after_epoch": history[-1].epoch if stopped else None,
    }


def report_epoch(run: Run, state: LoopState, record: EpochRecord, last: bool = False) -> None:
    """The one place an epoch is reported: kept in the history, printed by rank 0 (the last epoch by ``finish``)."""
    state.history.append(record)
    if run.world.rank == 0 and record.epoch < run.cfg.epochs and not last:
        run.log(epoch_line(run.cfg, record))
        warn_if_unhealthy(run, state)


def end_epoch(run: Run, state: LoopState, epoch: int) -> None:
    """Move on to the next epoch, checkpointing first when one is due (none after the last: the model is saved then)."""
    state.progress.epoch, state.progress.step = epoch + 1, 0
    every = run.cfg.checkpoint_every
    if every and (epoch + 1) % every == 0 and epoch < run.cfg.epochs - 1:
        save_checkpoint(run, state)
    consistent(run, state, "epoch")


# --- the end -----------------------------------------------------------------------------


def finish(run: Run, state: LoopState) -> TrainResult:
    """Score the local networks as they are, average them into the parallel one, and score that.

    Every rank holds a share of the test set, so every network is scored share by
    share on all ranks and the counts summed; when the ranks are in sync already the
    local networks are the parallel one, whose score serves for all of them."""
    world, data, net = run.world, run.data, state.net
    apart = not state.progress.in_sync
    if apart:
        local_accuracies = score_local_networks(run, state)
    train_seconds = state.progress.train_seconds
    if apart:
        world.barrier()
        for fault in run.faults:
            fault.fire_in_save(run.launch_rank, "average")
        began = time.perf_counter()
        sync_parameters(run, state, with_momentum=False)
        train_seconds += time.perf_counter() - began

    accuracy, loss, confidence = score_parallel(run, state)
    if not apart:
        local_accuracies = [accuracy] * world.size
    if world.rank == 0:
        last = state.history[-1]
        last.test_accuracy, last.test_loss, last.train_seconds = accuracy, loss, train_seconds
        last.test_confidence = confidence
        run.log(epoch_line(run.cfg, last))
        warn_if_unhealthy(run, state)
    return TrainResult(
        net=net,
        epochs=state.history,
        test_accuracy=accuracy,
        test_loss=loss,
        test_confidence=confidence,
        warnings=list(run.watch.said),
        local_accuracies=local_accuracies,
        clocks=world.allgather(state.clock),
        train_seconds=world.bcast(train_seconds),
        samples_seen=data.train_total * len(state.history),
        steps_per_epoch=run.plan.steps,
    )


def score_parallel(run: Run, state: LoopState) -> tuple[float, float, float]:
    """(accuracy, mean loss, mean confidence) of the parallel network on the test set: each
    rank scores its share and one small Allreduce sums the counts, so every rank knows them."""
    data, world = run.data, run.world
    tested = data.test_total
    if tested == 0:  # the same on every rank (the estimator holds no test set): nothing to score
        return float("nan"), float("nan"), float("nan")
    with run.phases("eval"):
        totals = np.array(score(state.net, data.test_images, data.test_labels), dtype=np.float64)
        if world.size > 1:
            allreduce(run, state, "score", totals)
    return float(totals[0]) / tested, float(totals[1]) / tested, float(totals[2]) / tested


def score_local_networks(run: Run, state: LoopState) -> list[float]:
    """Every rank's local network's test accuracy, rank 0 first, on every rank.

    Each network in turn is broadcast from its rank and scored by every rank on its
    share; one Allreduce then sums the counts. A rank holds one other network at a
    time and scores 1/P of the test set per network: the same work as scoring its
    own network on the whole set, without holding the whole set."""
    data, world = run.data, run.world
    if data.test_total == 0:
        return [float("nan")] * world.size
    with run.phases("eval"):
        correct = np.zeros(world.size)
        other = state.net.copy()
        for r in range(world.size):
            other.params[...] = world.bcast(state.net.params if world.rank == r else None, root=r)
            correct[r] = score(other, data.test_images, data.test_labels)[0]
        if world.size > 1:
            allreduce(run, state, "score", correct)
    return [float(c) / data.test_total for c in correct]


def watch_for(cfg: TrainConfig, ranks: int, classes: int = 10) -> Watch:
    """The health watch of this run: its rate against the defaults for its gradient mode; chance is 1/``classes``."""
    usual = defaults.for_mode(cfg.batch_size, cfg.sync, ranks, cfg.epochs)
    return Watch(settled(cfg.lr), cfg.momentum, defaults.in_words(cfg.batch_size, settled(cfg.sync), ranks), usual.lr, usual.momentum, classes=classes)


def warn_if_unhealthy(run: Run, state: LoopState) -> None:
    """Rank 0: print (stderr) any warning due after this epoch: at chance level after epoch 1, a stalled loss."""
    for line in run.watch.after_epoch(state.history, state.progress.global_step):
        print(line, file=sys.stderr, flush=True)


def epoch_line(cfg: TrainConfig, record: EpochRecord) -> str:
    tested = f"  val {record.val_accuracy:7.2%}" if record.val_accuracy is not None else ""
    tested += (
        f"  test {record.test_accuracy:7.2%}" if record.test_accuracy is not None and not math.isnan(record.test_accuracy) else ""
    )  # nan: nothing to score
    return (
        f"epoch {record.epoch:>{len(str(cfg.epochs))}}/{cfg.epochs}  lr {record.lr:.4g}"
        f"  train loss {record.train_loss:.4f}{tested}  {record.train_seconds:6.1f} s"
    )
