"""Simulated machines: SimGrid platform files, and what the analytic model reads from them.

The built-in platforms are templates in ``platforms/`` whose latencies and
bandwidths are filled in from a calibration; a user's own ``--platform FILE``
is used as written. Either way the file is the one description of the machine:
SimGrid replays on it, and the alpha-beta model reads the same numbers from its
``<cluster>`` (hosts, cores per host, link, backbone, loopback), so the two
predictions always describe the same hardware.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ..common.errors import UserError
from ..common.structured_files import MiB, parse_xml, read_xml
from ..common.wording import quote
from .costs import Calibration, Link

REFERENCE_SPEED = 1e9  # flop/s of a host of speed "1Gf": one core of the calibrated machine
MEMORY_BANDWIDTH = 200e9  # bytes/s of the many-core node's memory system: assumed, not measured
BUILT_IN = {
    "thisvm": "this machine (calibration), shared memory",
    "twonodes": "this machine's two namespace nodes, TCP",
    "node": "one many-core node, shared memory",
    "cluster-25g": "16-core nodes, 25 Gbit/s",
    "cluster-100g": "16-core nodes, 100 Gbit/s",
}
PREDICTION_PLATFORMS = ("node", "cluster-25g", "cluster-100g")
MAX_HOSTS = 1 << 16  # a platform's hosts, each a name SimGrid and the model place ranks on
MAX_CORES = 1 << 12  # cores of one host

_RATE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "m": 60.0, "h": 3600.0}


def parse_bandwidth(text: str) -> float:
    """SimGrid bandwidth text ('25Gbps', '1.5GBps', '1e9Bps') in bytes per second."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]i?)?([bB])ps\s*", text)
    if not m:
        raise ValueError(f"bandwidth {text!r}: not a SimGrid bandwidth such as 25Gbps")
    value = float(m.group(1)) * _RATE[(m.group(2) or "").lower()]
    return value / 8 if m.group(3) == "b" else value


def parse_latency(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(s|ms|us|ns|ps|m|h)?\s*", text)
    if not m:
        raise ValueError(f"latency {text!r}: not a SimGrid latency such as 10us")
    return float(m.group(1)) * _TIME[m.group(2) or "s"]


def parse_speed(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]i?)?f\s*", text)
    if not m:
        raise ValueError(f"speed {text!r}: not a SimGrid speed such as 1Gf")
    return float(m.group(1)) * _RATE[(m.group(2) or "").lower()]


