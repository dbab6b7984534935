"""What every layer shares: the errors that end a run, files written whole, the words of error
lines, printing that survives a closed stdout, bounded readers of JSON/TOML/XML and npz, the version.

Imports nothing else of pnn_mpi.
"""
