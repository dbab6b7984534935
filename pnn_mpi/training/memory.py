"""How much memory a request needs, checked before anything is allocated.

A typo (``--hidden 1000000000``) or a hostile file (a model whose ``sizes``
declare a huge layer, an image file whose header declares billions of
records) must end in one line naming the figure, not in numpy's
``Unable to allocate 58.2 TiB`` traceback or an out-of-memory kill halfway
through. The estimate adds up what a rank holds at its peak -- parameters,
gradients, momentum, the copies made to score and checkpoint, the
workspaces, its slice and its share of the test set -- and is compared with what this
process can still get: the smallest of the memory available on the machine
(shared by the ranks on it), its cgroup's limit, and its own address-space
and data limits (``ulimit -v``, ``ulimit -d``).
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..common.errors import UserError
from ..data.slicing import slice_sizes
from ..nn.network import parameter_count

EVAL_CHUNK = 1000  # evaluate.CHUNK: images scored per call


def size_text(n: float) -> str:
    """Bytes in binary units: '812 KiB', '3.2 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """memory.max minus memory.current of this process's cgroup (v2), if it has a limit."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                folder = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/")
                limit = (folder / "memory.max").read_text().strip()
                if limit == "max":
                    return None
                return int(limit) - int((folder / "memory.current").read_text().strip())
    except (OSError, ValueError):
        pass
    return None


def available(share: int = 1) -> tuple[int, str]:
    """(bytes this process can still allocate, what sets that figure).

    Machine-wide figures are divided among the ``share`` ranks on this machine.
    """
    share = max(int(share), 1)
    per = f" / {share} ranks on this machine" if share > 1 else ""
    limits: list[tuple[int, str]] = []
    found = _meminfo_available()
    if found is not None:
        limits.append((found // share, f"MemAvailable in /proc/meminfo{per}"))
    found = _cgroup_headroom()
    if found is not None:
        limits.append((max(found, 0) // share, f"the cgroup's memory.max{per}"))
    for name, rlimit, field in (("address-space limit (ulimit -v)", resource.RLIMIT_AS, "VmSize"), ("data limit (ulimit -d)", resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(rlimit)
        used = _status_bytes(field)
        if soft != resource.RLIM_INFINITY and used is not None:
            limits.append((max(soft - used, 0), f"this process's {name}"))
    if not limits:
        return 2**63, "no limit known"
    return min(limits)


def check(parts: dict[str, int], what: str, hint: str, share: int = 1) -> None:
    """Raise a one-line UserError when ``parts`` (bytes by purpose) exceed what is available."""
    total = sum(parts.values())
    room, source = available(share)
    if total <= room:
        return
    biggest = sorted(((n, name) for name, n in parts.items() if n), reverse=True)[:3]
    detail = ", ".join(f"{name} {size_text(n)}" for n, name in biggest)
    raise UserError(f"{what} needs about {size_text(total)} of memory ({detail}), more than the {size_text(room)} available ({source}); {hint}")


def network_name(sizes: tuple[int, ...]) -> str:
    """'784-128-10', or for a very deep request '36-4096-4096-...-4096-10 (3002 layers)': messages stay short."""
    if len(sizes) <= 8:
        return "-".join(map(str, sizes))
    return f"{'-'.join(map(str, sizes[:3]))}-...-{'-'.join(map(str, sizes[-2:]))} ({len(sizes)} layers)"


def network_bytes(sizes: Iterable[int], itemsize: int) -> int:
    return parameter_count(tuple(sizes)) * itemsize


def workspace_bytes(sizes: tuple[int, ...], itemsize: int, rows: int) -> int:
    """network.Workspace for ``rows`` samples: inputs, then z, a and delta per layer, labels and row scratch."""
    return rows * (itemsize * (sizes[0] + 3 * sum(sizes[1:]) + 2 * sizes[-1] + 2) + 16)


def training_parts(
    sizes: tuple[int, ...], itemsize: int, *, momentum: bool, batch: int, slice_n: int, test_n: int, ranks: int, lead: bool, batch_one_index: bool
) -> dict[str, int]:
    """What one rank holds at its peak while training: what it keeps all along, plus the
    largest of what it needs only for a while (rank 0, ``lead``, also gathers checkpoints)."""
    params = network_bytes(sizes, itemsize)
    pixels = sizes[0]
    parts = {
        "parameters, gradients" + (" and momentum" if momentum else ""): (2 + momentum) * params,
        "training workspace": workspace_bytes(sizes, itemsize, batch),
        "training slice": slice_n * (pixels * (itemsize + 1) + 16),  # float inputs, the bytes read, labels, order
        "test share": test_n * (pixels + 8),  # test_n: this rank's share of the test set
    }
    if batch_one_index:
        parts["sparse index"] = slice_n * (pixels * 2 + 8)  # at most: every pixel lit
    passing = {  # never at the same time
        "scoring workspace": workspace_bytes(sizes, itemsize, min(EVAL_CHUNK, test_n)),
        "scoring copy": 2 * params,
        "checkpoint": (1 + momentum) * params,
    }
    if lead:  # every rank's state gathered, then the archive built in memory; the saved model
        passing["checkpoint gathered on rank 0"] = 3 * ranks * (1 + momentum) * params
        passing["saved model"] = 2 * params
    name = max(passing, key=passing.__getitem__)
    parts[name] = passing[name]
    return parts


def ranks_on_this_machine(world) -> int:
    """How many ranks of ``world`` share this machine's memory (one collective)."""
    names = world.allgather(socket.gethostname())
    return names.count(names[world.rank])


def check_training(cfg, world, share: int, train_n: int, test_n: int, pixels: int) -> None:
    """Refuse a run whose rank 0 (the fullest rank) cannot fit, before its data or network is allocated."""
    sizes = (int(pixels), *cfg.hidden, 10)  # 10 classes at most (idx: labels 0..9), so an upper bound
    slices = slice_sizes(train_n, world.size)
    batch = max(slices) if cfg.full_batch else min(int(cfg.batch_size), max(slices))
    parts = training_parts(
        sizes,
        np.dtype(cfg.dtype).itemsize,
        momentum=bool(cfg.momentum),
        batch=batch,
        slice_n=max(slices),
        test_n=max(slice_sizes(test_n, world.size)),
        ranks=world.size,
        lead=True,
        batch_one_index=batch == 1 and cfg.kernel != "generic",
    )
    net = network_name(sizes)
    check(
        parts,
        f"training network {net} on {max(slices):,} samples per rank",
        "use narrower --hidden layers, a smaller --batch-size, --train-size/--test-size, or fewer ranks per machine",
        share,
    )


def check_model(path: str, sizes: tuple[int, ...], itemsize: int, images: int = 0) -> None:
    """Refuse loading a model (and scoring ``images`` with it) that cannot fit."""
    params = network_bytes(sizes, itemsize)
    parts = {"parameters": 2 * params, "workspace": workspace_bytes(sizes, itemsize, EVAL_CHUNK), "predictions": 8 * images}
    check(parts, f"{path}: the model {network_name(sizes)}", "is the file what you meant?")
