"""The job scripts in jobs/ under a real SLURM (Debian's slurm-wlm), end to end.

Opt-in, because they need root, the SLURM daemons and a minute or two:

    PNN_MPI_SLURM=1 python -m pytest tests/test_slurm.py            # one-node cluster
    PNN_MPI_SLURM_MULTINODE=1 python -m pytest tests/test_slurm.py  # the 2-node cluster

.ci/slurm-tests installs slurm-wlm, starts the one-node cluster (tests/slurm/) and
runs these. With SLURM_CONF set and its cluster answering, the tests use that
cluster; otherwise they start their own in a temporary folder and stop it after.
The multi-node tests always build their own cluster of two network namespaces
(tests/slurm/multinode-up.sh) and take it down after.

Every job is small: 2-4 ranks, 2,000 MNIST samples, 1-2 epochs (the signal tests
train a little longer so there is something to interrupt).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, find_mnist

JOBS = REPO / "jobs"
HELPERS = REPO / "tests" / "slurm"
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo")
DAEMONS = ("slurmctld", "slurmd")
SMALL = ("--train-size", "2000", "--test-size", "1000")
# Long enough to be interrupted: batch 1 with the plain (uncompiled) step, ~0.07 s
# per epoch on 2 ranks here, so 60 epochs leave seconds after the signal is sent.
LONG = (*SMALL, "--batch-size", "1", "--kernel", "generic", "--momentum", "0", "--lr", "0.01", "--eval-every", "0")
REQUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD")


def requeued_or_over(info: dict[str, str]) -> bool:
    """Requeued and back in the queue (not still COMPLETING), or ended for good."""
    return (int(info.get("Restarts", 0)) >= 1 and info["JobState"] in REQUEUED) or info["JobState"] in FINAL


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _missing(names) -> list[str]:
    return [n for n in names if shutil.which(n) is None and not Path("/usr/sbin", n).exists()]


def _skip_reason(flag: str) -> str | None:
    if os.environ.get(flag) != "1":
        return f"SLURM tests are opt-in: set {flag}=1 (needs root and slurm-wlm; .ci/slurm-tests does both)"
    missing = _missing(CLIENTS + DAEMONS)
    if missing:
        return f"SLURM not installed ({', '.join(missing)} not found): apt-get install -y slurm-wlm"
    if os.geteuid() != 0:
        return "the SLURM test clusters run their daemons as root: run as root"
    return None


_single_reason = _skip_reason("PNN_MPI_SLURM")
_multi_reason = _skip_reason("PNN_MPI_SLURM_MULTINODE") or (
    f"{', '.join(_missing(('ip', 'nsenter', 'unshare')))} not found" if _missing(("ip", "nsenter", "unshare")) else None
)
needs_slurm = pytest.mark.skipif(_single_reason is not None, reason=_single_reason or "")
needs_multinode = pytest.mark.skipif(_multi_reason is not None, reason=_multi_reason or "")


# ---------------------------------------------------------------- clusters


class Cluster:
    """A running SLURM cluster, reached through its slurm.conf."""

    def __init__(self, conf: str):
        self.conf = conf

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for sbatch: ours, minus SLURM/MPI job state, plus what the jobs need."""
        drop = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "OMPI_COMM_", "OMPI_MCA_ess", "PMIX_", "PMI_", "PRTE_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        mnist = find_mnist()
        if mnist is None:
            pytest.skip("real MNIST not found: set PNN_MPI_DATA to a folder with the four files")
        env.update(
            SLURM_CONF=self.conf,
            PNN_MPI_PYTHON=sys.executable,  # the jobs run in other folders: no ./.venv there
            PNN_MPI_DATA=str(mnist),
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
            OMPI_MCA_btl="^ofi",  # about 1 s less start-up per job
            MPIEXEC_TIMEOUT="240",  # a hung Open MPI job dies instead of hanging the test
            OMP_NUM_THREADS="1",
        )
        env.update(extra)
        return env

    def run(self, *command: str, env=None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(command, env=env or self.env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def submit(self, script: str, *args: str, cwd: Path, env, options=(), wait: bool = False) -> tuple[int, int | None]:
        """sbatch SCRIPT ARGS in folder cwd: (job id, exit status of sbatch --wait or None)."""
        command = ["sbatch", "--parsable", f"--chdir={cwd}", "--time=5", *options]
        if wait:
            command.append("--wait")
        command += [str(JOBS / script), *args]
        proc = self.run(*command, env=env, timeout=300, check=False)
        match = re.search(r"^(\d+)", proc.stdout, re.M)
        if not match:
            raise AssertionError(f"sbatch failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return int(match.group(1)), proc.returncode if wait else None

    def job(self, job_id: int) -> dict[str, str]:
        text = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_id: int, until=lambda info: info["JobState"] in FINAL, timeout: float = 180, what: str = "to end") -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if until(info):
                return info
            if time.monotonic() > deadline:
                self.run("scancel", str(job_id), check=False)
                raise AssertionError(f"job {job_id} did not get {what} in {timeout:.0f} s: {info.get('JobState')} {info.get('Reason')}")
            time.sleep(0.1)


def release_requeued(cluster: Cluster, job_id: int) -> None:
    """Start a requeued job now instead of after SLURM's ~2-minute hold, but never within the
    second its old credential was revoked.

    On requeue slurmctld tells slurmd to revoke the job's credential, stamped in whole seconds,
    and slurmd refuses any credential of that job created no later (``ctime <= revoked``): a
    relaunch in the same second is killed as "non-startable batch job: Job credential revoked"
    and ends FAILED 1:0 (the flake of issue 11). The revocation happened before the job showed
    up as requeued, so starting from the second after next is always after it.
    """
    time.sleep(math.floor(time.time()) + 2 - time.time())
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def _script(name: str, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(HELPERS / name), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"tests/slurm/{name} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def _answers(conf: str) -> bool:
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], env={**os.environ, "SLURM_CONF": conf}, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and any(state in proc.stdout for state in ("idle", "mix", "alloc"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The one-node cluster: the one SLURM_CONF names if it answers, else our own."""
    conf = os.environ.get("SLURM_CONF")
    if conf and Path(conf).is_file() and _answers(conf):
        yield Cluster(conf)
        return
    folder = tmp_path_factory.mktemp("slurm")
    _script("cluster-up.sh", str(folder))
    try:
        yield Cluster(str(folder / "slurm.conf"))
    finally:
        _script("cluster-down.sh", str(folder))


MULTINODE_DIR = Path(os.environ.get("PNN_MPI_SLURM_MN_DIR", "/var/tmp/pnn-slurm-multinode"))
VETHS = ("pnn-veth1", "pnn-veth2")


@pytest.fixture(scope="session")
def multinode():
    """Two nodes in network namespaces on a bridge (tests/slurm/multinode-up.sh).

    The nodes see this checkout (with its .venv) and the data even where those
    live under /tmp, which each node replaces with its own.
    """
    data = os.environ.get("PNN_MPI_DATA")
    # The paths as the jobs will name them (a path through a symbolic link must exist as such inside the node).
    shared = [str(REPO), os.path.abspath(sys.executable + "/../..")] + ([os.path.abspath(data)] if data else [])
    _script("multinode-up.sh", str(MULTINODE_DIR), env={**os.environ, "PNN_MPI_SLURM_SHARE": ":".join(shared)})
    try:
        yield Cluster(str(MULTINODE_DIR / "slurm.conf"))
    finally:
        _script("multinode-down.sh", str(MULTINODE_DIR), timeout=120)
        shutil.rmtree(MULTINODE_DIR, ignore_errors=True)


@pytest.fixture
def shared_dir(multinode, request):
    """A work folder every node sees (each node has its own /tmp, so not under /tmp)."""
    folder = MULTINODE_DIR / "work" / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- helpers


def log_of(cwd: Path, job_id: int) -> str:
    logs = list(cwd.glob(f"slurm-*-{job_id}.out"))
    return logs[0].read_text(errors="replace") if logs else "(no log)"


def wait_for_line(cwd: Path, job_id: int, pattern: str, cluster: Cluster, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log_of(cwd, job_id), re.M):
        if time.monotonic() > deadline or cluster.job(job_id)["JobState"] in FINAL:
            raise AssertionError(f"job {job_id} never printed /{pattern}/:\n{log_of(cwd, job_id)}")
        time.sleep(0.1)


def check_run(folder: Path, ranks: int, log: str) -> dict:
    """A finished run folder: a loadable model and metrics that name the ranks it ran with."""
    assert (folder / "model.npz").is_file(), f"no model in {folder}:\n{log}"
    with np.load(folder / "model.npz", allow_pickle=False) as model:
        assert "sizes" in model.files
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["ranks"] == ranks, log
    assert 0.0 < metrics["test_accuracy"] <= 1.0
    return metrics


def veth_bytes() -> dict[str, int]:
    total = {}
    for link in VETHS:
        stats = Path("/sys/class/net", link, "statistics")
        total[link] = int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())
    return total


# ---------------------------------------------------------------- one node


@needs_slurm
def test_train_sbatch_trains_with_the_ranks_slurm_gave(cluster, tmp_path):
    job, status = cluster.submit("train.sbatch", *SMALL, "--epochs", "2", cwd=tmp_path, env=cluster.env(), options=["--ntasks=3"], wait=True)
    log = log_of(tmp_path, job)
    assert status == 0, log
    assert "launcher: mpiexec --bind-to none -n 3" in log
    check_run(tmp_path / "runs" / f"slurm-{job}", 3, log)


@needs_slurm
def test_wrong_launcher_is_caught_by_the_world_size_check(cluster, tmp_path):
    # srun without an MPI plugin starts N independent one-rank jobs of the pip Open MPI:
    # --expect-ranks "$SLURM_NTASKS" turns that into one error line per rank and exit 2.
    env = cluster.env(PNN_MPI_LAUNCHER="srun --mpi=none")
    job, _ = cluster.submit("train.sbatch", *SMALL, "--epochs", "1", cwd=tmp_path, env=env, options=["--ntasks=2"])
    info = cluster.wait(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0"), log
    errors = [line for line in log.splitlines() if line.startswith("pnn_mpi: error:")]
    assert len(errors) == 2 and all("expected 2 ranks" in line and "MPI started 1" in line for line in errors), log
    assert "Traceback" not in log
    assert not (tmp_path / "runs" / f"slurm-{job}" / "model.npz").exists()


@needs_slurm
def test_usr1_checkpoints_requeues_and_the_requeued_job_resumes(cluster, tmp_path):
    """scancel --batch --signal=USR1 is what --signal=B:USR1@60 does at the time limit."""
    from pnn_mpi.training.checkpoint import FILE as CHECKPOINT

    job, _ = cluster.submit("train.sbatch", *LONG, "--epochs", "60", cwd=tmp_path, env=cluster.env(), options=["--ntasks=2"])
    wait_for_line(tmp_path, job, r"^epoch\s+2/60", cluster)
    cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    info = cluster.wait(job, until=requeued_or_over, what="requeued")
    log = log_of(tmp_path, job)
    assert int(info["Restarts"]) == 1 and info["JobState"] in REQUEUED, f"{info}\n{log}"
    assert "got SIGUSR1" in log and re.search(r"pnn_mpi: SIGUSR1: stopped in epoch \d+", log), log
    assert "requeueing job" in log
    out = tmp_path / "runs" / f"slurm-{job}"
    assert (out / CHECKPOINT).is_file() and not (out / "model.npz").exists(), log

    # SLURM holds a requeued job for ~2 minutes (BeginTime); let it start now.
    release_requeued(cluster, job)
    info = cluster.wait(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "(restart 1)" in log and "resuming from" in log, log
    check_run(out, 2, log)


@needs_slurm
def test_a_requeued_job_resumes_the_survivors_of_a_lost_rank_with_as_many_ranks(cluster, tmp_path):
    """--on-rank-failure continue: rank 1 of 3 dies in epoch 2 and the survivors go on; USR1 makes
    them checkpoint and the job requeue. Their checkpoint resumes only with 2 ranks: the requeued
    job, given its 3 tasks again, asks ``resume-ranks``, launches 2 and finishes, and metrics.json
    tells the whole story (3 launched, rank 1 lost, 2 at the end)."""
    env = cluster.env(PNN_MPI_ON_RANK_FAILURE="continue", PNN_MPI_INJECT="kill:1:2:5")
    job, _ = cluster.submit("train.sbatch", *LONG, "--epochs", "150", cwd=tmp_path, env=env, options=["--ntasks=3"])
    wait_for_line(tmp_path, job, r"^lost rank 1: going on with 2 ranks", cluster)
    wait_for_line(tmp_path, job, r"^epoch\s+4/150", cluster)  # a checkpoint by the survivors is in place
    cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    info = cluster.wait(job, until=requeued_or_over, what="requeued")
    log = log_of(tmp_path, job)
    assert int(info["Restarts"]) == 1 and info["JobState"] in REQUEUED, f"{info}\n{log}"

    release_requeued(cluster, job)
    info = cluster.wait(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    out = tmp_path / "runs" / f"slurm-{job}"
    assert f"the checkpoint in runs/slurm-{job} was written by 2 surviving ranks: launching 2 of the 3 tasks" in log, log
    assert "mpiexec --with-ft ulfm --bind-to none -n 2" in log and "resuming from" in log, log
    metrics = check_run(out, 2, log)
    assert (metrics["launched_ranks"], metrics["finished_with_ranks"]) == (3, 2)
    assert [f["lost"] for f in metrics["rank_failures"]] == [[1]]


@needs_slurm
def test_time_limit_warning_signal_checkpoints_and_requeues(cluster, tmp_path):
    """The real thing: --time=2 with --signal=B:USR1@50.

    SLURM may send the signal up to 60 s before the time asked for (sbatch(1)): with --time=1 and
    @50 it could come at once, before the ranks' Python had installed its handler, killing them
    (exit 138, no requeue; a flake seen here). With --time=2 it comes 10 to 70 s into the job.
    """
    job, _ = cluster.submit(
        "train.sbatch", *LONG, "--epochs", "5000", cwd=tmp_path, env=cluster.env(), options=["--ntasks=2", "--time=2", "--signal=B:USR1@50"]
    )
    try:
        info = cluster.wait(job, until=requeued_or_over, timeout=180, what="requeued")
        log = log_of(tmp_path, job)
        assert int(info["Restarts"]) == 1, f"{info}\n{log}"
        assert "got SIGUSR1" in log and "stopped in epoch" in log and "requeueing job" in log, log
    finally:
        cluster.run("scancel", str(job), check=False)


@needs_slurm
def test_study_sbatch_runs_every_point_inside_one_allocation(cluster, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[study]\ntitle = "slurm test"\ntimeout = 120\n'
        '[fixed]\ndataset = "mnist"\ntrain-size = 2000\ntest-size = 1000\nepochs = 1\nhidden = [32]\n'
        "[grids.ranks]\naxes = { ranks = [1, 2] }\n"
    )
    job, status = cluster.submit("study.sbatch", "--grid", str(grid), "--no-plots", cwd=tmp_path, env=cluster.env(), options=["--ntasks=2"], wait=True)
    log = log_of(tmp_path, job)
    assert status == 0, log
    results = tmp_path / "results" / f"slurm-{job}"
    rows = (results / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), "\n".join(rows) + log
    ranks = sorted(json.loads(p.read_text())["ranks"] for p in results.rglob("metrics.json"))
    assert ranks == [1, 2], log


@needs_slurm
def test_study_sbatch_stops_on_usr1_requeues_and_finishes(cluster, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[study]\ntitle = "slurm signal test"\ntimeout = 120\n'
        '[fixed]\ndataset = "mnist"\ntrain-size = 2000\ntest-size = 1000\nepochs = 60\nranks = 2\n'
        'batch-size = 1\nkernel = "generic"\nmomentum = 0.0\nlr = 0.01\neval-every = 0\n'
        "[grids.seeds]\naxes = { seed = [1, 2] }\n"
    )
    job, _ = cluster.submit("study.sbatch", "--grid", str(grid), "--no-plots", cwd=tmp_path, env=cluster.env(), options=["--ntasks=2"])
    results = tmp_path / "results" / f"slurm-{job}"
    deadline = time.monotonic() + 120
    while not any(re.search(r"^epoch\s+2/60", p.read_text(errors="replace"), re.M) for p in results.glob("runs/*/stdout.txt")):
        assert time.monotonic() < deadline and cluster.job(job)["JobState"] not in FINAL, log_of(tmp_path, job)
        time.sleep(0.1)
    cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    info = cluster.wait(job, until=requeued_or_over, what="requeued")
    log = log_of(tmp_path, job)
    assert int(info["Restarts"]) == 1, f"{info}\n{log}"
    assert "study stopped: requeueing job" in log, log

    release_requeued(cluster, job)
    info = cluster.wait(job)
    log = log_of(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    rows = (results / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:]), "\n".join(rows) + log


# ---------------------------------------------------------------- two nodes


@needs_multinode
def test_multinode_allreduce_crosses_the_network(multinode, shared_dir):
    # TCP only (no shared-memory path could be used between the namespaces anyway).
    env = multinode.env(OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,tcp")
    before = veth_bytes()
    job, status = multinode.submit("train-multinode.sbatch", *SMALL, "--epochs", "2", cwd=shared_dir, env=env, wait=True)
    after = veth_bytes()
    log = log_of(shared_dir, job)
    assert status == 0, log
    assert "on node[1-2]: 4 tasks" in log, log
    metrics = check_run(shared_dir / "runs" / f"slurm-{job}", 4, log)
    # The 784-128-10 network is ~0.4 MB of float32; every Allreduce moves it through
    # both veths. Measured: ~3.3 MB each for this job; sbatch/slurmd chatter is ~30 kB.
    moved = {link: after[link] - before[link] for link in VETHS}
    print(f"bytes through the veths during job {job}: {moved}")
    assert all(n > 1_000_000 for n in moved.values()), f"bytes through the veths: {moved}\n{log}"
    assert metrics["host"] == "node1"


@needs_multinode
def test_multinode_shared_memory_alone_cannot_join_the_nodes(multinode, shared_dir):
    """Proof the nodes are apart: without TCP, Open MPI finds no way between them."""
    env = multinode.env(OMPI_MCA_pml="ob1", OMPI_MCA_btl="self,vader", MPIEXEC_TIMEOUT="60")
    job, status = multinode.submit("train-multinode.sbatch", *SMALL, "--epochs", "1", cwd=shared_dir, env=env, wait=True)
    log = log_of(shared_dir, job)
    assert status != 0, log
    assert "unable to reach each other" in log, log
    assert not (shared_dir / "runs" / f"slurm-{job}" / "model.npz").exists()
