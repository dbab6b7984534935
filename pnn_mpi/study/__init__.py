"""``python -m pnn_mpi study``: the paper's experiments as a grid of real launches.

grid (TOML -> points) -> launch (mpiexec/srun per point) -> runner (resumable loop)
-> results (CSV rows) -> stats/findings -> figures/plots and report.md.
"""

from .entry import main

__all__ = ["main"]
