"""``python -m pnn_mpi`` (and the ``pnn-mpi`` script): pin BLAS threads, run the CLI.

Ranks are the unit of parallelism; if each also started a BLAS thread pool,
16 ranks on a small machine would fight over its cores. The variables must be
set before numpy is first imported, hence here. A value the user exported wins.
"""

import os


def run() -> int:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from .cli import main  # after the variables are set: numpy reads them when it is first imported

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
