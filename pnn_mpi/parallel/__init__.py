"""The ranks: the MPI surface (``Communicator``, ``World``), the sync schedules, surviving a lost
rank (ULFM), stop requests by signal, and test-only fault injection.
"""
