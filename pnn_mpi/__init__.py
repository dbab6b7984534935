"""pnn_mpi: parallel neural networks trained with MPI.

Every rank trains an identical feed-forward network on its own slice of the
data; the parameters are averaged across ranks with one Allreduce.
"""

from .common.version import __version__

__all__ = ["PNNClassifier", "__version__"]


def __getattr__(name: str):
    """``from pnn_mpi import PNNClassifier``, imported on first use: ``python -m pnn_mpi``
    must set its thread variables before numpy is loaded."""
    if name == "PNNClassifier":
        from .estimator import PNNClassifier

        return PNNClassifier
    raise AttributeError(f"module 'pnn_mpi' has no attribute {name!r}")
