"""Scaling beyond this machine: calibrate here, simulate (SimGrid SMPI) or model (alpha-beta) 1 to 1,024 ranks.

``python -m pnn_mpi scaling`` (``command.main``) measures the training step
and the Allreduce on this machine, turns a training run into per-rank
programs of compute and collectives (``program``), replays them on platform
files (``traces``, ``simulate``, ``platforms``) and prices them analytically
(``model``), validates against real launches (``validate``) and writes the
report (``report``).
"""


def main(argv: list[str] | None = None) -> int:
    """The ``scaling`` command; imported only when it runs."""
    from .command import main as run

    return run(argv)
