"""What things cost on the machine that was measured: the calibration record.

A training step costs ``per_step + per_sample * b`` seconds for a batch of b
samples; that line is measured for each model, once with one busy core and
once with every core of the machine busy (cores share caches and memory
bandwidth, so a rank is slower when its neighbours work), and for the
validation also with two ranks to a core (their caches are lost at every
switch, so a shared core does less than half its work for each). A link
between two ranks is a latency and a bandwidth (Hockney's alpha and 1/beta),
fitted to timed Allreduces over shared memory and over TCP. An Allreduce
between training steps costs more than one timed back to back (ranks arrive
apart, the network stack competes with the steps for the cores): for the
validation that is measured in a short real run at each place it validates,
``in_loop``. ``calibrate.py`` measures
these; everything downstream reads only this record, so predictions can be
redone from a saved ``calibration.json`` without measuring again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common.errors import UserError
from ..common.structured_files import Anything, MiB, Number, Record, Table, Text, check, read_json
from ..common.wording import quote
from ..nn.network import parameter_count


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


_SECONDS = Number(low=0)
_STEP_COST = Record({"per_step": _SECONDS, "per_sample": _SECONDS}, frozenset({"per_step", "per_sample"}), closed=True)
_MODEL = r"[1-9]\d{0,8}(?:-[1-9]\d{0,8}){1,63}"  # a model's layer widths, 784-128-10
# What from_dict reads; step_cost needs "all" for every model, and model labels it can split.
CALIBRATION = Record(
    {
        "machine": Text(1000),
        "cores": Number(integer=True, low=1, high=1 << 20),
        "compute": Table(
            Record({"one": _STEP_COST, "all": _STEP_COST, "over": _STEP_COST}, frozenset({"all"}), closed=True), 4096, _MODEL, "layer widths (784-128-10)"
        ),
        "links": Table(Record({"latency": _SECONDS, "bandwidth": Number(above=0)}, frozenset({"latency", "bandwidth"}), closed=True), 64),
        "measured": Table(Anything()),
        "in_loop": Table(Table(_SECONDS, 4096, _MODEL, "layer widths (784-128-10)"), 4096),
    },
    frozenset({"machine", "cores", "compute", "links"}),
)


@dataclass
class Calibration:
    machine: str
    cores: int
    # model label -> {"one": one busy core, "all": all cores busy, "over" (optional): two ranks to
    # every core, per rank and per core share (the simulator shares the core between them)}
    compute: dict[str, dict[str, StepCost]]
    links: dict[str, Link]  # "shm", and "tcp" when it could be measured
    measured: dict = field(default_factory=dict)  # the raw timings the fit came from
    # "PLATFORM:RANKS" -> {model label: seconds of one parameter-sized Allreduce between the
    # steps of a real run there}; only this machine's validation places have one
    in_loop: dict[str, dict[str, float]] = field(default_factory=dict)

    def step_cost(self, sizes: tuple[int, ...], rate: str) -> StepCost:
        """The step cost of this model at ``rate`` ("one", "all" or "over"; "over" falls back to
        "all" when it was not measured): measured, or scaled from the nearest measured model by
        parameter count."""
        label = "-".join(map(str, sizes))
        if label in self.compute:
            return self._rate(self.compute[label], rate)
        if not self.compute:
            raise UserError("the calibration holds no compute measurement")
        want = parameter_count(sizes)

        def params(lbl: str) -> int:
            return parameter_count(tuple(int(v) for v in lbl.split("-")))

        nearest = min(self.compute, key=lambda lbl: abs(params(lbl) - want))
        cost = self._rate(self.compute[nearest], rate)
        return StepCost(cost.per_step, cost.per_sample * want / params(nearest))

    @staticmethod
    def _rate(costs: dict[str, StepCost], rate: str) -> StepCost:
        return costs.get(rate) or costs["all"]

    def sync_in_loop(self, platform: str, ranks: int, sizes: tuple[int, ...]) -> float | None:
        """Seconds of the parameter Allreduce between real steps at ``ranks`` on ``platform``, if measured."""
        return self.in_loop.get(f"{platform}:{ranks}", {}).get("-".join(map(str, sizes)))

    def link(self, name: str) -> Link:
        if name not in self.links:
            raise UserError(f"the calibration has no {name} measurement (have: {', '.join(self.links) or 'none'})")
        return self.links[name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, record: dict, label: str = "the calibration") -> Calibration:
        """A calibration from its JSON record, checked field by field first (``CALIBRATION``)."""
        check(record, CALIBRATION, label)
        return cls(
            machine=record["machine"],
            cores=int(record["cores"]),
            compute={m: {k: StepCost(**v) for k, v in c.items()} for m, c in record["compute"].items()},
            links={k: Link(**v) for k, v in record["links"].items()},
            measured=record.get("measured", {}),
            in_loop={k: {m: float(t) for m, t in v.items()} for k, v in record.get("in_loop", {}).items()},
        )

    @classmethod
    def load(cls, path: Path) -> Calibration:
        label = f"--calibration {quote(path)}"
        return cls.from_dict(read_json(path, Anything(), label, limit=64 * MiB), label)
