"""The analytic alpha-beta model: the cross-check of the simulator, and its stand-in.

Hockney's model prices a message of m bytes at ``alpha + m / bandwidth``. An
Allreduce is priced as the algorithm the simulator replays (see simulate.py):
Rabenseifner's for the parameters (2 log2 P steps moving 2(P-1)/P of the
buffer in all), recursive doubling for the tiny stop/divergence check (log2 P
steps, latency only), the same pattern as the barrier. Every step
is as slow as its slowest message: one between hosts pays the route's latency,
and the ranks of a host share its link, all flows between hosts the backbone.
The run is bulk-synchronous (every collective waits for the slowest rank), so a
phase costs the sum over its events of the slowest rank's compute and each
collective's price. Costs are split into compute, latency and bandwidth, which
is how the report tells what bounds a schedule. On this machine's validation
platforms a parameter Allreduce between real steps costs more than its price
back to back (measured: ``Calibration.in_loop``); that excess is ``in_loop``,
added to every such Allreduce by this model and by the simulator alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .costs import Calibration, StepCost
from .platforms import REFERENCE_SPEED, Platform
from .program import Allreduce, Compute, Phase, Run, phases

SMALL_MESSAGE = 10_000  # bytes: below this Open MPI reduces by recursive doubling (the check's pattern)


@dataclass
class Breakdown:
    compute: float = 0.0
    latency: float = 0.0
    bandwidth: float = 0.0
    in_loop: float = 0.0  # Allreduces between steps beyond their price back to back (validation platforms)

    @property
    def total(self) -> float:
        return self.compute + self.latency + self.bandwidth + self.in_loop

    def add(self, other: Breakdown, times: int = 1) -> None:
        self.compute += other.compute * times
        self.latency += other.latency * times
        self.bandwidth += other.bandwidth * times
        self.in_loop += other.in_loop * times


def _step(plat: Platform, hosts: list[int], pairs: list[tuple[int, int]], nbytes: float) -> tuple[float, float]:
    """(latency, transfer seconds) of one communication step: every pair (src, dst) sends ``nbytes`` at once."""
    between = [(s, d) for s, d in pairs if hosts[s] != hosts[d]]
    if not between:
        return plat.loopback.latency, nbytes / plat.loopback.bandwidth
    per_host: dict[int, int] = {}
    for s, _ in between:
        per_host[hosts[s]] = per_host.get(hosts[s], 0) + 1
    share = max(max(per_host.values()) / plat.host_link_bandwidth, len(between) / plat.backbone_bandwidth)
    inside = nbytes / plat.loopback.bandwidth if len(between) < len(pairs) else 0.0
    return plat.route.latency, max(nbytes * share, inside)


def _recursive(plat: Platform, ranks: int, sizes: list[float], partner_steps: int) -> Breakdown:
    """Exchanges with partners at distance 1, 2, 4, ... on the largest power of two of ranks;
    the ranks beyond it first fold into and finally get the result from a partner (two more steps)."""
    hosts = plat.host_of(ranks)
    below = 1 << (ranks.bit_length() - 1)
    cost = Breakdown()
    extra = ranks - below
    if extra:
        lat, bw = _step(plat, hosts, [(below + i, i) for i in range(extra)], sizes[0] * 2 if partner_steps else sizes[0])
        cost.latency += 2 * lat
        cost.bandwidth += 2 * bw
    for k in range(int(math.log2(below))):
        d = 1 << k
        lat, bw = _step(plat, hosts, [(r, r ^ d) for r in range(below)], sizes[min(k, len(sizes) - 1)])
        cost.latency += lat * (1 + bool(partner_steps))
        cost.bandwidth += bw * (1 + bool(partner_steps))
    return cost


def allreduce(plat: Platform, ranks: int, nbytes: int) -> Breakdown:
    """The parameter (or gradient) Allreduce as SMPI replays it here: Rabenseifner's algorithm,
    reduce-scatter by recursive halving then allgather by recursive doubling (at distance 2^k,
    n/2^(k+1) bytes, twice)."""
    if ranks == 1:
        return Breakdown()
    below = 1 << (ranks.bit_length() - 1)
    halves = [nbytes / 2 ** (k + 1) for k in range(max(1, int(math.log2(below))))]
    return _recursive(plat, ranks, halves, 1)


def barrier(plat: Platform, ranks: int) -> Breakdown:
    """Recursive doubling of empty messages: also the price of the trainer's tiny stop/divergence check."""
    if ranks == 1:
        return Breakdown()
    return Breakdown(latency=_recursive(plat, ranks, [0.0], 0).latency)


def phase_cost(plat: Platform, ranks: int, phase: Phase, step: StepCost, excess: float = 0.0) -> Breakdown:
    """One phase's price; ``excess`` is what every parameter Allreduce costs here beyond its price (``in_loop_excess``)."""
    scale = REFERENCE_SPEED / plat.speed * oversubscription(plat, ranks)
    cost = Breakdown()
    for e in phase.events:
        if isinstance(e, Compute):
            cost.compute += float(step.seconds(e.steps, e.samples).max() + e.empty_steps * step.per_step) * scale
        elif isinstance(e, Allreduce):
            cost.add(barrier(plat, ranks) if e.purpose == "check" else allreduce(plat, ranks, e.nbytes))
            cost.in_loop += excess if e.purpose != "check" else 0.0
    return cost


def oversubscription(plat: Platform, ranks: int) -> float:
    """How many ranks share a core: 1 until the platform's cores run out."""
    return max(1.0, ranks / plat.slots)


def in_loop_excess(run: Run, plat: Platform, cal: Calibration) -> float:
    """Seconds a parameter Allreduce of ``run`` costs between real steps on ``plat`` beyond its
    price here: measured on this machine's validation places (0 elsewhere, and where the
    measurement came out cheaper)."""
    seen = cal.sync_in_loop(plat.name, run.ranks, run.sizes)
    if seen is None or run.ranks == 1:
        return 0.0
    return max(seen - allreduce(plat, run.ranks, run.parameters * run.itemsize).total, 0.0)


def predict(run: Run, plat: Platform, cal: Calibration) -> Breakdown:
    """Train seconds of ``run`` on ``plat``, split into compute, latency, bandwidth and the in-loop excess."""
    step = cal.step_cost(run.sizes, plat.rate(run.ranks))
    excess = in_loop_excess(run, plat, cal)
    total = Breakdown()
    for phase in phases(run):
        total.add(phase_cost(plat, run.ranks, phase, step, excess), phase.repeat)
    return total
