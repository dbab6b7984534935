"""Simulated machines: SimGrid platform files, and what the analytic model reads from them.

The built-in platforms are templates in ``platforms/`` whose latencies and
bandwidths are filled in from a calibration; a user's own ``--platform FILE``
is used as written. Either way the file is the one description of the machine:
SimGrid replays on it, and the alpha-beta model reads the same numbers from its
``<cluster>`` (hosts, cores per host, link, backbone, loopback), so the two
predictions always describe the same hardware.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ..errors import UserError
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

_RATE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "m": 60.0, "h": 3600.0}


def parse_bandwidth(text: str) -> float:
    """SimGrid bandwidth text ('25Gbps', '1.5GBps', '1e9Bps') in bytes per second."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]i?)?([bB])ps\s*", text)
    if not m:
        raise ValueError(f"bandwidth {text!r}")
    value = float(m.group(1)) * _RATE[(m.group(2) or "").lower()]
    return value / 8 if m.group(3) == "b" else value


def parse_latency(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(s|ms|us|ns|ps|m|h)?\s*", text)
    if not m:
        raise ValueError(f"latency {text!r}")
    return float(m.group(1)) * _TIME[m.group(2) or "s"]


def parse_speed(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]i?)?f\s*", text)
    if not m:
        raise ValueError(f"speed {text!r}")
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


def from_xml(name: str, text: str) -> Platform:
    """Read a platform made of ``<cluster>`` elements (what the analytic model understands)."""
    try:
        root = ET.fromstring(text.encode())
    except ET.ParseError as exc:
        raise UserError(f"platform {name}: not valid XML ({exc})") from None
    clusters = root.findall(".//cluster")
    if not clusters:
        raise UserError(f"platform {name}: holds no <cluster> element; write the machine as one or more SimGrid <cluster>s")
    hosts: list[str] = []
    for c in clusters:
        prefix, suffix = c.get("prefix", ""), c.get("suffix", "")
        for part in c.get("radical", "0").split(","):
            lo, _, hi = part.partition("-")
            hosts += [f"{prefix}{i}{suffix}" for i in range(int(lo), int(hi or lo) + 1)]
    first = clusters[0]
    try:
        link_bw = first.get("bw", "")
        lat, bw = parse_latency(first.get("lat", "0s")), parse_bandwidth(link_bw)
        bb_bw = parse_bandwidth(first.get("bb_bw", link_bw))
        bb_lat = parse_latency(first.get("bb_lat", "0s"))
        loop_bw = parse_bandwidth(first.get("loopback_bw", link_bw))
        loop_lat = parse_latency(first.get("loopback_lat", first.get("lat", "0s")))
        speed = parse_speed(first.get("speed", "1Gf"))
        cores = int(first.get("core", "1"))
    except (TypeError, ValueError) as exc:
        raise UserError(f"platform {name}: cannot read the cluster's {exc}") from None
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
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"--platform {path}: cannot read it ({exc.strerror or exc})") from None
    return from_xml(Path(path).stem, text)


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
