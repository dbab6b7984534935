"""The MPI surface training needs, in the spirit of Horovod's tiny API.

``Communicator`` is that surface: ``rank``, ``size``, in-place summing and
averaging of one contiguous buffer, and a few object collectives for metrics.
``World`` implements it on an MPI communicator, ``SerialWorld`` for one process
without MPI. ``fail_together`` turns an error seen on some ranks into the same
clean error on all ranks, so a bad file that only the last rank's slice reaches
cannot leave the others blocked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

import numpy as np

from ..common.errors import INSTALL_MPI, UserError
from .stall import PROGRESS

T = TypeVar("T")


class Communicator(Protocol):
    """What the trainer, the data loader and the tools ask of the ranks they run on."""

    rank: int
    size: int
    mpi: bool  # whether collectives go through an MPI library (False: one process, in-process)

    def sum_(self, buf: np.ndarray) -> None:
        """Sum ``buf`` over all ranks, in place."""

    def average_(self, buf: np.ndarray) -> None:
        """Replace ``buf`` by its mean over all ranks, in place."""

    def allgather(self, obj: T) -> list[T]: ...

    def bcast(self, obj: T, root: int = 0) -> T: ...

    def gather(self, obj: T, root: int = 0) -> list[T] | None: ...

    def scatter(self, objs: list[T] | None, root: int = 0) -> T: ...

    def barrier(self) -> None: ...

    def abort(self, code: int) -> None: ...

    def library(self) -> str:
        """The MPI library's name and version, e.g. 'Open MPI 5.0.11'."""

    def library_version(self) -> str:
        """The MPI library's own first line of version text."""


class World:
    """Rank, size and the collectives of one MPI communicator (a ``Communicator``)."""

    mpi = True

    def __init__(self, comm=None):
        from mpi4py import MPI  # imported here: evaluate/predict/download run without MPI

        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def sum_(self, buf: np.ndarray) -> None:
        """Sum ``buf`` over all ranks, in place (one Allreduce)."""
        with PROGRESS:  # waiting in a collective, not stuck (stall.py)
            self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)

    def average_(self, buf: np.ndarray) -> None:
        """Replace ``buf`` by its mean over all ranks: one in-place Allreduce and a divide."""
        self.sum_(buf)
        if self.size > 1:
            buf *= 1.0 / self.size

    def allgather(self, obj: T) -> list[T]:
        with PROGRESS:
            return self.comm.allgather(obj)

    def bcast(self, obj: T, root: int = 0) -> T:
        with PROGRESS:
            return self.comm.bcast(obj, root=root)

    def gather(self, obj: T, root: int = 0) -> list[T] | None:
        with PROGRESS:
            return self.comm.gather(obj, root=root)

    def scatter(self, objs: list[T] | None, root: int = 0) -> T:
        with PROGRESS:
            return self.comm.scatter(objs, root=root)

    def barrier(self) -> None:
        with PROGRESS:
            self.comm.Barrier()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)

    def node(self) -> World:
        """The ranks sharing this rank's node (its shared memory), in world-rank order (a collective)."""
        return World(self.comm.Split_type(self._mpi.COMM_TYPE_SHARED, key=self.rank))

    def free(self) -> None:
        """Release a communicator this program made (never COMM_WORLD)."""
        if self.comm != self._mpi.COMM_WORLD:
            self.comm.Free()

    def library(self) -> str:
        """The MPI library's name and version, e.g. 'Open MPI 5.0.11'."""
        name, version = self._mpi.get_vendor()
        return f"{name} {'.'.join(str(v) for v in version)}"

    def library_version(self) -> str:
        """The MPI library's own first line of version text."""
        return self._mpi.Get_library_version().strip().splitlines()[0].strip()


class SerialWorld:
    """A world of one process without MPI, with World's interface.

    For tests and tools that drive the trainer in-process: with one rank every
    collective is the identity, so no MPI library needs to start.
    """

    rank = 0
    size = 1
    mpi = False

    def sum_(self, buf: np.ndarray) -> None:
        pass

    def average_(self, buf: np.ndarray) -> None:
        pass

    def allgather(self, obj: T) -> list[T]:
        return [obj]

    def bcast(self, obj: T, root: int = 0) -> T:
        return obj

    def gather(self, obj: T, root: int = 0) -> list[T]:
        return [obj]

    def scatter(self, objs: list[T] | None, root: int = 0) -> T:
        assert objs is not None, "the root's scatter needs its objects"
        return objs[0]

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        raise SystemExit(code)

    def library(self) -> str:
        return "no MPI"

    def library_version(self) -> str:
        return "no MPI (in-process, one rank)"


RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")  # set by Open MPI, PMIx launchers, MPICH


def launched() -> bool:
    """Whether a launcher (mpiexec, srun) started this process as one rank of a job."""
    return any(name in os.environ for name in RANK_VARIABLES)


def mpi_running() -> bool:
    """Whether this process has started MPI already (an mpi4py program) and not finished it."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized()


def current_world(comm=None, start_mpi_alone: bool = True) -> Communicator:
    """The ranks this process works with.

    ``comm``, if given; COMM_WORLD when a launcher started us or MPI runs already;
    otherwise, alone, COMM_WORLD of one rank when ``start_mpi_alone`` and an MPI
    library loads, else the serial world of one process. So ``pip install pnn_mpi``
    without any MPI library still trains, evaluates and predicts with one rank,
    while a rank of a launched job that cannot load MPI says what to install,
    instead of training as if it were alone.
    """
    if comm is not None:
        return World(comm)
    if launched() or mpi_running():
        try:
            return World()
        except (ImportError, RuntimeError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"started as one rank of a parallel job, but no MPI library loads ({why}): {INSTALL_MPI}") from None
    if start_mpi_alone:
        try:
            return World()
        except (ImportError, RuntimeError):
            pass  # no libmpi (mpi4py installs without one): the serial world is the 1-rank network
    return SerialWorld()


def fail_together(world: Communicator, action: Callable[[], T]) -> T:
    """Run ``action`` on every rank; a UserError on any rank is raised on all.

    Every rank then exits cleanly with the message of the lowest failing rank,
    instead of some ranks failing while others wait in the next collective.
    """
    try:
        result, message = action(), None
    except UserError as exc:
        result, message = None, str(exc)
    messages = world.allgather(message)
    first = next((m for m in messages if m), None)
    if first is not None:
        raise UserError(first)
    return cast(T, result)