@dataclass(frozen=True)
class Platform:
    """A platform file and the machine it describes, as the analytic model sees it."""

    name: str
    xml: str
    hosts: tuple[str, ...]  # SimGrid host names, in rank placement order
    cores: int  # ranks per host before a host is oversubscribed
    speed: float  # flop/s of one core
    loopback: Link  # between ranks of one host
    route: Link  # between hosts: two host links and the backbone
    host_link_bandwidth: float  # one host's link, shared by its ranks' flows
    backbone_bandwidth: float  # shared by every flow between hosts
    idle_neighbours: bool = False  # this very machine: one rank alone runs at the idle-core rate

    def rate(self, ranks: int) -> str:
        """Which measured step cost a rank runs at: "one" (this very machine, a rank alone), "over"
        (more ranks than cores: two share a core), else "all". On the predicted platforms always
        "all" up to their size: their speed-ups then show what communication and slicing cost,
        not how much faster a core runs when its neighbours idle (which 2 cores cannot tell for 16)."""
        if ranks > self.slots:
            return "over"
        return "one" if self.idle_neighbours and ranks == 1 else "all"

    @property
    def slots(self) -> int:
        return len(self.hosts) * self.cores

    def hostfile(self, ranks: int) -> str:
        """Ranks placed host by host, ``cores`` to a host (a block placement, like ``--map-by core``).

        Past the platform's size the placement wraps around, oversubscribing every host alike.
        """
        per_host = self.cores
        hosts = self.hosts
        if ranks > self.slots:
            per_host = -(-ranks // len(hosts))
        return "".join(f"{hosts[min(r // per_host, len(hosts) - 1)]}\n" for r in range(ranks))

    def host_of(self, ranks: int) -> list[int]:
        per_host = self.cores if ranks <= self.slots else -(-ranks // len(self.hosts))
        return [min(r // per_host, len(self.hosts) - 1) for r in range(ranks)]


def _hosts(clusters: list[ET.Element], label: str) -> list[str]:
    """Every cluster's host names, counted before one is made: ``radical="0-999999999999"`` is refused, not allocated."""
    ranges: list[tuple[ET.Element, int, int]] = []
    for c in clusters:
        for part in c.get("radical", "0").split(","):
            m = re.fullmatch(r"\s*(\d{1,12})\s*(?:-\s*(\d{1,12})\s*)?", part)
            if not m or int(m.group(2) or m.group(1)) < int(m.group(1)):
                raise UserError(f"{label}: cluster radical {quote(repr(part), 60)} should be N or N-M with N <= M")
            ranges.append((c, int(m.group(1)), int(m.group(2) or m.group(1))))
    count = sum(hi - lo + 1 for _, lo, hi in ranges)
    if count > MAX_HOSTS:
        raise UserError(f"{label}: its clusters hold {count:,} hosts, more than the {MAX_HOSTS:,} a prediction is made for")
    return [f"{c.get('prefix', '')}{i}{c.get('suffix', '')}" for c, lo, hi in ranges for i in range(lo, hi + 1)]


def _positive(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} {value:g}: should be positive and finite")
    return value


def _delay(value: float, what: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} {value:g}: should be zero or more, and finite")
    return value


def from_xml(name: str, text: str, label: str | None = None, root: ET.Element | None = None) -> Platform:
    """Read a platform made of ``<cluster>`` elements (what the analytic model understands).

    ``label`` names the file in error lines; ``root``: the document already parsed (``load``)."""
    label = label or f"platform {name}"
    root = parse_xml(text.encode(), label) if root is None else root
    clusters = root.findall(".//cluster")
    if not clusters:
        raise UserError(f"{label}: holds no <cluster> element; write the machine as one or more SimGrid <cluster>s")
    hosts = _hosts(clusters, label)
    first = clusters[0]
    try:
        link_bw = first.get("bw", "")
        lat, bw = _delay(parse_latency(first.get("lat", "0s")), "lat"), _positive(parse_bandwidth(link_bw), "bw")
        bb_bw = _positive(parse_bandwidth(first.get("bb_bw", link_bw)), "bb_bw")
        bb_lat = _delay(parse_latency(first.get("bb_lat", "0s")), "bb_lat")
        loop_bw = _positive(parse_bandwidth(first.get("loopback_bw", link_bw)), "loopback_bw")
        loop_lat = _delay(parse_latency(first.get("loopback_lat", first.get("lat", "0s"))), "loopback_lat")
        speed = _positive(parse_speed(first.get("speed", "1Gf")), "speed")
        core = first.get("core", "1")
        if not re.fullmatch(r"\s*\d{1,6}\s*", core) or not 1 <= int(core) <= MAX_CORES:
            raise ValueError(f"core {core!r}: should be an integer from 1 to {MAX_CORES:,}")
        cores = int(core)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{label}: the cluster's {quote(str(exc), 120)}") from None
    return Platform(
        name=name,
        xml=text,
        hosts=tuple(hosts),
        cores=cores,
        speed=speed,
        loopback=Link(loop_lat, loop_bw),
        route=Link(2 * lat + bb_lat, min(bw, bb_bw)),
        host_link_bandwidth=bw,
        backbone_bandwidth=bb_bw,
    )


def load(path: Path) -> Platform:
    """A ``--platform`` file: read bounded, entities refused, every number checked."""
    label = f"--platform {quote(path)}"
    text, root = read_xml(path, label, limit=16 * MiB)
    return from_xml(Path(path).stem, text, label, root)


def built_in(name: str, cal: Calibration) -> Platform:
    """A built-in platform with this calibration's latencies and bandwidths written in."""
    shm = cal.link("shm")
    values = {
        "cores": cal.cores,
        "shm_bw": f"{shm.bandwidth:.6g}",
        "shm_lat": f"{shm.latency:.6g}",
        "shm_half_lat": f"{shm.latency / 2:.6g}",
        "mem_bw": f"{MEMORY_BANDWIDTH:.6g}",
        "mem_gbs": f"{MEMORY_BANDWIDTH / 1e9:g}",
    }
    if name != "thisvm" and name != "node":
        tcp = cal.link("tcp") if "tcp" in cal.links else None
        if tcp is None:
            raise UserError(f"platform {name} needs the TCP calibration, which could not be measured here")
        values.update(tcp_bw=f"{tcp.bandwidth:.6g}", tcp_bw2=f"{2 * tcp.bandwidth:.6g}", tcp_half_lat=f"{tcp.latency / 2:.6g}")
    template = resources.files("pnn_mpi.scaling").joinpath(f"platforms/{name}.xml").read_text()
    plat = from_xml(name, _fill(template, values))
    return replace(plat, idle_neighbours=name in ("thisvm", "twonodes"))


def _fill(template: str, values: dict) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), template)
