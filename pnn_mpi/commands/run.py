"""One training run from start to finish, as ``python -m pnn_mpi`` performs it.

files -> slice -> network -> train loop -> sync -> evaluate/report: this module
strings the stages together, prints from rank 0 only, and saves the parallel
network and its metrics.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import cast

import numpy as np

from ..common import files
from ..common.console import say
from ..common.errors import INSTALL_MPI, Diverged, Interrupted, UserError
from ..common.version import __version__
from ..common.wording import os_reason, plural
from ..nn.network import parameter_count
from ..parallel.comm import Communicator, current_world, fail_together
from ..parallel.faults import planned_faults
from ..parallel.resilience import RankLost, ResilientWorld, check_fault_tolerance, prepare_process
from ..parallel.signals import StopRequest
from ..parallel.stall import start_watchdog
from ..report import plot
from ..report.metrics import metrics, summary_lines
from ..report.timeline import Timeline
from ..training import checkpoint, identity, memory, outdir
from ..training.checkpoint import Progress, RankState
from ..training.config import TrainConfig, settled
from ..training.defaults import in_words
from ..training.model_io import model_arrays, npz_bytes
from ..training.rank_data import RankData, load_rank_data
from ..training.survive import earlier_failures, failure_line, failure_record, finish_surviving, train_surviving
from ..training.train import Clock, EpochRecord, Hooks, batch_plan, train


def peak_memory_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def default_out_dir(cfg: TrainConfig, ranks: int) -> Path:
    return Path("runs") / f"{cfg.dataset}-n{ranks}-{time.strftime('%Y%m%d-%H%M%S')}"


def header_lines(cfg: TrainConfig, world: Communicator, data: RankData, followed: tuple[str, ...] = ()) -> list[str]:
    sizes = "-".join(str(n) for n in (data.x.shape[1], *cfg.hidden, data.classes))
    per_rank = min(data.slice_sizes) if min(data.slice_sizes) == max(data.slice_sizes) else f"{min(data.slice_sizes)}-{max(data.slice_sizes)}"
    return [
        f"pnn_mpi {__version__}: {plural(world.size, 'rank')}, {world.library()}",
        f"data: {cfg.dataset} from {data.directory}: {data.train_total} training samples ({per_rank} per rank), {data.test_total} test",
        f"network {sizes}, {cfg.activation}, {cfg.output}, init {cfg.init}; batch {cfg.batch_size}, lr {cfg.lr:g},"
        f" momentum {cfg.momentum:g}, {cfg.lr_schedule} schedule"
        + (f", warm-up {cfg.warmup}" if cfg.warmup else "")
        + f", sync {cfg.sync}, {plural(cfg.epochs, 'epoch')}, {cfg.dtype}, seed {cfg.seed}",
    ] + (
        [
            f"defaults for {in_words(cfg.batch_size, settled(cfg.sync), world.size)}: "
            + ", ".join(name.replace("_", "-") for name in followed)
            + " (set them to choose; --help has the rule)"
        ]
        if followed
        else []
    )


def check_world_size(cfg: TrainConfig, world: Communicator) -> None:
    if cfg.expect_ranks is not None and world.size != cfg.expect_ranks and not world.mpi:
        raise UserError(
            f"--expect-ranks {cfg.expect_ranks}: this process runs without MPI, as one rank: {INSTALL_MPI}, then pnn-mpi launch -n {cfg.expect_ranks}"
        )
    if cfg.expect_ranks is not None and world.size != cfg.expect_ranks:
        raise UserError(
            f"expected {cfg.expect_ranks} ranks (--expect-ranks) but MPI started {world.size} in this job: the launcher "
            f"may be starting independent one-rank jobs (with srun, check its --mpi plugin)"
        )


def resume_point(cfg: TrainConfig, world: Communicator, out: Path, expect: checkpoint.Expected | None = None) -> tuple[Progress, RankState] | None:
    """Where a ``--resume`` run continues: rank 0 reads the checkpoint (checked against ``expect``),
    every rank gets its own state."""

    def read():
        path = out / checkpoint.FILE
        if world.rank != 0 or not os.path.lexists(path):
            return None
        return checkpoint.load(path, cfg, world.size, expect)

    found = fail_together(world, read)
    if not world.bcast(found is not None):
        return None
    progress, states = found if found is not None else (None, None)  # found on rank 0 only
    return cast(Progress, world.bcast(progress)), world.scatter(states)


def expectations(cfg: TrainConfig, data: RankData, data_id: dict) -> checkpoint.Expected:
    """What a checkpoint must hold for this run to continue from it."""
    return checkpoint.Expected(
        held=data.held,
        parameters=parameter_count((data.x.shape[1], *cfg.hidden, data.classes)),
        slice_sizes=list(data.slice_sizes),
        steps=batch_plan(cfg, data.slice_sizes).steps,
        data=data_id,
        history_fields=tuple(f.name for f in fields(EpochRecord)),
        clock_fields=tuple(f.name for f in fields(Clock)),
    )


def checkpoint_writer(cfg: TrainConfig, world: Communicator, out: Path, data: dict | None = None, held: dict | None = None):
    """A collective that gathers every rank's state to rank 0, which writes it atomically
    (with ``data``, the data's identity, and ``held``, who holds which records when a resumed
    run's ranks hold the survivors' records; a surviving run passes its own with each call)."""

    injected = planned_faults()
    launch_rank = getattr(world, "launch_rank", world.rank)

    def inject(epoch: int) -> None:
        for fault in injected:
            fault.fire_in_checkpoint(launch_rank, epoch)

    launched_held = held

    def write(progress: Progress, state: RankState, held: dict | None = launched_held) -> None:
        if world.rank != 0:
            inject(progress.epoch)
        states = world.gather(state)

        def save() -> None:
            if world.rank == 0:
                assert states is not None  # gathered to rank 0
                lost = getattr(world, "lost", [])
                for name in os.listdir(out) if lost else ():  # a rank that died writing the last one may have left its temporary
                    if files.is_our_temporary(name) and name.endswith(checkpoint.FILE):
                        (out / name).unlink(missing_ok=True)
                try:
                    checkpoint.save(
                        out / checkpoint.FILE, cfg, world.size, progress, states, data, lost=lost, held=held, before_rename=lambda: inject(progress.epoch)
                    )
                except OSError as exc:
                    raise UserError(f"--out {out}: cannot write the checkpoint ({os_reason(exc)}); the previous one is intact") from None

        fail_together(world, save)

    return write


def start_timeline(cfg: TrainConfig, world: Communicator) -> Timeline | None:
    """The rank's timeline recorder when ``--timeline`` asks for one (its folder checked writable first)."""
    if not cfg.timeline:
        return None

    def check() -> None:
        if world.rank == 0:
            folder = Path(cfg.timeline or "").resolve().parent
            if Path(cfg.timeline or "").is_dir():
                raise UserError(f"--timeline {cfg.timeline}: is a directory; name the file to write")
            if not folder.is_dir():
                raise UserError(f"--timeline {cfg.timeline}: the folder {folder} does not exist")
            if not os.access(folder, os.W_OK):
                raise UserError(f"--timeline {cfg.timeline}: cannot write in {folder}")

    fail_together(world, check)
    return Timeline(world)


