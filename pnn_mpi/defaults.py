"""The training defaults that follow the gradient mode: learning rate, momentum, schedule, sync.

One learning rate cannot serve every mode: with batch 1 the mini-batch rate
and momentum (0.05, 0.9) end at chance level, a full-batch epoch is a single
step, and averaging gradients over P ranks makes every step see P times the
samples. So a setting left unset gets the value of this table for the run's
mode, and a value the user sets (flag or TOML) always wins. The numbers come
from the sweep in ``study/grids/defaults.toml`` (README, "Defaults").

| mode | sync | lr | momentum | schedule | warm-up |
|---|---|---|---|---|---|
| batch 1 (stochastic) | epoch | STOCHASTIC_LR | STOCHASTIC_MOMENTUM | cosine | none |
| mini-batch b | grad | BASE_LR x B/32, at most MAX_LR | 0.9 | cosine | 1 epoch if B > 32 |
| full batch | epoch | FULL_LR | 0.9 | constant | none |

B is the number of samples one update sees: b, or P*b when gradients are
averaged across P ranks (``grad``), so the rate follows the global batch (the
linear scaling rule) and the warm-up keeps the first steps of a scaled rate
from throwing the network off.

Resolution needs the number of ranks, so it happens when the run starts
(``resolve``), not when the flags are parsed; the resolved values are what
the header, the checkpoint and ``metrics.json`` show.
"""

from __future__ import annotations

from dataclasses import dataclass

STOCHASTIC, MINI_BATCH, FULL = "batch 1", "mini-batch", "full batch"

STOCHASTIC_LR, STOCHASTIC_MOMENTUM = 0.001, 0.9
BASE_LR, BASE_BATCH, MAX_LR, MINI_BATCH_MOMENTUM = 0.05, 32, 0.8, 0.9
FULL_LR, FULL_MOMENTUM = 0.3, 0.9
WARMUP_EPOCHS = 1

# The settings this module may fill in; each is None in a TrainConfig until resolved.
FOLLOWING = ("lr", "momentum", "lr_schedule", "warmup", "sync")


@dataclass(frozen=True)
class ModeDefaults:
    mode: str
    lr: float
    momentum: float
    lr_schedule: str
    warmup: int
    sync: str


def mode_of(batch_size) -> str:
    if batch_size == "full":
        return FULL
    return STOCHASTIC if batch_size == 1 else MINI_BATCH


def default_sync(batch_size) -> str:
    """Gradient averaging for mini-batches; parameter averaging after every epoch for batch 1
    (an Allreduce per sample would cost more than the step) and full batch (one step per epoch:
    both schedules take the same steps)."""
    return "grad" if mode_of(batch_size) == MINI_BATCH else "epoch"


def update_batch(batch_size, sync: str, ranks: int) -> int | None:
    """Samples one update sees: the local batch, times P when gradients are averaged (None: full batch)."""
    if batch_size == "full":
        return None
    return int(batch_size) * (ranks if sync == "grad" else 1)


def mini_batch_lr(samples: int) -> float:
    """The linear scaling rule: BASE_LR per BASE_BATCH samples, capped at MAX_LR."""
    return min(MAX_LR, BASE_LR * samples / BASE_BATCH)


def for_mode(batch_size, sync: str | None, ranks: int) -> ModeDefaults:
    """The defaults for this batch size on ``ranks`` ranks; ``sync`` is the user's (None: the mode's own)."""
    mode = mode_of(batch_size)
    sync = sync or default_sync(batch_size)
    if mode == STOCHASTIC:
        return ModeDefaults(mode, STOCHASTIC_LR, STOCHASTIC_MOMENTUM, "cosine", 0, sync)
    if mode == FULL:
        return ModeDefaults(mode, FULL_LR, FULL_MOMENTUM, "constant", 0, sync)
    samples = update_batch(batch_size, sync, ranks)
    return ModeDefaults(mode, mini_batch_lr(samples), MINI_BATCH_MOMENTUM, "cosine", WARMUP_EPOCHS if samples > BASE_BATCH else 0, sync)


def resolve(values: dict, ranks: int) -> dict:
    """``values`` (TrainConfig fields) with every unset (None) setting of FOLLOWING filled in for ``ranks``."""
    found = for_mode(values["batch_size"], values.get("sync"), ranks)
    return {**values, **{k: getattr(found, k) for k in FOLLOWING if values.get(k) is None}}


def describe(batch_size, ranks: int) -> str:
    """The defaults for a batch size, in words, e.g. for a warning."""
    d = for_mode(batch_size, None, ranks)
    return f"lr {d.lr:g}, momentum {d.momentum:g}, {d.lr_schedule} schedule, sync {d.sync}"
