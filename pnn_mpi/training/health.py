"""Warnings about a run that trains without learning: one line each, said once.

A run can finish without an error and still have learned nothing: batch 1
with a mini-batch learning rate and momentum ends at chance level, silently.
Two symptoms are cheap to see from the per-epoch records the loop keeps
anyway, so rank 0 checks them after every epoch:

- the parallel network still at **chance level** after its first epoch
  (test accuracy less than a ninth of the way from the chance rate to 100%:
  20% for ten classes, 55.6% for two; once it has taken enough steps for that
  to mean something: a full-batch epoch is a single step);
- a **training loss that stopped falling**: no epoch of the last few beat the
  best loss before them by a meaningful margin, while that best is still more
  than a tenth of the first epoch's loss (a long run that has converged near
  zero is left alone).

Each warning names the likely cause: the learning rate and momentum for this
batch size, compared with the defaults for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HIGH = 0.1  # a stall matters while the best loss is above this fraction of the first epoch's
PATIENCE = 3  # epochs without a new best training loss before the loss counts as stalled
MIN_GAIN = 1e-3  # relative: a new best must beat the old one by this much
MIN_STEPS = 20  # steps taken before an accuracy near chance means the run is stuck, not just young
CHANCE_SPAN = 1.0 / 9.0  # "at chance level": less than this share of the way from 1/classes to 100% (ten classes: 20%)


def effective_rate(lr: float, momentum: float) -> float:
    """The step heavy-ball momentum settles to: lr / (1 - momentum)."""
    return lr / (1.0 - momentum)


def at_chance(accuracy: float | None, classes: int) -> bool:
    """Whether ``accuracy`` is near what guessing gives among ``classes``: measured on the way from
    chance to 100%, so two classes are not held to twice their chance rate (which is 100%)."""
    chance = 1.0 / max(classes, 1)
    return accuracy is not None and not math.isnan(accuracy) and accuracy < chance + CHANCE_SPAN * (1.0 - chance)


def stalled(losses: list[float], patience: int = PATIENCE) -> tuple[int, float] | None:
    """(epoch, loss) of the best training loss when none of the last ``patience`` epochs beat it
    and it is still high (above ``HIGH`` times the first epoch's), else None.

    Epochs count from 1. A non-finite loss is never a best; a run needs more
    than ``patience`` epochs to stall.
    """
    if len(losses) <= patience:
        return None
    earlier = [(loss, epoch) for epoch, loss in enumerate(losses[:-patience], 1) if math.isfinite(loss)]
    if not earlier:
        return None
    best, epoch = min(earlier)
    recent = [loss for loss in losses[-patience:] if math.isfinite(loss)]
    if recent and min(recent) < best * (1.0 - MIN_GAIN):
        return None
    if math.isfinite(losses[0]) and best <= HIGH * losses[0]:
        return None
    return epoch, best


def _cause(lr: float, momentum: float, batch: str, default_lr: float, default_momentum: float) -> str:
    mine, usual = effective_rate(lr, momentum), effective_rate(default_lr, default_momentum)
    if mine > usual:
        side = "too high"
    elif mine < usual:
        side = "too low"
    else:
        return f"lr {lr:g} and momentum {momentum:g} are the defaults for {batch}; the data or the network may be the problem"
    return (
        f"the learning rate is likely {side} for {batch} (lr {lr:g} with momentum {momentum:g} steps like"
        f" lr {mine:.3g} without; the defaults for {batch} are lr {default_lr:.3g}, momentum {default_momentum:g})"
    )


@dataclass
class Watch:
    """Rank 0's watch over a run's epoch records; each warning is given at most once.

    ``batch`` names the gradient mode in words ("batch 1", "batch 32", "full
    batch"); ``default_lr`` and ``default_momentum`` are that mode's defaults.
    """

    lr: float
    momentum: float
    batch: str
    default_lr: float
    default_momentum: float
    classes: int = 10
    given: set = field(default_factory=set)
    said: list = field(default_factory=list)  # every warning given, for metrics.json

    def after_epoch(self, records: list, steps_done: int) -> list[str]:
        """Warnings due now, from the records so far (``EpochRecord``s) and the steps taken so far."""
        out = []
        first = records[0]
        if "chance" not in self.given and len(records) == 1:
            self.given.add("chance")  # judged once, on the first epoch only
            if steps_done >= MIN_STEPS and at_chance(first.test_accuracy, self.classes):
                out.append(
                    f"pnn_mpi: warning: the parallel network is at chance level after epoch 1 (test accuracy"
                    f" {first.test_accuracy:.2%}): {_cause(self.lr, self.momentum, self.batch, self.default_lr, self.default_momentum)}"
                )
        if "stall" not in self.given:
            found = stalled([r.train_loss for r in records])
            if found:
                self.given.add("stall")
                epoch, best = found
                now = records[-1].train_loss
                out.append(
                    f"pnn_mpi: warning: the training loss stopped falling: {now:.4g} in epoch {len(records)},"
                    f" no better than {best:.4g} in epoch {epoch}: "
                    f"{_cause(self.lr, self.momentum, self.batch, self.default_lr, self.default_momentum)}"
                )
        self.said += out
        return out
