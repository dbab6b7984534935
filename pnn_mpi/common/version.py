"""The version of pnn_mpi, in a module of its own: every module can import it without importing the package."""

__version__ = "0.1.0"
