"""The training defaults that follow the gradient mode: learning rate, schedule, warm-up, sync.

One learning rate cannot serve every mode: with batch 1 the mini-batch rate
and momentum (0.05, 0.9) end at chance level, a full-batch epoch is a single
step, and every average over P ranks pools P times the samples. So a setting
left unset gets the value of this table for the run's mode, and a value the
user sets (flag or TOML) always wins. The numbers come from the sweeps in
``study/grids/defaults.toml`` and ``study/grids/local.toml`` (docs/science.md, "How the defaults were found").

| mode | sync | lr | momentum | schedule | warm-up |
|---|---|---|---|---|---|
| batch 1 (stochastic) | epoch | BASE_LR x 1/32 = 0.0016 | 0.9 | cosine | none |
| mini-batch b | local:5:64 | the one-rank rate BASE_LR x b/32 times 1 + log2 P, at most LOCAL_MAX_LR (on one rank: BASE_LR x b/32, at most MAX_LR) | 0.9 | cosine | LOCAL_WARMUP if B > 32 (fewer in short runs) |
| mini-batch b, --sync grad | grad | BASE_LR x B/32, at most MAX_LR | 0.9 | cosine | 1 epoch if B > 32 |
| full batch | epoch | FULL_LR = 0.3 | 0.9 | constant | none |

Momentum 0.9 did best in every mode, so it is one plain default (MOMENTUM).

B is the number of samples that one average pools: b x P under ``local`` and
``grad``; b alone under ``epoch``, ``steps:K`` and ``end``, whose ranks drift
apart for long stretches. ``grad`` takes the linear scaling rule (measured best
near 0.05 at B = 32, 0.2 at 128 and 0.8 at 512). ``local`` grows its rate more
slowly, with the logarithm of the ranks: each local step still sees only b
samples, and a harder dataset (Fashion-MNIST) lost accuracy above that rate
where MNIST still gained (0.15 at P = 4: 0.5 points better on Fashion-MNIST
than the linear 0.2, and no worse on MNIST); at most 0.25. The mini-batch
default averages parameters (the paper's method): ``local`` averages parameters
and momentum every 5 steps at the peak rate, less often while it is lower,
with a tenth of ``grad``'s Allreduces. On one rank there is nothing to average
and every schedule takes the same steps: the rule gives today's single-network
rate there. Batch 1 averages after every epoch: an Allreduce per few samples
would cost more than the steps.

Resolution needs the number of ranks, so it happens when the run starts
(``resolve``), not when the flags are parsed; the resolved values are what
the header, the checkpoint and ``metrics.json`` show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..parallel.sync import Sync

STOCHASTIC, MINI_BATCH, FULL = "batch 1", "mini-batch", "full batch"

MOMENTUM = 0.9
BASE_LR, BASE_BATCH, MAX_LR = 0.05, 32, 0.8
LOCAL_MAX_LR = 0.25  # local SGD's cap on more than one rank
FULL_LR = 0.3
WARMUP_EPOCHS = 1
LOCAL_WARMUP = 2  # local SGD's warm-up epochs on more than one rank, when its rate was scaled up
MINI_BATCH_SYNC = str(Sync.parse("local"))  # local:5:64

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
    """Parameter averaging in every mode (the paper's method): ``local`` for mini-batches,
    after every epoch for batch 1 (an Allreduce per few samples would cost more than the
    steps) and full batch (one step per epoch: every schedule takes the same steps)."""
    return MINI_BATCH_SYNC if mode_of(batch_size) == MINI_BATCH else "epoch"


def mini_batch_lr(samples: int, cap: float = MAX_LR) -> float:
    """The linear scaling rule: BASE_LR per BASE_BATCH samples, at most ``cap``."""
    return min(cap, BASE_LR * samples / BASE_BATCH)


def local_lr(batch_size: int, ranks: int) -> float:
    """``local``'s rate on ``ranks`` ranks: the one-rank rate of the batch times 1 + log2 P, at most
    LOCAL_MAX_LR (batch 32: 0.05, 0.1, 0.15, 0.2, 0.25 at P = 1, 2, 4, 8, 16)."""
    return min(LOCAL_MAX_LR, float(f"{mini_batch_lr(batch_size) * (1 + math.log2(ranks)):.12g}"))  # 0.15, not 0.15000000000000002


def local_warmup(epochs: int) -> int:
    """LOCAL_WARMUP epochs in a run of 10 or more, one in a shorter run, none in a run of one
    epoch: a warm-up never takes the whole run."""
    return min(LOCAL_WARMUP, max(1, epochs // 5), epochs - 1)


def for_mode(batch_size, sync: str | None, ranks: int, epochs: int = 10) -> ModeDefaults:
    """The defaults for this batch size on ``ranks`` ranks over ``epochs`` epochs; ``sync`` is the
    user's (None: the mode's own)."""
    mode = mode_of(batch_size)
    sync = sync or default_sync(batch_size)
    if mode == FULL:
        return ModeDefaults(mode, FULL_LR, MOMENTUM, "constant", 0, sync)
    kind = Sync.parse(sync).kind
    pooled = kind in ("grad", "local")
    samples = int(batch_size) * (ranks if pooled else 1)
    local = kind == "local" and ranks > 1
    lr = local_lr(int(batch_size), ranks) if local else mini_batch_lr(samples)
    warmup = (local_warmup(epochs) if local else WARMUP_EPOCHS) if samples > BASE_BATCH else 0
    return ModeDefaults(mode, lr, MOMENTUM, "cosine", warmup, sync)


def resolve(values: dict, ranks: int) -> dict:
    """``values`` (TrainConfig fields) with every unset (None) setting of FOLLOWING filled in for ``ranks``."""
    found = for_mode(values["batch_size"], values.get("sync"), ranks, values.get("epochs", 10))
    return {**values, **{k: getattr(found, k) for k in FOLLOWING if values.get(k) is None}}


def in_words(batch_size, sync: str, ranks: int) -> str:
    """The gradient mode as a warning names it: "batch 1", "batch 32 on 4 ranks under grad", "full batch"."""
    if batch_size == "full":
        return FULL
    kind = Sync.parse(sync).kind
    if kind in ("grad", "local") and ranks > 1:
        return f"batch {batch_size} on {ranks} ranks under {kind} ({int(batch_size) * ranks} samples per average)"
    return f"batch {batch_size}"


def rule_lines() -> list[str]:
    """The rule in a few lines, for --help (built from the constants, so the two never disagree)."""
    local = ", ".join(f"{for_mode(BASE_BATCH, None, p).lr:g} at {p} rank{'s' * (p > 1)}" for p in (1, 4, 16))
    grad = ", ".join(f"{for_mode(BASE_BATCH, 'grad', p).lr:g}" for p in (1, 4, 16))
    return [
        f"  sync:                  {default_sync(2)} for mini-batches (parameters and momentum averaged every 5 local steps",
        f"                         at the peak rate, less often while it is lower, at most 64), {default_sync(1)} for batch 1 and full batch",
        f"  batch b (1 or more):   lr {BASE_LR:g} x b/{BASE_BATCH} on one rank (at most {MAX_LR:g}); on P ranks under local that",
        f"                         times 1 + log2 P, at most {LOCAL_MAX_LR:g}; under grad {BASE_LR:g} x b x P/{BASE_BATCH}, at most {MAX_LR:g};",
        "                         under epoch, steps and end the one-rank rate; cosine schedule;",
        f"                         warm-up when B > {BASE_BATCH}: {LOCAL_WARMUP} epochs under local on 2+ ranks (1 in runs under",
        f"                         10 epochs, none in 1), else {WARMUP_EPOCHS}",
        f"                         (batch 1: lr {mini_batch_lr(1):.3g}; batch {BASE_BATCH}: lr {local}; under grad {grad})",
        f"  full batch:            lr {FULL_LR:g}, constant rate, no warm-up",
        f"  momentum {MOMENTUM:g} in every mode. The run's first lines show the values it uses.",
    ]


# --help: what each setting defaults to, in the words of the table above
HELP = {
    "lr": (
        f"follows the batch b and ranks P: {BASE_LR:g} x b/{BASE_BATCH} on one rank (at most {MAX_LR:g}); under local that times"
        f" 1 + log2 P, at most {LOCAL_MAX_LR:g}; under grad {BASE_LR:g} x b x P/{BASE_BATCH}, at most {MAX_LR:g}"
        f" (batch 1: {mini_batch_lr(1):.3g}); full batch: {FULL_LR:g}"
    ),
    "lr_schedule": "cosine, but constant for full batch (one step per epoch: decay costs progress)",
    "warmup": (
        f"when the rate was scaled up (B > {BASE_BATCH}): {LOCAL_WARMUP} under local on 2+ ranks (1 in runs under 10 epochs,"
        f" none in 1), else {WARMUP_EPOCHS}; otherwise 0"
    ),
    "sync": f"{default_sync(2)} for mini-batches, epoch for batch 1 and full batch",
}
