"""The network and its maths: activations and output losses as tables, weight draws, the MLP on one
flat parameter array, SGD with momentum, the batch-1 kernels, and scoring.

Knows nothing of MPI or files: a lower layer than data, parallel and training.
"""
