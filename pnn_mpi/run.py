"""One training run from start to finish, as ``python -m pnn_mpi`` performs it.

files -> slice -> network -> train loop -> sync -> evaluate/report: this module
strings the stages together, prints from rank 0 only, and saves the parallel
network and its metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import __version__
from .comm import World, agree
from .config import TrainConfig
from .data import RankData, load_rank_data
from .errors import UserError
from .model_io import save_model
from .report import metrics, summary_lines, write_metrics
from .train import train


def say(text: str) -> None:
    print(text, flush=True)


def default_out_dir(cfg: TrainConfig, ranks: int) -> Path:
    return Path("runs") / f"{cfg.dataset}-n{ranks}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and prove it writable now, not after training has been paid for."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pnn_mpi-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def header_lines(cfg: TrainConfig, world: World, data: RankData) -> list[str]:
    sizes = "-".join(str(n) for n in (data.x.shape[1], *cfg.hidden, 10))
    per_rank = min(data.slice_sizes) if min(data.slice_sizes) == max(data.slice_sizes) else f"{min(data.slice_sizes)}-{max(data.slice_sizes)}"
    return [
        f"pnn_mpi {__version__}: {world.size} rank{'s' * (world.size > 1)}, {world.library()}",
        f"data: {cfg.dataset} from {data.directory}: {data.train_total} training samples ({per_rank} per rank), {len(data.test_labels)} test",
        f"network {sizes}, {cfg.activation}, {cfg.output}, init {cfg.init}; batch {cfg.batch_size}, lr {cfg.lr},"
        f" momentum {cfg.momentum}, sync {cfg.sync}, {cfg.epochs} epochs, {cfg.dtype}, seed {cfg.seed}",
    ]


def run_training(cfg: TrainConfig, world: World | None = None) -> dict | None:
    """Train as configured; rank 0 returns the metrics record, other ranks None."""
    world = world or World()
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg, world.size)
    agree(world, lambda: prepare_out_dir(out) if world.rank == 0 else None)
    data = load_rank_data(cfg, world)
    if cfg.batch_size != "full" and cfg.batch_size > min(data.slice_sizes):
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than a rank's slice ({min(data.slice_sizes)} samples"
            f" with {world.size} ranks): use a smaller batch, --batch-size full, or fewer ranks"
        )
    if world.rank == 0:
        for line in header_lines(cfg, world, data):
            say(line)
    result = train(cfg, world, data, log=say)
    loads = world.allgather(data.load_seconds)
    record = None
    if world.rank == 0:
        mpi = {"name": world.library(), "version": world.library_version()}
        record = metrics(cfg, result, data, world.size, mpi, loads)
        for line in summary_lines(record):
            say(line)

    def save() -> None:
        if world.rank == 0:
            meta = {"dataset": cfg.dataset, "image_shape": "x".join(map(str, data.image_shape)), "ranks": str(world.size)}
            try:
                save_model(out / "model.npz", result.net, meta)
                write_metrics(out / "metrics.json", record)
            except OSError as exc:
                raise UserError(f"--out {out}: cannot save the results ({exc.strerror or exc})") from None
            say(f"saved {out / 'model.npz'} and {out / 'metrics.json'}")

    agree(world, save)  # a failed save on rank 0 fails every rank alike
    return record
