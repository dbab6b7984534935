"""The one exception type a user can cause.

Anything the user can fix (a bad flag, a bad file, too many ranks) raises
``UserError``; the entry point reports it as one line ``pnn_mpi: error: ...``
on stderr with exit status 2, never as a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported in one line without a traceback."""
