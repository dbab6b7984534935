"""The machine a study ran on: how many cores it may use, logical and physical.

Speed-up can only be judged against the cores that really run the ranks: a
4-thread laptop has 2 physical cores, a container may see 64 CPUs but be
allowed 2. So: logical = the CPUs this process may run on (its affinity);
physical = the distinct (socket, core) pairs among them, from /proc/cpuinfo or
``lscpu -p``; and a cgroup CPU quota, when one is set, caps both.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..common.wording import plural


@dataclass(frozen=True)
class Machine:
    logical: int
    physical: int
    model: str = ""
    quota: float | None = None  # cores allowed by a cgroup CPU quota, when one is set

    @property
    def cores(self) -> int:
        """The cores ranks can run on at once: physical ones, capped by a quota."""
        return max(1, min(self.physical, math.floor(self.quota))) if self.quota else self.physical

    def describe(self) -> str:
        text = f"{plural(self.physical, 'physical core')} ({self.logical} logical)"
        if self.quota and self.quota < self.physical:
            text += f", limited by a CPU quota to {self.quota:g}"
        return f"{text}, {self.model}" if self.model else text


def detect() -> Machine:
    allowed = _allowed_cpus()
    topology = _cpuinfo_topology() or _lscpu_topology()
    if topology:
        physical = len({topology[c] for c in allowed if c in topology}) or len(set(topology.values()))
    else:
        physical = len(allowed)
    return Machine(logical=len(allowed), physical=physical, model=_model_name(), quota=_cgroup_quota())


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cpuinfo_topology(path: str = "/proc/cpuinfo") -> dict[int, tuple[str, str]]:
    """CPU number -> (physical id, core id), for CPUs whose entry names its core."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> dict[int, tuple[str, str]]:
    topology = {}
    for block in text.split("\n\n"):
        fields = {}
        for entry in block.splitlines():
            key, _, value = entry.partition(":")
            fields[key.strip()] = value.strip()
        if "processor" in fields and "core id" in fields and fields["processor"].isdigit():
            topology[int(fields["processor"])] = (fields.get("physical id", "0"), fields["core id"])
    return topology


def _lscpu_topology() -> dict[int, tuple[str, str]]:
    try:
        text = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_lscpu(text)


def parse_lscpu(text: str) -> dict[int, tuple[str, str]]:
    topology = {}
    for entry in text.splitlines():
        if entry.startswith("#") or not entry.strip():
            continue
        cpu, core, socket = (entry.split(",") + ["", "", ""])[:3]
        if cpu.isdigit() and core:
            topology[int(cpu)] = (socket or "0", core)
    return topology


def _model_name() -> str:
    try:
        for entry in Path("/proc/cpuinfo").read_text().splitlines():
            if entry.startswith("model name"):
                return entry.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def _cgroup_quota() -> float | None:
    """Cores allowed by cgroup v2's cpu.max ('max 100000' = no limit)."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" else None
    except (OSError, ValueError):
        return None