def finish_timeline(
    cfg: TrainConfig, world: Communicator, recorder: Timeline | None, stop: StopRequest, data: RankData, train_seconds: float | None, saved: Path | None = None
) -> None:
    """Gather every rank's timeline and write it (rank 0); a collective, reached by all ranks alike.
    ``saved``: the run folder, when the model was saved there before (a failed write says so)."""
    if recorder is None:
        return
    for name, at in stop.arrivals:
        recorder.instant(f"signal {name}", at)
    sizes = [data.x.shape[1], *cfg.hidden, data.classes]
    meta = {
        "pnn_mpi_version": __version__,
        "ranks": world.size,
        "sizes": sizes,
        "samples": data.train_total,
        "slice_sizes": data.slice_sizes,
        "sync": str(cfg.schedule),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
        "train_seconds": train_seconds,
    }

    def write() -> None:
        try:
            recorder.gather_and_write(Path(cfg.timeline or ""), meta)
        except OSError as exc:
            kept = f"; the model and metrics were saved in {saved}" if saved else ""
            raise UserError(f"--timeline {cfg.timeline}: cannot write it ({os_reason(exc)}){kept}") from None

    fail_together(world, write)
    if world.rank == 0:
        say(f"wrote the timeline {cfg.timeline} (open it in ui.perfetto.dev)")


