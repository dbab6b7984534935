"""pnn_mpi: parallel neural networks trained with MPI.

Every rank trains an identical feed-forward network on its own slice of the
data; the parameters are averaged across ranks with one Allreduce.

The public surface: ``PNNClassifier`` (the estimator), ``TrainConfig`` (one
run's options), ``train`` (the training loop on data already loaded) and
``run_training`` (one run from files to a saved model).
"""

from .common import moved
from .common.version import __version__

moved.install()  # the modules' names from before the layer folders keep working (with a DeprecationWarning)

__all__ = ["PNNClassifier", "TrainConfig", "__version__", "run_training", "train"]

# name -> (module, attribute): loaded on first use, since each pulls in numpy.
_LAZY = {
    "PNNClassifier": ("estimator", "PNNClassifier"),
    "TrainConfig": ("training.config", "TrainConfig"),
    "train": ("training.train", "train"),
    "run_training": ("commands.run", "run_training"),
}


def __getattr__(name: str):
    """``from pnn_mpi import PNNClassifier`` (or ``TrainConfig``, ``train``, ``run_training``), imported on
    first use: ``python -m pnn_mpi`` must set its thread variables before numpy is loaded."""
    if name in _LAZY:
        from importlib import import_module

        module, attribute = _LAZY[name]
        return getattr(import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'pnn_mpi' has no attribute {name!r}")
