"""The launcher facts behind ``--on-rank-failure continue``, measured again: ``python tests/ulfm_probe.py [TRIALS]``.

Not a test (pytest does not collect it): a probe that prints what this machine's
Open MPI does under ``mpiexec --with-ft ulfm`` when a rank is SIGKILLed in an
Allreduce of 101,770 floats, with the shared-memory transport and with TCP,
with and without ``OMPI_MCA_async_mpi_finalize=1``: how often the survivors
recovered and the job ended, how long until a survivor saw the error, the
launcher's exit status; then the launcher's status when every rank is killed,
and what ``MPI_Abort`` does in that mode. Each launch runs under a timeout.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import os, signal, sys, time
import numpy as np
from mpi4py import MPI
mode, stamp = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
if mode == "abort":
    if rank == 1:
        comm.Abort(7)
    comm.Barrier()
    sys.exit(0)
if mode == "all":
    comm.Barrier()
    os.kill(os.getpid(), signal.SIGKILL)
buf = np.ones(101770, np.float32)
for i in range(100):
    if i == 30 and rank == 1:
        with open(stamp, "w") as f:
            f.write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    except MPI.Exception:
        seen = time.time() - float(open(stamp).read())
        comm.Revoke()
        new = comm.Shrink()
        new.Barrier()
        print(f"detected {seen:.4f}", flush=True)
        break
"""


def launch(mode: str, env: dict[str, str], ranks: int = 4, timeout: float = 30) -> tuple[int | None, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "child.py"
        child.write_text(CHILD)
        command = [
            str(Path(sys.executable).parent / "mpiexec"),
            "--with-ft",
            "ulfm",
            "-n",
            str(ranks),
            sys.executable,
            str(child),
            mode,
            str(Path(tmp) / "stamp"),
        ]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return None, [float(line.split()[1]) for line in out.splitlines() if line.startswith("detected")]
        return proc.returncode, [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("detected")]


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM_WORLD", "PMIX_", "OMPI_MCA_async"))}
    base.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
        OMPI_MCA_mpi_yield_when_idle="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    for btl in ("^ofi", "tcp,self"):
        for finalize in ("", "1"):
            env = {**base, "OMPI_MCA_btl": btl, **({"OMPI_MCA_async_mpi_finalize": finalize} if finalize else {})}
            codes, seen = [], []
            for _ in range(trials):
                code, detected = launch("one", env)
                codes.append(code)
                seen += detected
            ended = sum(c is not None for c in codes)
            median = f"{statistics.median(seen) * 1e3:.0f} ms" if seen else "-"
            print(
                f"btl {btl:8} async_mpi_finalize {finalize or 'unset':5}: {ended}/{trials} jobs ended (the rest hung),"
                f" launcher status {sorted(set(c for c in codes if c is not None))}, survivors saw the error after {median} (median)"
            )
            time.sleep(0.5)
    env = {**base, "OMPI_MCA_async_mpi_finalize": "1"}
    print(f"every rank SIGKILLed: launcher status {launch('all', env, ranks=3)[0]}")
    print(f"MPI_Abort on rank 1: launcher status {launch('abort', env, timeout=20)[0]} (None: still running after 20 s)")


if __name__ == "__main__":
    main()
