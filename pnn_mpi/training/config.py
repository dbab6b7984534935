"""The training configuration: one frozen record, checked once, saved with the model.

Flags and TOML files both end up here, so every value is validated in one place
and ``metrics.json`` can store exactly what was run. The learning rate,
schedule, warm-up and sync stay unset (None) unless the user sets
them; ``resolved(ranks)`` fills them in from the gradient mode's defaults
(``defaults.py``) when the run knows its number of ranks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TypeVar, Union

from ..common.errors import UserError
from ..nn.activations import ACTIVATIONS
from ..nn.initializers import INITIALIZERS
from ..nn.kernels import numba_available
from ..nn.losses import OUTPUTS
from ..nn.optim import SCHEDULES
from ..parallel.sync import Sync
from . import defaults

T = TypeVar("T")
ON_RANK_FAILURE = ("abort", "continue")

DTYPES = ("float32", "float64")
KERNELS = ("auto", "numba", "numpy", "generic")
FULL_BATCH = "full"


def settled(value: T | None) -> T:
    """A setting the defaults rule has filled in (``TrainConfig.resolved``): None here is a bug, not a user error."""
    if value is None:
        raise RuntimeError("a training setting is still unset: resolve the configuration first (TrainConfig.resolved)")
    return value


def runs_batch_one_kernel(batch: int, sync: Sync, kernel: str) -> bool:
    """Whether steps of ``batch`` samples under ``sync`` run through a batch-1 kernel (nn/kernels.py,
    many samples a call): batch 1, no gradient sum at every step, a kernel other than the plain step.
    The trainer picks its step by it, and the identity the ranks compare names the kernel by it."""
    return batch == 1 and not sync.averages_gradients and kernel != "generic"


@dataclass(frozen=True)
class TrainConfig:
    hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    output: str = "softmax-xent"
    init: str = "he"
    bias_init: float = 0.0
    batch_size: Union[int, str] = 32  # a sample count, 1 = stochastic, or "full"
    lr: Union[float, None] = None  # None (unset): follows the gradient mode and ranks (defaults.py)
    momentum: float = defaults.MOMENTUM  # the measured best in every mode (docs/science.md, "How the defaults were found")
    lr_decay: float = 1.0
    lr_schedule: Union[str, None] = None  # constant or cosine; None: follows the gradient mode
    warmup: Union[int, None] = None  # epochs of linear warm-up; None: follows the gradient mode and ranks
    epochs: int = 10
    sync: Union[str, None] = None  # None: local (defaults.MINI_BATCH_SYNC) for mini-batches, epoch for batch 1 and full batch (docs/science.md)
    seed: int = 1
    dtype: str = "float32"
    dataset: str = "mnist"
    data_dir: Union[str, None] = None
    train_size: Union[int, None] = None
    test_size: Union[int, None] = None
    out: Union[str, None] = None
    eval_every: int = 1
    shuffle: bool = True
    checkpoint_every: int = 0  # epochs between checkpoints; 0 = only when stopped by a signal
    resume: bool = False
    overwrite: bool = False  # replace a finished run in --out (outdir.py); without it such a folder is refused
    expect_ranks: Union[int, None] = None
    on_rank_failure: str = "abort"  # or "continue": survivors of a lost rank go on (resilience.py, survive.py)
    stall_timeout: float = 60.0  # seconds without a heartbeat before a rank ends the job, or under "continue" counts as lost (0 = never)
    kernel: str = "auto"  # batch 1: auto, numba, numpy (kernels.py) or generic; mini-batches: numba = fused.py, else the numpy step
    val_size: int = 0  # training samples held out for validation, scored every epoch (0 = none)
    early_stop: int = 0  # stop after this many epochs without a better validation accuracy (0 = never)
    progress_every: float = 5.0  # seconds between rank 0's progress lines inside an epoch (0 = none)
    plot: bool = False  # draw OUT/curves.png at the end (needs matplotlib)
    timeline: Union[str, None] = None  # write a Chrome trace-event file of every rank's phases here

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        self.validate()

    @property
    def schedule(self) -> Sync:
        return Sync.parse(self.sync or defaults.default_sync(self.batch_size))

    def resolved(self, ranks: int) -> TrainConfig:
        """This configuration with every unset setting filled in by the defaults rule for ``ranks`` ranks."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return self if not self.unset() else TrainConfig(**defaults.resolve(values, ranks))

    def unset(self) -> list[str]:
        """The settings left to the defaults rule (flag names without dashes)."""
        return [name for name in defaults.FOLLOWING if getattr(self, name) is None]

    @property
    def full_batch(self) -> bool:
        return self.batch_size == FULL_BATCH

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        need(all(h >= 1 for h in self.hidden), f"--hidden {' '.join(map(str, self.hidden))}: layer widths must be positive")
        need(self.activation in ACTIVATIONS, f"--activation {self.activation!r}: choose from {', '.join(ACTIVATIONS)}")
        need(self.output in OUTPUTS, f"--output {self.output!r}: choose from {', '.join(OUTPUTS)}")
        need(self.init in INITIALIZERS, f"--init {self.init!r}: choose from {', '.join(INITIALIZERS)}")
        need(
            self.batch_size == FULL_BATCH or (isinstance(self.batch_size, int) and self.batch_size >= 1),
            f"--batch-size {self.batch_size!r}: expected a positive sample count or 'full'",
        )
        need(self.lr is None or 0 < self.lr < math.inf, f"--lr {self.lr}: the learning rate must be positive and finite")
        need(math.isfinite(self.bias_init), f"--bias-init {self.bias_init}: expected a finite number")
        need(0 <= self.momentum < 1, f"--momentum {self.momentum}: expected a value in [0, 1)")
        need(self.lr_schedule is None or self.lr_schedule in SCHEDULES, f"--lr-schedule {self.lr_schedule!r}: choose from {', '.join(SCHEDULES)}")
        need(self.warmup is None or (isinstance(self.warmup, int) and self.warmup >= 0), f"--warmup {self.warmup}: expected 0 or a positive epoch count")
        need(0 < self.lr_decay <= 1, f"--lr-decay {self.lr_decay}: expected a factor in (0, 1]")
        need(self.epochs >= 1, f"--epochs {self.epochs}: at least one epoch")
        need(self.seed >= 0, f"--seed {self.seed}: expected a non-negative integer")
        need(self.dtype in DTYPES, f"--dtype {self.dtype!r}: choose from {', '.join(DTYPES)}")
        need(self.on_rank_failure in ON_RANK_FAILURE, f"--on-rank-failure {self.on_rank_failure!r}: choose from {', '.join(ON_RANK_FAILURE)}")
        need(
            self.stall_timeout == 0 or (math.isfinite(self.stall_timeout) and self.stall_timeout >= 1),
            f"--stall-timeout {self.stall_timeout}: expected 0 (off) or at least 1 second",
        )
        need(self.kernel in KERNELS, f"--kernel {self.kernel!r}: choose from {', '.join(KERNELS)}")
        if self.kernel == "numba":
            need(numba_available(), "--kernel numba: numba is not installed (pip install 'pnn_mpi[fast]')")
        need(self.train_size is None or self.train_size >= 1, f"--train-size {self.train_size}: expected a positive count")
        need(self.test_size is None or self.test_size >= 1, f"--test-size {self.test_size}: expected a positive count")
        need(self.eval_every >= 0, f"--eval-every {self.eval_every}: expected 0 (final only) or a positive epoch count")
        need(self.checkpoint_every >= 0, f"--checkpoint-every {self.checkpoint_every}: expected 0 or a positive epoch count")
        need(self.expect_ranks is None or self.expect_ranks >= 1, f"--expect-ranks {self.expect_ranks}: expected a positive count")
        need(self.val_size >= 0, f"--val-size {self.val_size}: expected 0 (none) or a positive sample count")
        need(self.early_stop >= 0, f"--early-stop {self.early_stop}: expected 0 (never) or a positive number of epochs")
        need(not self.early_stop or self.val_size > 0, f"--early-stop {self.early_stop} needs a validation set to watch: add --val-size N")
        need(
            math.isfinite(self.progress_every) and self.progress_every >= 0, f"--progress-every {self.progress_every}: expected 0 (none) or a number of seconds"
        )
        if self.sync is not None:
            Sync.parse(self.sync)  # parses, or raises a UserError naming the value

    def as_dict(self) -> dict:
        record = asdict(self)
        record["hidden"] = list(self.hidden)
        return record
