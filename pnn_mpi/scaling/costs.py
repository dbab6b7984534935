"""What things cost on the machine that was measured: the calibration record.

A training step costs ``per_step + per_sample * b`` seconds for a batch of b
samples; that line is measured for each model, once with one busy core and
once with every core of the machine busy (cores share caches and memory
bandwidth, so a rank is slower when its neighbours work). A link between two
ranks is a latency and a bandwidth (Hockney's alpha and 1/beta), fitted to
timed Allreduces over shared memory and over TCP. ``calibrate.py`` measures
these; everything downstream reads only this record, so predictions can be
redone from a saved ``calibration.json`` without measuring again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..network import parameter_count


@dataclass(frozen=True)
class StepCost:
    per_step: float  # seconds a step costs whatever its size (Python, call overheads)
    per_sample: float  # seconds per sample of the batch

    def seconds(self, steps, samples):
        return steps * self.per_step + samples * self.per_sample


@dataclass(frozen=True)
class Link:
    latency: float  # seconds per message (alpha)
    bandwidth: float  # bytes per second (1/beta), the reduction's arithmetic folded in


@dataclass
class Calibration:
    machine: str
    cores: int
    compute: dict[str, dict[str, StepCost]]  # model label -> {"one": one busy core, "all": all cores busy}
    links: dict[str, Link]  # "shm", and "tcp" when it could be measured
    measured: dict = field(default_factory=dict)  # the raw timings the fit came from

    def step_cost(self, sizes: tuple[int, ...], loaded: bool) -> StepCost:
        """The step cost of this model with the other cores busy (``loaded``) or idle: measured,
        or scaled from the nearest measured model by parameter count."""
        which = "all" if loaded else "one"
        label = "-".join(map(str, sizes))
        if label in self.compute:
            return self.compute[label][which]
        if not self.compute:
            raise UserError("the calibration holds no compute measurement")
        want = parameter_count(sizes)

        def params(lbl: str) -> int:
            return parameter_count(tuple(int(v) for v in lbl.split("-")))

        nearest = min(self.compute, key=lambda lbl: abs(params(lbl) - want))
        cost = self.compute[nearest][which]
        return StepCost(cost.per_step, cost.per_sample * want / params(nearest))

    def link(self, name: str) -> Link:
        if name not in self.links:
            raise UserError(f"the calibration has no {name} measurement (have: {', '.join(self.links) or 'none'})")
        return self.links[name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, record: dict) -> Calibration:
        return cls(
            machine=record["machine"],
            cores=int(record["cores"]),
            compute={m: {k: StepCost(**v) for k, v in c.items()} for m, c in record["compute"].items()},
            links={k: Link(**v) for k, v in record["links"].items()},
            measured=record.get("measured", {}),
        )

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UserError(f"--calibration {path}: no such file") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--calibration {path}: not a calibration record ({exc})") from None
