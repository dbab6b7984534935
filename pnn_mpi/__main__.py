"""``python -m pnn_mpi`` (and the ``pnn-mpi`` script): pin BLAS threads, run the CLI.

Ranks are the unit of parallelism; if each also started a BLAS thread pool,
16 ranks on a small machine would fight over its cores. The variables must be
set before numpy is first imported, hence here. A value the user exported wins.
"""

import os
import sys

from .commands.launch import is_shorthand  # stdlib only: numpy must not load before the variables are set


def _trains(argv: list[str]) -> bool:
    """Whether these arguments run training (the default command: no word, or a flag, first)."""
    return not argv or argv[0] == "train" or (argv[0].startswith("-") and not is_shorthand(argv[0]))


def run() -> int:
    if _trains(sys.argv[1:]):
        from .parallel.signals import listen_early

        listen_early()  # a stop signal from now on is a checkpoint request, not death
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from .commands.cli import main  # after the variables are set: numpy reads them when it is first imported

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
