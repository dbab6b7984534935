"""pnn_mpi: parallel neural networks trained with MPI.

Every rank trains an identical feed-forward network on its own slice of the
data; the parameters are averaged across ranks with one Allreduce.
"""

__version__ = "0.1.0"
