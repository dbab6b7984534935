"""Starting the measured jobs: on this machine's cores, or across its two namespace nodes.

Both the calibration and the validation runs go through ``job``, so a figure
in the validation table and the calibration it is checked against were made
the same way (same launcher, environment, timeouts as the study uses).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..common.errors import UserError
from ..study.launch import launch_env, resolve_launcher, run_command
from . import twonodes

WHERE = ("local", "twonodes")
# Ranks free to move between cores, on this machine as on the namespace nodes: Open MPI binds 2
# ranks to a core each by default, and on a shared machine a bound rank waits for its busy core
# while the other is free, so calibration and validation launches are placed alike. One BLAS
# thread per rank, also for the calibration module (which does not start through pnn_mpi's
# __main__): unpinned, a step of 784-128-10 took 40 times longer on the loaded machine.
JOB_ENV = {
    "PRTE_MCA_hwloc_default_binding_policy": "none",
    "OMPI_MCA_hwloc_base_binding_policy": "none",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def job(where: str, ranks: int, module_args: Sequence[str], folder: Path, timeout: float = 600) -> Path:
    """Run ``python -m ...module_args`` on ``ranks`` ranks ``where``; returns the folder with its stdout/stderr.

    Raises a UserError naming the launch and the tail of its stderr when it fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    env = {**JOB_ENV, **launch_env(os.environ, timeout)}  # what the user exported wins
    mpiexec = resolve_launcher(None, env)
    if where == "local":
        words = mpiexec
    else:
        mpirun = str(Path(mpiexec[0]).with_name("mpirun")) if Path(mpiexec[0]).with_name("mpirun").exists() else mpiexec[0]
        words, env = twonodes.launcher(mpirun, ranks, env)
    command = [*words, "-n", str(ranks), sys.executable, *module_args]
    (folder / "command.txt").write_text(" ".join(command) + "\n")
    outcome = run_command(command, env, timeout, folder / "stdout.txt", folder / "stderr.txt")
    if outcome.returncode != 0:
        tail = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()[-4:]
        raise UserError(
            f"{where} job with {ranks} ranks failed (exit {outcome.returncode}{', timed out' if outcome.timed_out else ''}): "
            f"{' '.join(module_args[:4])} ...: {' | '.join(tail) or 'no output'}"
        )
    return folder


def scratch(prefix: str) -> Path:
    """A fresh folder the nodes can see (under /var/tmp, not /tmp: each node has its own /tmp)."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def check_where(where: str) -> None:
    if where not in WHERE:
        raise UserError(f"unknown place {where!r}: expected one of {', '.join(WHERE)}")
