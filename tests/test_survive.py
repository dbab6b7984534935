"""``--on-rank-failure continue`` under a real ``mpiexec --with-ft ulfm``: ranks are killed
(PNN_MPI_INJECT) and the survivors must finish, save a consistent model and say what happened.

Every launch runs under MPIEXEC_TIMEOUT (``clean_env``) and a subprocess timeout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest

from conftest import REPO, clean_env, mpiexec_path, rank_data, run_pnn, write_dataset
from pnn_mpi.data import datasets
from pnn_mpi.data.slicing import slice_bounds
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.training import checkpoint, outdir
from pnn_mpi.training.checkpoint import Progress, RankState
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.model_io import load_model
from pnn_mpi.training.train import Clock, Hooks, train

pytestmark = pytest.mark.usefixtures("ulfm")

TRAIN, TEST = 2000, 200  # 500 samples a rank at 4 ranks: 16 steps of 32 an epoch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=TRAIN, test=TEST, seed=2)


def _launch(tiny, out, inject, *flags, ranks=4, ft=True, on_failure="continue", fixed=True):
    """The run under mpiexec; ``fixed``: the settings the defaults rule would choose are given (else it chooses)."""
    command = [
        mpiexec_path(),
        *(["--with-ft", "ulfm"] if ft else []),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "pnn_mpi",
        "--dataset",
        "custom",
        "--data-dir",
        str(tiny),
        "--hidden",
        "16",
        "--epochs",
        "3",
        "--out",
        str(out),
        *(["--lr", "0.05", "--momentum", "0.9", "--lr-schedule", "constant", "--warmup", "0"] if fixed else []),  # whatever the defaults
        "--on-rank-failure",
        on_failure,
        *flags,
    ]
    env = clean_env(PNN_MPI_INJECT=inject) if inject else clean_env()
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=REPO, stdin=subprocess.DEVNULL)


def _finished(proc, out, lost: list[list[int]]) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "metrics.json").exists(), proc.stdout + proc.stderr  # say what the run printed when it saved nothing
    record = json.loads((out / "metrics.json").read_text())
    assert [f["lost"] for f in record["rank_failures"]] == lost
    assert record["launched_ranks"] == 4 and record["finished_with_ranks"] == 4 - sum(map(len, lost))
    assert record["finished_with_fewer_ranks"] is True
    assert all(f["recovery_seconds"] is not None and f["recovery_seconds"] < 30 for f in record["rank_failures"])
    assert sum(record["dataset"]["slice_sizes"]) == TRAIN  # the lost samples were taken over, none dropped
    assert "finished with" in proc.stdout and (out / "model.npz").exists()
    return record


@pytest.mark.parametrize("sync", ["end", "epoch", "steps:5", "grad"])
def test_a_rank_killed_mid_epoch_leaves_three_that_finish(tiny, tmp_path, sync):
    out = tmp_path / "run"
    record = _finished(_launch(tiny, out, "kill:1:2:5", "--sync", sync), out, [[1]])
    assert record["rank_failures"][0]["survivors"] == [0, 2, 3]
    assert record["test_accuracy"] > 0.9  # the tiny set is easy: a broken average would not get there
    if sync == "epoch":  # evaluate scores the saved model exactly as the run reported
        proc = run_pnn("evaluate", "--model", str(out / "model.npz"), "--dataset", "custom", "--data-dir", str(tiny), "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["test_accuracy"] == record["test_accuracy"]


def test_losing_rank_0_hands_reporting_and_saving_to_the_lowest_survivor(tiny, tmp_path):
    out = tmp_path / "run"
    proc = _launch(tiny, out, "kill:0:2:3", "--sync", "grad")
    record = _finished(proc, out, [[0]])
    assert record["rank_failures"][0]["survivors"] == [1, 2, 3]
    assert "lost rank 0: going on with 3 ranks" in proc.stdout and "epoch 3/3" in proc.stdout


def test_rank_0_lost_after_training_the_next_one_scores_and_saves(tiny, tmp_path):
    """Rank 0 dies before saving: every survivor holds the parallel network and its score (the
    ranks scored it in shares), so the new rank 0 saves it; evaluate agrees."""
    out = tmp_path / "run"
    record = _finished(_launch(tiny, out, "kill-in-save:0"), out, [[0]])
    assert record["rank_failures"][0]["resumed_at"] == {"epoch": 3, "step": -1}
    proc = run_pnn("evaluate", "--model", str(out / "model.npz"), "--dataset", "custom", "--data-dir", str(tiny), "--json")
    assert json.loads(proc.stdout)["test_accuracy"] == record["test_accuracy"] > 0.9


@pytest.mark.parametrize("action", ["stop", "spin"])
@pytest.mark.parametrize("rank", [2, 0])
def test_a_stopped_rank_is_lost_after_the_stall_timeout_and_killed(tiny, tmp_path, rank, action):
    """SIGSTOP, or an endless loop in Python that never enters MPI, not death: Open MPI's heartbeat
    detector (switched on by the run, its timeout --stall-timeout; it beats from MPI's progress, so
    a spinning rank falls silent too) reports the rank lost, the survivors finish, and the stuck
    process is killed (else the launcher would wait for it until MPIEXEC_TIMEOUT)."""
    out = tmp_path / "run"
    proc = _launch(tiny, out, f"{action}:{rank}:2:5", "--stall-timeout", "4")
    record = _finished(proc, out, [[rank]])
    assert record["rank_failures"][0]["stalled"] == [rank]
    assert f"rank {rank} in epoch 2 (stopped responding)" in proc.stdout


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_killed_in_the_final_average_of_an_end_run(tiny, tmp_path, rank):
    """--sync end averages once, after the last epoch: a rank lost inside that Allreduce leaves the
    survivors to average their own networks, score and save (rank 0 too); evaluate agrees."""
    out = tmp_path / "run"
    proc = _launch(tiny, out, f"kill-in-average:{rank}", "--sync", "end")
    record = _finished(proc, out, [[rank]])
    assert "after the last epoch" in proc.stdout and "unexpected" not in proc.stderr
    assert len(record["local_test_accuracy"]["per_rank"]) == 3
    evaluated = run_pnn("evaluate", "--model", str(out / "model.npz"), "--dataset", "custom", "--data-dir", str(tiny), "--json")
    # One average of networks trained apart (93% here uninterrupted, about 90% from three of them);
    # a broken average (say, a dead rank's zeros in the sum) would not reach 0.8.
    assert json.loads(evaluated.stdout)["test_accuracy"] == record["test_accuracy"] > 0.8


@pytest.mark.parametrize("sync", ["epoch", "grad"])
def test_two_ranks_killed_at_the_same_step_count_two_lost(tiny, tmp_path, sync):
    """Both deaths may surface in one repair or in two (the second during the recovery):
    either way two are lost, two survive, and all samples are held by the survivors."""
    out = tmp_path / "run"
    record = _finished(_launch(tiny, out, "kill:1:2:5,kill:2:2:5", "--sync", sync), out, [[1, 2]])
    assert record["rank_failures"][0]["survivors"] == [0, 3]


def test_two_ranks_lost_at_different_times(tiny, tmp_path):
    out = tmp_path / "run"
    record = _finished(_launch(tiny, out, "kill:2:2:7,kill:0:3:2", "--sync", "steps:5"), out, [[2], [0]])
    assert [f["survivors"] for f in record["rank_failures"]] == [[0, 1, 3], [1, 3]]
    assert record["rank_failures"][0]["epoch"] == 2 and record["rank_failures"][1]["epoch"] == 3


def test_a_rank_killed_while_writing_a_checkpoint(tiny, tmp_path):
    """Rank 0 dies with its temporary checkpoint complete but not renamed: the file in place stays
    the previous one, the survivors write the checkpoint again (with who holds which samples), and
    no temporary is left."""
    out = tmp_path / "run"
    _finished(_launch(tiny, out, "kill-in-checkpoint:0:2", "--checkpoint-every", "1"), out, [[0]])
    assert sorted(p.name for p in out.iterdir() if p.name != outdir.LOCK) == [checkpoint.FILE, "metrics.json", "model.npz"]
    with np.load(out / checkpoint.FILE) as archive:
        header = json.loads(str(archive["header"]))
    assert header["ranks"] == 3 and header["lost_ranks"] == [0] and header["progress"]["epoch"] == 2
    lost_start, lost_stop = slice_bounds(TRAIN, 4, 0)
    assert header["held"]["launched_ranks"] == 4 and header["held"]["train"][0] == [list(slice_bounds(TRAIN, 4, 1)), [lost_start, lost_start + 167]]


def _survivors_checkpoint(tiny, tmp_path, sync: str | None, fixed: bool = True):
    """A run that lost rank 1 in epoch 2 and finished with 3 ranks, and a folder holding only the
    checkpoint its survivors wrote after epoch 2: that run stopped there, as a preempted job would."""
    out, stopped = tmp_path / "run", tmp_path / "stopped"
    flags = [*(["--sync", sync] if sync else []), "--checkpoint-every", "1"]
    _finished(_launch(tiny, out, "kill:1:2:5", *flags, fixed=fixed), out, [[1]])
    stopped.mkdir()
    shutil.copy2(out / checkpoint.FILE, stopped / checkpoint.FILE)
    return out, stopped, flags


@pytest.mark.parametrize("sync", ["epoch", "grad", "steps:5", None])
@pytest.mark.parametrize("on_failure", ["continue", "abort"])
def test_the_survivors_checkpoint_resumed_with_as_many_ranks_ends_as_the_run_that_went_on(tiny, tmp_path, sync, on_failure):
    """--resume -n 3 of the survivors' checkpoint loads what each survivor held (its slice and its
    share of rank 1's samples) and, with the defaults rule choosing (sync None: the rate differs
    between 3 and 4 ranks), resolves it for the 4 ranks launched: the last epoch and the saved
    model are bit for bit those of the run that went on."""
    out, stopped, flags = _survivors_checkpoint(tiny, tmp_path, sync, fixed=sync is not None)
    resumed = _launch(tiny, stopped, None, *flags, "--resume", ranks=3, ft=on_failure == "continue", on_failure=on_failure, fixed=sync is not None)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout and "epoch 3, step 0" in resumed.stdout
    went_on, back = (json.loads((folder / "metrics.json").read_text()) for folder in (out, stopped))
    assert back["epochs"][-1] == went_on["epochs"][-1] | {"train_seconds": back["epochs"][-1]["train_seconds"]}
    assert (stopped / "model.npz").read_bytes() == (out / "model.npz").read_bytes()
    # The resumed run reports the loss before it, as the run that went on did: a 4-rank run ending with 3.
    assert back["rank_failures"] == went_on["rank_failures"] and [f["lost"] for f in back["rank_failures"]] == [[1]]
    assert (back["launched_ranks"], back["finished_with_ranks"], back["on_rank_failure"]) == (4, 3, on_failure)
    assert "lost ranks: rank 1 in epoch 2" in resumed.stdout and "finished with 3 of 4 ranks" in resumed.stdout


@pytest.mark.parametrize("ranks", [4, 2])
def test_the_survivors_checkpoint_resumed_with_other_ranks_is_one_line_naming_theirs(tiny, tmp_path, ranks):
    _, stopped, flags = _survivors_checkpoint(tiny, tmp_path, "epoch")
    resumed = _launch(tiny, stopped, None, *flags, "--resume", ranks=ranks, ft=False, on_failure="abort")
    lines = [line for line in resumed.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert resumed.returncode == 2 and len(lines) == 1, resumed.stderr
    assert "written by the 3 ranks that survived lost ones of a 4-rank run" in lines[0] and lines[0].endswith("relaunch with -n 3")


def _local_network(cfg: TrainConfig, tiny, ranges_by_epoch: list[list[tuple[int, int]]]):
    """One survivor's network trained alone (SerialWorld): epoch 1 on its own slice, then on its
    slice plus its share of the lost rank's samples, as the run is meant to do."""
    spec = datasets.get_spec("custom")
    test_images, test_labels = datasets.load_split(spec, tiny, "test", 0, TEST)

    def data_of(ranges):
        parts = [datasets.load_split(spec, tiny, "train", a, b) for a, b in ranges]
        return rank_data(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test_images, test_labels, cfg.dtype)

    first = train(TrainConfig(**{**cfg.as_dict(), "epochs": 1}), SerialWorld(), data_of(ranges_by_epoch[0]), log=lambda _: None)
    later = data_of(ranges_by_epoch[1])
    progress = Progress(epoch=1, step=0, global_step=first.steps_per_epoch, in_sync=False, clocks=[asdict(Clock())])
    state = RankState(first.net.params.copy(), None, np.arange(len(later.y)), np.random.default_rng(0).bit_generator.state, 0.0)
    return train(cfg, SerialWorld(), later, log=lambda _: None, hooks=Hooks(resume=(progress, state))).net


