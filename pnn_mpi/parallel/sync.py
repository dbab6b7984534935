"""When the ranks average: the synchronisation schedules.

``end``       train locally, average once at the end (the paper's scheme);
``epoch``     average after every epoch;
``steps:K``   average every K local steps (local SGD);
``local:K:L`` average every K local steps while the rate is at its peak, and less
              often while it is lower (warming up or decayed): K x peak / rate,
              at most L steps, counted across epoch ends (the default for mini-batches);
``grad``      sum the gradients every step before updating (as Horovod/DDP do),
              so all ranks take the same step and stay identical.

Every parameter average also averages the momentum (optim.SGD.beside keeps the
two in one buffer), so it is still one Allreduce. Steps are counted since the
last average, so a resumed run averages exactly where an uninterrupted one does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common.errors import UserError

KINDS = ("end", "epoch", "steps", "local", "grad")
LOCAL_BASE, LOCAL_LARGEST = 5, 64  # local's K and L when the flag gives none: docs/science.md, "How the defaults were found"


def _counts(text: str, arg: str, at_most: int, needs: str) -> list[int]:
    """The step counts after the schedule's name (``arg``), or a UserError saying what ``text`` needs."""
    parts = arg.split(":") if arg else []
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        counts = []
    if (arg and not counts) or len(counts) > at_most or any(c < 1 for c in counts):
        raise UserError(f"--sync {text!r}: {needs}")
    return counts


@dataclass(frozen=True)
class Sync:
    kind: str
    every: int = 0  # steps between averages (steps), or at the peak rate (local)
    largest: int = 0  # local: the most steps between averages as the rate decays

    @classmethod
    def parse(cls, text: str) -> Sync:
        name, colon, arg = str(text).partition(":")
        arg = arg or colon  # "local:" names no count: refused below, like "local:x"
        if name == "steps":
            needs = "steps needs a positive step count, e.g. steps:100"
            counts = _counts(text, arg, 1, needs)
            if not counts:
                raise UserError(f"--sync {text!r}: {needs}")
            return cls("steps", counts[0])
        if name == "local":
            counts = _counts(text, arg, 2, "local takes up to two positive step counts: local, local:K or local:K:L (e.g. local:5:64)")
            base = counts[0] if counts else LOCAL_BASE
            largest = counts[1] if len(counts) > 1 else max(LOCAL_LARGEST, base)
            if largest < base:
                raise UserError(f"--sync {text!r}: the largest period ({largest}) is below the first ({base})")
            return cls("local", base, largest)
        if name in KINDS and not arg:
            return cls(name)
        raise UserError(f"--sync {text!r}: expected one of end, epoch, steps:K, local[:K[:L]], grad")

    def __str__(self) -> str:
        if self.kind == "steps":
            return f"steps:{self.every}"
        return f"local:{self.every}:{self.largest}" if self.kind == "local" else self.kind

    @property
    def averages_gradients(self) -> bool:
        return self.kind == "grad"

    def period(self, fraction: float) -> int:
        """Local steps between parameter averages in an epoch whose rate is ``fraction``
        of its peak (1 at the peak); 0: none inside the epoch.

        ``local`` keeps the ranks' drift between averages (about rate x steps) near
        what it is at the peak: K / fraction steps, between K and L.
        """
        if self.kind == "steps":
            return self.every
        if self.kind != "local":
            return 0
        if fraction <= self.every / self.largest:
            return self.largest
        return min(self.largest, max(self.every, round(self.every / fraction)))

    @property
    def averages_after_epoch(self) -> bool:
        return self.kind == "epoch"
