"""When the ranks average: the four synchronisation schedules.

``end``     train locally, average once at the end (the paper's scheme);
``epoch``   average the parameters after every epoch;
``steps:K`` average the parameters every K local steps (local SGD);
``grad``    sum the gradients every step before updating (as Horovod/DDP do),
            so all ranks take the same step and stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

KINDS = ("end", "epoch", "steps", "grad")


@dataclass(frozen=True)
class Sync:
    kind: str
    every: int = 0  # steps between averages, for kind "steps"

    @classmethod
    def parse(cls, text: str) -> Sync:
        name, _, arg = str(text).partition(":")
        if name == "steps":
            try:
                every = int(arg)
            except ValueError:
                every = 0
            if every < 1:
                raise UserError(f"--sync {text!r}: steps needs a positive step count, e.g. steps:100")
            return cls("steps", every)
        if name in KINDS and not arg:
            return cls(name)
        raise UserError(f"--sync {text!r}: expected one of end, epoch, steps:K, grad")

    def __str__(self) -> str:
        return f"steps:{self.every}" if self.kind == "steps" else self.kind

    @property
    def averages_gradients(self) -> bool:
        return self.kind == "grad"

    def averages_after_step(self, step: int) -> bool:
        """Whether to average parameters after global step ``step`` (1-based)."""
        return self.kind == "steps" and step % self.every == 0

    @property
    def averages_after_epoch(self) -> bool:
        return self.kind == "epoch"
