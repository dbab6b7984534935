"""Checkpoints: all a run needs to continue bit for bit, in one file written atomically.

Every rank's state that matters -- its parameters (they differ between ranks
until they are averaged), momentum, shuffling generator, the order of its
slice and the position in it -- is gathered to rank 0, which writes one
``checkpoint.npz`` through a temporary file, fsync and rename. A kill during
the write leaves the previous checkpoint intact. The file holds plain arrays
and a JSON header, nothing pickled. A checkpoint records the configuration
and the number of ranks, and resuming with anything else is refused.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .errors import UserError
from .files import write_atomically
from .model_io import npz_bytes

FILE = "checkpoint.npz"
FORMAT = "pnn_mpi-checkpoint-1"

# Settings that change where files are or how often a run reports, not what it computes.
_NOT_IDENTITY = ("out", "data_dir", "eval_every", "checkpoint_every", "resume", "expect_ranks")


def identity(cfg: TrainConfig) -> dict:
    """The part of a configuration that a resumed run must share with the original."""
    return {k: v for k, v in cfg.as_dict().items() if k not in _NOT_IDENTITY}


@dataclass
class RankState:
    """One rank's training state between two steps."""

    params: np.ndarray
    velocity: np.ndarray | None
    order: np.ndarray  # this epoch's order of the rank's slice
    rng: dict  # the shuffling generator's bit_generator.state
    loss_sum: float  # summed training loss of the epoch so far


@dataclass
class Progress:
    """Where the run stands (the same on every rank)."""

    epoch: int = 0  # 0-based epoch in progress
    step: int = 0  # next step within the epoch
    global_step: int = 0  # steps taken since the start of training
    in_sync: bool = True
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # EpochRecord fields
    clocks: list[dict] = field(default_factory=list)  # every rank's Clock fields


def save(path: Path, cfg: TrainConfig, ranks: int, progress: Progress, states: list[RankState]) -> None:
    header = {
        "format": FORMAT,
        "config": identity(cfg),
        "ranks": ranks,
        "progress": asdict(progress),
        "rng": [s.rng for s in states],
        "loss_sums": [s.loss_sum for s in states],
    }
    arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
    for rank, state in enumerate(states):
        arrays[f"params_{rank}"] = state.params
        arrays[f"order_{rank}"] = state.order
        if state.velocity is not None:
            arrays[f"velocity_{rank}"] = state.velocity
    write_atomically(Path(path), npz_bytes(arrays))


def load(path: Path, cfg: TrainConfig, ranks: int) -> tuple[Progress, list[RankState]]:
    """The checkpoint in ``path``, after checking it belongs to this configuration and rank count."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(str(arrays.pop("header")))
    except FileNotFoundError:
        raise UserError(f"{path}: no checkpoint to resume from") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable pnn_mpi checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UserError(f"{path}: not a pnn_mpi checkpoint")
    if header["ranks"] != ranks:
        raise UserError(f"{path}: written by a run of {header['ranks']} ranks, cannot resume with {ranks}; relaunch with -n {header['ranks']}")
    ours = json.loads(json.dumps(identity(cfg)))  # lists and tuples compared alike
    differs = sorted(k for k in set(ours) | set(header["config"]) if ours.get(k) != header["config"].get(k))
    if differs:
        shown = ", ".join(f"--{k.replace('_', '-')} {header['config'].get(k)!r} (now {ours.get(k)!r})" for k in differs)
        raise UserError(f"{path}: written with other settings: {shown}; resume with the same flags")
    states = []
    for rank in range(ranks):
        states.append(
            RankState(
                params=arrays[f"params_{rank}"],
                velocity=arrays.get(f"velocity_{rank}"),
                order=arrays[f"order_{rank}"],
                rng=header["rng"][rank],
                loss_sum=header["loss_sums"][rank],
            )
        )
    return Progress(**header["progress"]), states
