"""The command line: ``python -m pnn_mpi [command] [options]``.

Training is the default command, so ``mpiexec -n 16 python -m pnn_mpi`` needs
no arguments. This module is only the entry point: it picks the command, runs
it, and turns the ways a run can end into exit statuses. Every user error
becomes one line ``pnn_mpi: error: ...``; the options live in ``options.py``.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
import traceback
from collections.abc import Callable

from .. import scaling, study
from ..common.errors import STOP_EXIT_CODE, Interrupted, UserError
from ..common.wording import bounded_line
from ..parallel.comm import RANK_VARIABLES
from ..parallel.resilience import RankLost, leave_by_signal, live_world
from ..report import plot
from ..training.options import parse_train_args
from . import bench, file_commands, launch, run


def cmd_train(argv: list[str]) -> int:
    run.run_training(parse_train_args(argv))  # starts MPI: only training (and bench) need it
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "launch": launch.main,
    "download": file_commands.cmd_download,
    "evaluate": file_commands.cmd_evaluate,
    "predict": file_commands.cmd_predict,
    "resume-ranks": file_commands.cmd_resume_ranks,
    "bench": bench.main,
    "study": study.main,
    "plot": plot.main,
    "scaling": scaling.main,
}


def check_command(argv: list[str]) -> None:
    """A first word that is no flag and no command is most likely a command mistyped: say which one.

    Training takes no such word, so without this ``evalute`` would start a training run's parser
    and end in 'unrecognized arguments'."""
    if not argv or argv[0].startswith("-") or argv[0] in COMMANDS:
        return
    close = difflib.get_close_matches(argv[0], COMMANDS, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"the commands are {', '.join(COMMANDS)}"
    raise UserError(f"unknown command '{argv[0]}': {hint}")


def _check_words(command: str, argv: list[str]) -> None:
    """The command word of ``python -m pnn_mpi`` and of the job ``launch`` would start: a mistyped
    one is named before any rank starts only to say so."""
    if command == "launch":
        request = launch.parse(argv)
        argv = request.rest if request else []
        argv = argv[1:] if argv[:1] == ["train"] else argv
    elif command != "train":
        return
    check_command(argv)


def _live_mpi():
    """mpi4py's MPI module if this process has started MPI and not yet finished it."""
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() else None


def _live_comm(mpi):
    """The communicator of the ranks still alive: a fault-tolerant run's shrunk one, else COMM_WORLD."""
    world = live_world()
    return world.comm if world is not None else mpi.COMM_WORLD


def _lead_rank() -> bool:
    """Whether this process should print: rank 0 of MPI, or of the launcher before MPI starts."""
    mpi = _live_mpi()
    if mpi is not None:
        return _live_comm(mpi).Get_rank() == 0
    for name in RANK_VARIABLES:
        if name in os.environ:
            return os.environ[name] == "0"
    return True


def _wait_for_every_rank(seconds: float = 10.0) -> None:
    """Under a launcher, wait (at most ``seconds``) until every rank reaches its error exit.

    Open MPI's mpiexec kills the whole job as soon as one rank exits non-zero;
    without this meeting point rank 0 could be killed before its one-line
    message is out. User errors are raised on all ranks alike, so all arrive.
    """
    mpi = _live_mpi()
    if mpi is None:
        if not any(name in os.environ for name in RANK_VARIABLES):
            return
        try:
            from mpi4py import MPI as mpi  # the error came before training started MPI
        except (ImportError, RuntimeError):
            return  # no MPI library loads: the error says so, and there is no one to wait for

    if mpi.Is_finalized() or _live_comm(mpi).Get_size() == 1:
        return
    request = _live_comm(mpi).Ibarrier()
    deadline = time.monotonic() + seconds
    try:
        while not request.Test() and time.monotonic() < deadline:
            time.sleep(0.005)
    except mpi.Exception:
        pass  # a rank died meanwhile (fault-tolerant runs): nobody left to wait for


def _leave(line: str, code: int) -> int:
    """Print ``line`` once (rank 0) and exit every rank with ``code`` together."""
    if _lead_rank():
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    _wait_for_every_rank()
    return code


def _abort_on_crash(exc: BaseException) -> int:
    """Print an unexpected exception with its rank and bring the whole job down."""
    mpi = _live_mpi()
    rank = mpi.COMM_WORLD.Get_rank() if mpi else 0
    text = "".join(traceback.format_exception(exc))
    if mpi and live_world() is not None:  # --on-rank-failure continue: MPI_Abort would hang the job there
        sys.stderr.write(f"pnn_mpi: rank {rank}: unexpected error, leaving the job (the others carry on without it)\n{text}")
        leave_by_signal()
    sys.stderr.write(f"pnn_mpi: rank {rank}: unexpected error, aborting the job\n{text}")
    if mpi and mpi.COMM_WORLD.Get_size() > 1:
        _abort_job(mpi, 1)
    return 1


FORWARD_SECONDS = 0.2  # for the launcher to pass a rank's last line on before MPI_Abort tears the job down


def _abort_job(mpi, code: int) -> None:
    """MPI_Abort, once the launcher has had a moment to forward what this rank just wrote: MPICH's
    hydra kills its proxies at the abort, and a line still in their pipe was lost (about 1 run in 10)."""
    sys.stderr.flush()
    time.sleep(FORWARD_SECONDS)
    mpi.COMM_WORLD.Abort(code)


def _end_on_interrupt() -> int:
    """Ctrl-C that could not wait for a checkpoint: under MPI end the whole job, never this rank alone
    (its peers would wait for it in their next collective)."""
    mpi = _live_mpi()
    several = mpi is not None and mpi.COMM_WORLD.Get_size() > 1
    rank = mpi.COMM_WORLD.Get_rank() if several else 0
    if several and live_world() is not None:  # --on-rank-failure continue: MPI_Abort would hang the job there
        sys.stderr.write(f"pnn_mpi: rank {rank}: interrupted: leaving the job (the others carry on without it)\n")
        leave_by_signal()
    sys.stderr.write(f"pnn_mpi: rank {rank}: interrupted: ending the whole job\n" if several else "pnn_mpi: interrupted\n")
    sys.stderr.flush()
    if several:
        _abort_job(mpi, 130)
    return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "train"
    if command == "train" and argv and launch.is_shorthand(argv[0]):
        command = "launch"  # python -m pnn_mpi -n 16 ...: the launcher's shorthand
    try:
        _check_words(command, argv)
        return COMMANDS[command](argv)
    except UserError as exc:
        return _leave(bounded_line(f"pnn_mpi: error: {exc}"), 2)
    except RankLost as exc:  # before the part of a run that survives it
        return _leave(f"pnn_mpi: error: {exc} while the run was starting; launch it again", 2)
    except Interrupted as exc:
        return _leave(f"pnn_mpi: {exc}; checkpoint written: rerun the same command with --resume to continue", STOP_EXIT_CODE)
    except KeyboardInterrupt:
        return _end_on_interrupt()
    except Exception as exc:  # noqa: BLE001 - any other failure must not leave ranks hanging
        return _abort_on_crash(exc)