def test_the_parallel_network_is_the_average_of_the_survivors_networks(tiny, tmp_path):
    """Plain SGD, no shuffling, averaged once at the end; rank 1 dies when epoch 2 starts: the saved
    model is the mean of three networks each trained alone on what its rank held."""
    out = tmp_path / "run"
    flags = ["--sync", "end", "--momentum", "0", "--no-shuffle", "--seed", "3"]
    _finished(_launch(tiny, out, "kill:1:2", *flags), out, [[1]])
    cfg = TrainConfig(
        dataset="custom", hidden=(16,), epochs=3, sync="end", lr=0.05, momentum=0.0, lr_schedule="constant", warmup=0, shuffle=False, seed=3
    ).resolved(1)
    lost_start, lost_stop = slice_bounds(TRAIN, 4, 1)
    nets = []
    for i, rank in enumerate([0, 2, 3]):
        own = slice_bounds(TRAIN, 4, rank)
        lo, hi = slice_bounds(lost_stop - lost_start, 3, i)
        nets.append(_local_network(cfg, tiny, [[own], [own, (lost_start + lo, lost_start + hi)]]))
    expected = np.mean([n.params for n in nets], axis=0)
    saved, _ = load_model(out / "model.npz")
    np.testing.assert_allclose(saved.params, expected, rtol=1e-5, atol=1e-6)