def start_world(cfg: TrainConfig) -> Communicator:
    """The ranks of this job: a world that survives lost ranks with ``--on-rank-failure continue``."""
    injected = planned_faults()
    launcher_rank = int(os.environ.get("PMIX_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "-1")))
    for fault in injected:
        fault.fire_at_start(launcher_rank, "before-init")
    if cfg.on_rank_failure != "continue":
        plain = current_world()
        for fault in injected:
            fault.fire_at_start(plain.rank, "at-start")
        start_watchdog(plain, cfg.stall_timeout)  # a rank that stops responding ends the job in one line
        return plain
    prepare_process(cfg.on_rank_failure, cfg.stall_timeout)  # before MPI starts
    base = current_world()
    for fault in injected:
        fault.fire_at_start(base.rank, "at-start")
    if not base.mpi or base.size == 1:
        return base  # one rank: nobody to lose
    check_fault_tolerance(base)  # before the resilient world's first ULFM call
    return ResilientWorld(getattr(base, "comm", None))


def run_training(cfg: TrainConfig, world: Communicator | None = None) -> dict | None:
    """Train as configured; rank 0 returns the metrics record, other ranks None.

    Under ``--on-rank-failure continue`` a rank lost while the run is set up (the checks,
    the folder, loading) leaves the survivors to set it up again among themselves, as if
    the lost rank had died at start-up; once training began, survive.py carries them on."""
    world = world or start_world(cfg)
    begun = Begun()
    while True:
        try:
            return _run_training(cfg, world, begun)
        except RankLost as lost:
            if begun.training or not isinstance(world, ResilientWorld):
                raise
            world.set_up_again()
            if world.rank == 0:
                say(f"lost rank {', '.join(map(str, lost.lost))} before training: setting up again with {plural(world.size, 'rank')}")


class Begun:
    """Whether training began (a rank lost before it makes the survivors set the run up again)."""

    training = False


def _run_training(cfg: TrainConfig, world: Communicator, begun: Begun) -> dict | None:
    identity.agree(world, "configuration", identity.resolved_config(cfg))  # the first collective: all ranks run one run
    check_world_size(cfg, world)
    followed = tuple(cfg.unset())
    held = survivors_holdings(cfg, world)
    # The defaults rule needs the number of ranks: the launch's, also for survivors (of a loss at start-up, or resumed).
    cfg = cfg.resolved(held["launched_ranks"] if held else getattr(world, "launch_size", world.size))
    stop = StopRequest().install()
    if cfg.resume and not cfg.out:
        raise UserError("--resume needs --out DIR: the folder of the run to continue")
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg, world.size)
    fail_together(world, lambda: plot.require_matplotlib() if cfg.plot and world.rank == 0 else None)  # before, not after, training
    created = missing_folders(out) if world.rank == 0 else []
    try:
        folder = fail_together(world, lambda: outdir.RunFolder.claim(out, cfg.overwrite, cfg.resume) if world.rank == 0 else None)  # held until the run ends
        try:
            return _train_into(cfg, world, out, stop, followed, held, begun)
        finally:
            if folder is not None:
                folder.release()
    except BaseException:
        remove_unused(created)
        raise


def survivors_holdings(cfg: TrainConfig, world: Communicator) -> dict | None:
    """Which records each rank holds when ``--resume`` continues a checkpoint of ranks that survived
    lost ones (checkpoint.peek_held), else None; a resume with another rank count fails here, in one line."""
    if not (cfg.resume and cfg.out):
        return None
    path = Path(cfg.out) / checkpoint.FILE
    held = fail_together(world, lambda: checkpoint.peek_held(path, world.size) if world.rank == 0 else None)
    return world.bcast(held)


def missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, deepest first (a name no folder can have: none)."""
    try:
        return [p for p in (out, *out.parents) if not p.exists()]
    except (OSError, ValueError):
        return []


def remove_unused(created: list[Path]) -> None:
    """Take back the folders (deepest first) a run created, when it failed before writing anything
    into them: no empty ``runs/...`` stays behind. Only a folder holding nothing but the lock goes."""
    for folder in created:
        try:
            if {p.name for p in folder.iterdir()} <= {outdir.LOCK}:
                (folder / outdir.LOCK).unlink(missing_ok=True)
            folder.rmdir()
        except (OSError, ValueError):
            return  # not ours to remove, or not empty: so are its parents


def _train_into(cfg: TrainConfig, world: Communicator, out: Path, stop: StopRequest, followed: tuple[str, ...], held: dict | None, begun: Begun) -> dict | None:
    data_id = fail_together(world, lambda: identity.data_identity(cfg))
    identity.agree(world, "data", data_id)
    for fault in planned_faults():
        fault.fire_at_start(getattr(world, "launch_rank", world.rank), "in-setup")
    share = memory.ranks_on_this_machine(world)
    recorder = start_timeline(cfg, world)
    began = time.perf_counter()
    data = load_rank_data(cfg, world, fits=lambda train_n, test_n, pixels: memory.check_training(cfg, world, share, train_n, test_n, pixels), held=held)
    if recorder:
        recorder.span("load", began, time.perf_counter())
    if not cfg.full_batch and int(cfg.batch_size) > min(data.slice_sizes):
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than a rank's slice ({min(data.slice_sizes)} samples"
            f" with {plural(world.size, 'rank')}): use a smaller batch, --batch-size full" + (", or fewer ranks" if world.size > 1 else "")
        )
    resume = resume_point(cfg, world, out, expectations(cfg, data, data_id)) if cfg.resume else None
    if world.rank == 0:
        for line in header_lines(cfg, world, data, followed):
            say(line)
        if resume:
            say(f"resuming from {out / checkpoint.FILE}: epoch {resume[0].epoch + 1}, step {resume[0].step}")
    hooks = Hooks(
        stop_reason=stop, checkpoint=checkpoint_writer(cfg, world, out, data_id, held), resume=resume, phase_listener=recorder.listener if recorder else None
    )
    surviving = isinstance(world, ResilientWorld)
    begun.training = True
    try:
        with np.errstate(all="ignore"):  # a diverging run is reported once, by the loop's own check
            if surviving:
                result, data, failures = train_surviving(cfg, world, data, log=say, hooks=hooks)
            else:
                result = train(cfg, world, data, log=say, hooks=hooks)
    except Diverged as exc:
        finish_timeline(cfg, world, recorder, stop, data, None)  # every rank raised it at the same check
        raise UserError(str(exc)) from None
    except Interrupted:
        finish_timeline(cfg, world, recorder, stop, data, None)
        raise
    if surviving:
        finish_timeline(cfg, world, recorder, stop, data, result.train_seconds)
        return finish_surviving(world, result, data, failures, lambda: report_and_save(cfg, world, out, data, result, failures))
    record = report_and_save(cfg, world, out, data, result)  # the model first: a side output never costs it
    finish_timeline(cfg, world, recorder, stop, data, result.train_seconds, saved=out)
    return record


def report_and_save(cfg: TrainConfig, world: Communicator, out: Path, data: RankData, result, failures=None) -> dict | None:
    """Gather the figures, print the summary and save the model and metrics (rank 0); collective."""
    for fault in planned_faults():
        fault.fire_in_save(getattr(world, "launch_rank", world.rank))
    loads = world.allgather(data.load_seconds)
    peaks = world.allgather(peak_memory_mib())
    record = None
    if world.rank == 0:
        mpi = {"name": world.library(), "version": world.library_version()}
        record = metrics(cfg, result, data, world.size, mpi, loads, peaks)
        if failures is None and data.held:  # resumed from survivors, not surviving now: the losses before
            failures = earlier_failures(data.held)
        if failures is not None:
            record.update(failure_record(world, failures, data.held, cfg.on_rank_failure))
        for line in filter(None, [*summary_lines(record), failure_line(record)]):
            say(line)

    held: list[outdir.RunFolder] = []

    def save() -> None:
        if world.rank == 0:
            if getattr(world, "launch_rank", 0) != getattr(world, "start_members", (0,))[0]:  # the rank that claimed the folder is lost:
                held.append(outdir.RunFolder.take_over(out))  # hold it here, so no other run claims it meanwhile
            meta = {"dataset": cfg.dataset, "image_shape": "x".join(map(str, data.image_shape)), "ranks": str(world.size)}
            try:  # model and metrics together, or neither (outdir.py); rank 0 always has its record
                outdir.save_results(out, npz_bytes(model_arrays(result.net, meta)), record or {})
            except OSError as exc:
                raise UserError(f"--out {out}: cannot save the results ({os_reason(exc)}); the previous model and metrics are intact") from None
            say(f"saved {out / 'model.npz'} and {out / 'metrics.json'}")

    fail_together(world, save)  # a failed save on rank 0 fails every rank alike
    if cfg.plot and world.rank == 0:
        say(f"plotted {plot.plot_run(out)}")
    for folder in held:
        folder.release()
    return record
