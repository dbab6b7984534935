"""The training defaults that follow the gradient mode: learning rate, schedule, warm-up, sync.

One learning rate cannot serve every mode: with batch 1 the mini-batch rate
and momentum (0.05, 0.9) end at chance level, a full-batch epoch is a single
step, and averaging gradients over P ranks makes every step see P times the
samples. So a setting left unset gets the value of this table for the run's
mode, and a value the user sets (flag or TOML) always wins. The numbers come
from the sweep in ``study/grids/defaults.toml`` (README, "Defaults").

| mode | sync | lr | momentum | schedule | warm-up |
|---|---|---|---|---|---|
| batch 1 (stochastic) | epoch | BASE_LR x B/32 = 0.05/32 = 0.0016 | 0.9 | cosine | none |
| mini-batch b | grad | BASE_LR x B/32 = 0.05 x B/32, at most MAX_LR = 0.8 | 0.9 | cosine | 1 epoch if B > 32 |
| full batch | epoch | FULL_LR = 0.3 | 0.9 | constant | none |

Momentum 0.9 did best in every mode, so it is one plain default (MOMENTUM).

B is the number of samples one update sees: b, or P*b when gradients are
averaged across P ranks (``grad``), so the rate follows the global batch (the
linear scaling rule: measured best near 0.05 at B = 32, 0.2 at 128 and 0.8 at
512, and for batch 1 between 0.001 and 0.002) and the warm-up keeps the first
steps of a scaled rate from throwing the network off. Batch 1 averages
parameters, not gradients: an Allreduce per sample would cost more than the step.

Resolution needs the number of ranks, so it happens when the run starts
(``resolve``), not when the flags are parsed; the resolved values are what
the header, the checkpoint and ``metrics.json`` show.
"""

from __future__ import annotations

from dataclasses import dataclass

STOCHASTIC, MINI_BATCH, FULL = "batch 1", "mini-batch", "full batch"

MOMENTUM = 0.9
BASE_LR, BASE_BATCH, MAX_LR = 0.05, 32, 0.8
FULL_LR = 0.3
WARMUP_EPOCHS = 1

# The settings this module fills in; each is None in a TrainConfig until resolved.
FOLLOWING = ("lr", "lr_schedule", "warmup", "sync")


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


def mini_batch_lr(samples: int) -> float:
    """The linear scaling rule: BASE_LR per BASE_BATCH samples, capped at MAX_LR."""
    return min(MAX_LR, BASE_LR * samples / BASE_BATCH)


def for_mode(batch_size, sync: str | None, ranks: int) -> ModeDefaults:
    """The defaults for this batch size on ``ranks`` ranks; ``sync`` is the user's (None: the mode's own)."""
    mode = mode_of(batch_size)
    sync = sync or default_sync(batch_size)
    if mode == FULL:
        return ModeDefaults(mode, FULL_LR, MOMENTUM, "constant", 0, sync)
    samples = int(batch_size) * (ranks if sync == "grad" else 1)
    return ModeDefaults(mode, mini_batch_lr(samples), MOMENTUM, "cosine", WARMUP_EPOCHS if samples > BASE_BATCH else 0, sync)


def resolve(values: dict, ranks: int) -> dict:
    """``values`` (TrainConfig fields) with every unset (None) setting of FOLLOWING filled in for ``ranks``."""
    found = for_mode(values["batch_size"], values.get("sync"), ranks)
    return {**values, **{k: getattr(found, k) for k in FOLLOWING if values.get(k) is None}}


def in_words(batch_size, sync: str, ranks: int) -> str:
    """The gradient mode as a warning names it: "batch 1", "batch 32 on 4 ranks under grad", "full batch"."""
    if batch_size == "full":
        return FULL
    if sync == "grad" and ranks > 1:
        return f"batch {batch_size} on {ranks} ranks under grad ({int(batch_size) * ranks} samples per update)"
    return f"batch {batch_size}"


def rule_lines() -> list[str]:
    """The rule in a few lines, for --help (built from the constants, so the two never disagree)."""
    scaled = ", ".join(f"{mini_batch_lr(BASE_BATCH * p):g} at {p} rank{'s' * (p > 1)}" for p in (1, 4, 16))
    return [
        f"  batch b (1 or more):   lr {BASE_LR:g} x B/{BASE_BATCH}, at most {MAX_LR:g}, where B = the samples one update sees",
        f"                         (b, or b x ranks under grad); cosine schedule; {WARMUP_EPOCHS} warm-up epoch when B > {BASE_BATCH}",
        f"                         (batch 1: lr {mini_batch_lr(1):.3g}; batch {BASE_BATCH}: lr {scaled})",
        f"  sync:                  {default_sync(2)} for mini-batches, {default_sync(1)} for batch 1 (stochastic) and full batch",
        f"  full batch:            lr {FULL_LR:g}, constant rate, no warm-up",
        f"  momentum {MOMENTUM:g} in every mode. The run's first lines show the values it uses.",
    ]


# --help: what each setting defaults to, in the words of the table above
HELP = {
    "lr": (
        f"follows the batch size: {BASE_LR:g} x B/{BASE_BATCH}, at most {MAX_LR:g}, where B = b x P (ranks) under --sync grad,"
        f" else the batch b (batch 1: {mini_batch_lr(1):.3g}); full batch: {FULL_LR:g}"
    ),
    "lr_schedule": "cosine, but constant for full batch (one step per epoch: decay costs progress)",
    "warmup": f"{WARMUP_EPOCHS} when the mini-batch rate was scaled up (B > {BASE_BATCH}), else 0",
    "sync": "grad for mini-batches, epoch for batch 1 and full batch",
}