def test_without_fault_tolerance_the_flag_is_one_clear_line(tiny, tmp_path):
    proc = _launch(tiny, tmp_path / "run", None, ranks=2, ft=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode == 2
    assert lines == ["pnn_mpi: error: --on-rank-failure continue needs fault tolerance from the launcher: start with mpiexec --with-ft ulfm"]


def test_a_survivor_inside_a_gradient_step_the_others_passed_counts_its_loss_once(tiny, tmp_path):
    """--sync grad: rank 1 dies just after step 5's gradient Allreduce returned. In the first run
    every survivor passed that step; in the second, rank 2 sees the loss inside the Allreduce
    (lose-in-sum): it adopts the step's result from a rank that passed it. Its batch's loss must
    count once in epoch 2, as in the first run: every epoch's figures and the model are the same."""
    passed, inside = tmp_path / "passed", tmp_path / "inside"
    first = _finished(_launch(tiny, passed, "kill-after-sum:1:2:5", "--sync", "grad"), passed, [[1]])
    second = _finished(_launch(tiny, inside, "kill-after-sum:1:2:5,lose-in-sum:2:2:5", "--sync", "grad"), inside, [[1]])
    assert [e["train_loss"] for e in second["epochs"]] == [e["train_loss"] for e in first["epochs"]]
    assert second["test_accuracy"] == first["test_accuracy"]
    assert (inside / "model.npz").read_bytes() == (passed / "model.npz").read_bytes()


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_killed_before_the_first_collective_leaves_three_that_train_from_the_start(tiny, tmp_path, rank):
    """MPI is up but the run has not made its world yet: the survivors make it without the dead rank
    (it never trained: nothing to take over), train as three, record the loss 'at start-up', and
    their checkpoint resumes with -n 3 to the same model."""
    out, stopped = tmp_path / "run", tmp_path / "stopped"
    proc = _launch(tiny, out, f"kill-at-start:{rank}", "--checkpoint-every", "1")
    record = _finished(proc, out, [[rank]])
    assert record["rank_failures"][0]["epoch"] == 0 and record["rank_failures"][0]["survivors"] == [r for r in range(4) if r != rank]
    assert f"rank {rank} at start-up" in proc.stdout and record["test_accuracy"] > 0.9
    stopped.mkdir()
    shutil.copy2(out / checkpoint.FILE, stopped / checkpoint.FILE)
    resumed = _launch(tiny, stopped, None, "--checkpoint-every", "1", "--resume", ranks=3, ft=False, on_failure="abort")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (stopped / "model.npz").read_bytes() == (out / "model.npz").read_bytes()


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_killed_while_the_run_is_set_up_leaves_three_that_set_it_up_again(tiny, tmp_path, rank):
    """The ranks agreed on the run and rank 0 holds its folder; one dies before loading: the survivors
    see it in the next collective, set the run up again among themselves (rank 0 or its successor
    claiming the folder anew), train as three and record the loss at start-up: no traceback."""
    out = tmp_path / "run"
    proc = _launch(tiny, out, f"kill-in-setup:{rank}")
    record = _finished(proc, out, [[rank]])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"lost rank {rank} before training: setting up again with 3 ranks" in proc.stdout
    assert record["rank_failures"][0]["epoch"] == 0 and f"rank {rank} at start-up" in proc.stdout
    assert record["test_accuracy"] > 0.9


@pytest.mark.parametrize("fault", ["kill-before-init:1", "kill-at-start:1", "kill-at-start:0"])
def test_under_abort_a_rank_killed_at_start_up_ends_the_job_at_once(tiny, tmp_path, fault):
    """Without --with-ft the launcher ends the job when a rank dies, MPI started or not (1.5 s here)."""
    began = time.monotonic()
    proc = _launch(tiny, tmp_path / "run", fault, ft=False, on_failure="abort")
    assert proc.returncode != 0 and time.monotonic() - began < 60, proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "model.npz").exists()
