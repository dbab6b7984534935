"""Two "nodes" on this one machine, for measuring MPI over real TCP (root only).

Each node is a network namespace (``simnode1``, ``simnode2``: names, bridge
``simbr0`` and subnet 10.201.0.0/24 of our own, apart from the SLURM test
cluster's) joined to a bridge by a veth pair. Open MPI's ``mpirun`` starts its
daemons on the nodes through a launch agent (``PRTE_MCA_plm_ssh_agent``) that
enters the node's network namespace with its own hostname, ``/tmp``,
``/dev/shm`` and ``/etc/hosts`` (mount namespace; the real files are never
touched), so the two nodes look like two hosts and their ranks can only talk
over TCP. ``mpirun`` itself runs in a private mount namespace that sees the
same hosts file. The veth byte counters prove that traffic crossed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..common.errors import UserError

BRIDGE = "simbr0"
NET = "10.201.0"
NODES = ("simnode1", "simnode2")
STATE = Path("/var/tmp/pnn-scaling-twonodes")  # not under /tmp: each node mounts its own /tmp

_AGENT = """#!/bin/sh
# Launch agent for Open MPI's mpirun: run a command "on" a namespace node (written by pnn_mpi.scaling.twonodes).
while [ $# -gt 0 ]; do case $1 in -*) shift;; *) break;; esac; done
host=$1; shift
exec nsenter --net=/run/netns/$host unshare --uts --mount --propagation private sh -c '
hostname "$1"
for p in $3; do mkdir -p "$2/$1/keep$p"; mount --bind "$p" "$2/$1/keep$p"; done
mount --bind "$2/$1/tmp" /tmp; mount --bind "$2/$1/shm" /dev/shm; mount --bind "$2/hosts" /etc/hosts
for p in $3; do mkdir -p "$p"; mount --bind "$2/$1/keep$p" "$p"; done
shift 3; exec sh -c "$*"' sh "$host" "{state}" "{keep}" "$@"
"""


def kept_under_tmp() -> list[str]:
    """Folders under /tmp that the nodes must still see behind their own /tmp: the checkout, the
    interpreter's environment and the data (a CI clone or a scratch checkout may live in /tmp)."""
    wanted = [Path(__file__).resolve().parents[2], Path(sys.prefix).resolve(), Path.cwd().resolve()]
    if os.environ.get("PNN_MPI_DATA"):
        wanted.append(Path(os.environ["PNN_MPI_DATA"]).resolve())
    under = {str(p) for p in wanted if p.is_dir() and str(p).startswith("/tmp/") and not any(c.isspace() for c in str(p))}
    return sorted(under)


def why_not() -> str | None:
    """Why two nodes cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "unshare"):
        if not shutil.which(tool):
            return f"{tool} not found (iproute2, util-linux)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def up() -> Path:
    """Create the bridge, namespaces and files; returns the state folder. Idempotent after ``down``."""
    reason = why_not()
    if reason:
        raise UserError(f"cannot make two namespace nodes: {reason}")
    down()
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{NET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for i, node in enumerate(NODES, 1):
            _ip("netns", "add", node)
            _ip("link", "add", f"simveth{i}", "type", "veth", "peer", "name", "eth0", "netns", node)
            _ip("link", "set", f"simveth{i}", "master", BRIDGE, "up")
            _ip("-n", node, "addr", "add", f"{NET}.1{i}/24", "dev", "eth0")
            _ip("-n", node, "link", "set", "eth0", "up")
            _ip("-n", node, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        down()
        raise UserError(f"cannot make two namespace nodes: ip {' '.join(exc.cmd[1:])}: {exc.stderr.strip()}") from None
    for node in NODES:
        for sub in ("tmp", "shm"):
            (STATE / node / sub).mkdir(parents=True, exist_ok=True)
            (STATE / node / sub).chmod(0o1777)
    (STATE / "hosts").write_text("127.0.0.1 localhost\n" + f"{NET}.1 simhead\n" + "".join(f"{NET}.1{i} {n}\n" for i, n in enumerate(NODES, 1)))
    agent = STATE / "agent"
    agent.write_text(_AGENT.replace("{state}", str(STATE)).replace("{keep}", " ".join(kept_under_tmp())))
    agent.chmod(0o755)
    return STATE


def down() -> None:
    """Remove what ``up`` made (only our own names)."""
    for i, node in enumerate(NODES, 1):
        _ip("link", "del", f"simveth{i}", check=False)
        _ip("netns", "del", node, check=False)
    _ip("link", "del", BRIDGE, check=False)
    shutil.rmtree(STATE, ignore_errors=True)


@contextmanager
def up_for(where: str) -> Iterator[None]:
    """The two nodes made for a job ``where`` runs ("twonodes") and removed after it; nothing for "local"."""
    if where != "twonodes":
        yield
        return
    up()
    try:
        yield
    finally:
        down()


def bytes_crossed() -> int:
    """Bytes sent and received on the bridge side of node 1's veth so far."""
    try:
        base = Path("/sys/class/net/simveth1/statistics")
        return int((base / "rx_bytes").read_text()) + int((base / "tx_bytes").read_text())
    except OSError:
        return 0


PASSED = (
    "PATH",
    "PYTHONPATH",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "PNN_MPI_DATA",
    "OMPI_MCA_mpi_yield_when_idle",
    "OMPI_MCA_btl",
    "OMPI_ALLOW_RUN_AS_ROOT",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
)


def launcher(mpirun: str, ranks: int, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The words and environment that start ``ranks`` ranks, half on each node (block placement).

    Open MPI 5 with the oversubscribing default mapping put every rank on the
    first node, so that variable is dropped and the placement is explicit.
    """
    if ranks % 2:
        raise UserError(f"{ranks} ranks do not split evenly over two nodes")
    per = ranks // 2
    hosts = ",".join(f"{n}:{per}" for n in NODES)
    inner = f'mount --bind {STATE}/hosts /etc/hosts && exec "$@"'
    words = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        inner,
        "sh",
        mpirun,
        "--host",
        hosts,
        "--map-by",
        f"ppr:{per}:node",
        "--bind-to",
        "none",
    ]
    for name in PASSED:
        if name in env:
            words += ["-x", name]
    env = {k: v for k, v in env.items() if k != "PRTE_MCA_rmaps_default_mapping_policy"}
    env["PRTE_MCA_plm_ssh_agent"] = str(STATE / "agent")
    return words, env
