"""Output ownership and crash consistency (issue #13): one owner per run folder, results that
change together, stale temporaries cleaned, no link ever followed when we create a file."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, clean_env, run_pnn, write_dataset
from pnn_mpi.commands.cli import main
from pnn_mpi.common import files
from pnn_mpi.common.errors import UserError
from pnn_mpi.nn.network import Network
from pnn_mpi.training import checkpoint, outdir
from pnn_mpi.training.model_io import save_model

PREFIX = "pnn_mpi: error: "


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=300, test=50, seed=3)


def _train(tiny, out, *more) -> list[str]:
    return ["--dataset", "custom", "--data-dir", str(tiny), "--hidden", "8", "--epochs", "1", "--out", str(out), *more]


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that claims ``folder`` and keeps it until killed."""
    code = "import sys, time; from pnn_mpi.training.outdir import RunFolder; RunFolder.claim(sys.argv[1]); print('held', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --- one owner at a time ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["in-process claim", "training run"])
def test_a_folder_in_use_is_refused_in_one_line_naming_the_holder(tiny, tmp_path, how, capsys):
    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        if how == "in-process claim":
            with pytest.raises(UserError) as info:
                outdir.RunFolder.claim(folder)
            line = str(info.value)
        else:
            assert main(_train(tiny, folder)) == 2
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, err
            line = err.strip()
        assert f"--out {folder}: in use by another run (pid {holder.pid})" in line, line
        assert not (folder / "model.npz").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGTERM, "exit"])
def test_the_lock_dies_with_its_holder(tmp_path, death):
    folder = tmp_path / "run"
    holder = _holder(folder)
    if death == "exit":
        holder.send_signal(signal.SIGINT)  # KeyboardInterrupt: an ordinary exit with a traceback
    else:
        holder.send_signal(death)
    holder.wait(timeout=30)
    outdir.RunFolder.claim(folder).release()  # free again at once


def test_a_surviving_rank_0_takes_over_its_runs_folder_as_it_is(tmp_path):
    """When the launch's rank 0 (which claimed the folder) is lost, the new rank 0 locks the folder
    before saving: nothing in it is cleaned or refused (the run's own files stay), another run is
    then refused, and a folder another run holds is not taken."""
    folder = tmp_path / "run"
    holder = _holder(folder)
    (folder / "checkpoint.npz").write_bytes(b"this run's checkpoint")
    (folder / ".pnn_mpi-tmp-0123abcd-model.npz").write_bytes(b"")  # a temporary of our naming: claim would remove it
    try:
        with pytest.raises(UserError, match="in use by another run"):
            outdir.RunFolder.take_over(folder)
    finally:
        holder.kill()
        holder.wait()
    taken = outdir.RunFolder.take_over(folder)  # the holder is gone, as a lost rank 0 is
    try:
        assert sorted(p.name for p in folder.iterdir()) == sorted([outdir.LOCK, "checkpoint.npz", ".pnn_mpi-tmp-0123abcd-model.npz"])
        with pytest.raises(UserError, match="in use by another run"):
            outdir.RunFolder.claim(folder)
    finally:
        taken.release()


def test_a_second_run_cannot_take_over_a_running_one_and_the_first_resumes(tiny, tmp_path):
    """The issue's case: the second run replaced the first one's checkpoint, whose --resume was then refused."""
    out = tmp_path / "run"
    flags = ["--batch-size", "1", "--kernel", "generic", "--epochs", "120", "--checkpoint-every", "1", "--hidden", "64"]
    first = subprocess.Popen(
        [sys.executable, "-m", "pnn_mpi", *_train(tiny, out), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO
    )
    try:
        while not re.match(r"epoch +2/", first.stdout.readline()):
            assert first.poll() is None, first.stderr.read()
        second = run_pnn(*_train(tiny, out), "--lr", "0.2", timeout=120)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1 and "in use by another run" in lines[0], second.stderr
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 75, err
    finally:
        first.kill()
    resumed = run_pnn(*_train(tiny, out), *flags, "--resume", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout


def test_sequential_runs_into_one_folder_are_allowed_with_overwrite(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(tiny, out)) == 0
    assert main(_train(tiny, out, "--seed", "2", "--overwrite")) == 0
    assert outdir.results_match(out)
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 2


# --- temporaries of our own naming, and nothing else, are cleaned ----------------------------

STALE = [
    ".pnn_mpi-tmp-0a1b2c3d-checkpoint.npz",
    ".pnn_mpi-tmp-ffff0000-model.npz",
    ".checkpoint.npz.k2j3h4.tmp",
    ".model.npz.abc123.tmp",
    ".metrics.json.x_9.tmp",
    ".pnn_mpi-write-test",
    ".pnn_mpi-abc.part-train-images-idx3-ubyte.gz",
]
KEPT = ["notes.tmp", ".checkpoint.npz.keep", "checkpoint.npz.tmp", "my-model.npz", ".pnn_mpi-tmp", "pnn_mpi-tmp-x"]


@pytest.mark.parametrize("name", STALE)
def test_stale_temporaries_are_removed_when_a_run_claims_the_folder(tmp_path, name):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / name).write_bytes(b"x" * 2_000_000)
    for keep in KEPT:
        (folder / keep).write_bytes(b"mine")
    outdir.RunFolder.claim(folder).release()
    assert not (folder / name).exists()
    assert all((folder / keep).read_bytes() == b"mine" for keep in KEPT)


def test_a_killed_checkpoint_write_leaves_nothing_after_resume(tiny, tmp_path):
    """The issue's case: a kill during a checkpoint write left a 2 MB temporary, even after --resume."""
    out = tmp_path / "run"
    flags = ["--epochs", "2", "--checkpoint-every", "1"]
    assert run_pnn(*_train(tiny, out, *flags)).returncode == 0
    (out / ".checkpoint.npz.abcdef.tmp").write_bytes(b"\0" * 2_000_000)  # as the old writer left it
    (out / f"{files.TEMP_PREFIX}12345678-checkpoint.npz").write_bytes(b"\0" * 2_000_000)
    resumed = run_pnn(*_train(tiny, out, *flags, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([outdir.LOCK, checkpoint.FILE, "model.npz", "metrics.json"])


# --- links are never followed ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.npz", "metrics.json", "checkpoint.npz", ".pnn_mpi-write-test"])
def test_a_planted_link_in_the_run_folder_is_never_written_through(tiny, tmp_path, name, capsys):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (out / name).symlink_to(victim)
    assert main(_train(tiny, out, "--checkpoint-every", "1", "--epochs", "2")) == 0
    assert victim.read_bytes() == b"precious"
    assert not (out / name).is_symlink()


def test_a_lock_file_that_is_a_link_is_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (folder / outdir.LOCK).symlink_to(victim)
    with pytest.raises(UserError, match="is a symbolic link"):
        outdir.RunFolder.claim(folder)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("planted", ["link", "file", "fifo"])
def test_a_temporary_name_already_taken_is_never_opened(tmp_path, monkeypatch, planted):
    """Staged draws random names; one that exists (a planted link, file or fifo) is skipped, not opened."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    names = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    taken = tmp_path / f"{files.TEMP_PREFIX}aaaaaaaa-out.txt"
    {"link": lambda: taken.symlink_to(victim), "file": lambda: taken.write_bytes(b"other"), "fifo": lambda: os.mkfifo(taken)}[planted]()
    files.write_atomically(tmp_path / "out.txt", b"new")
    assert (tmp_path / "out.txt").read_bytes() == b"new" and victim.read_bytes() == b"precious"
    assert taken.exists() or taken.is_symlink()


@pytest.mark.parametrize("suffix", [".txt", ".npy"])
def test_predict_out_replaces_a_link_instead_of_following_it(tmp_path, suffix, capsys):
    net = Network((4, 3), "relu", "softmax-xent", "float32")
    net.initialize("he", 0.0, 1)
    save_model(tmp_path / "m.npz", net)
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 2), np.uint8))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / f"p{suffix}"
    out.symlink_to(victim)
    assert main(["predict", "--model", str(tmp_path / "m.npz"), "--images", str(tmp_path / "x.npy"), "--out", str(out)]) == 0
    assert victim.read_bytes() == b"precious" and not out.is_symlink()


# --- model.npz and metrics.json change together ------------------------------------------------


def _fail_on(monkeypatch, name: str, stage: str):
    real = {"finish": files.Staged.finish, "rename": files.Staged.rename}[stage]

    def failing(self):
        if self.path.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self)

    monkeypatch.setattr(files.Staged, stage, failing)


@pytest.mark.parametrize("name, stage", [("metrics.json", "finish"), ("model.npz", "finish"), ("model.npz", "rename")])
def test_a_failed_save_changes_neither_file(tiny, tmp_path, monkeypatch, capsys, name, stage):
    out = tmp_path / "run"
    assert main(_train(tiny, out)) == 0
    before = {p: (out / p).read_bytes() for p in ("model.npz", "metrics.json")}
    _fail_on(monkeypatch, name, stage)
    assert main(_train(tiny, out, "--seed", "7", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot save the results (No space left on device); the previous model and metrics are intact" in err, err
    assert {p: (out / p).read_bytes() for p in before} == before
    assert not [p for p in os.listdir(out) if files.is_our_temporary(p)]


def test_a_crash_between_the_two_renames_is_detectable(tmp_path, monkeypatch):
    """metrics.json names the model it describes: a pair mixed by a crash does not match."""
    outdir.save_results(tmp_path, b"model one", {"run": 1})
    assert outdir.results_match(tmp_path)
    _fail_on(monkeypatch, "metrics.json", "rename")  # the model was renamed, then the process "died"
    with pytest.raises(OSError):
        outdir.save_results(tmp_path, b"model two", {"run": 2})
    assert (tmp_path / "model.npz").read_bytes() == b"model two"
    assert json.loads((tmp_path / "metrics.json").read_text())["run"] == 1
    assert not outdir.results_match(tmp_path)


def test_metrics_record_the_model_they_describe(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(tiny, out)) == 0
    import hashlib

    record = json.loads((out / "metrics.json").read_text())
    assert record["model_sha256"] == hashlib.sha256((out / "model.npz").read_bytes()).hexdigest()


# --- a finished run is replaced only when asked, and then whole ------------------------------


def _finished(tiny, out, *more) -> dict[str, bytes]:
    assert main(_train(tiny, out, *more)) == 0
    return {p: (out / p).read_bytes() for p in ("model.npz", "metrics.json")}


@pytest.mark.parametrize("left", ["model.npz and metrics.json", "model.npz", "metrics.json"])
@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume without a checkpoint"])
def test_a_finished_run_is_refused_in_one_line_before_training(tiny, tmp_path, capsys, left, resume):
    out = tmp_path / "run"
    before = _finished(tiny, out)
    for name in before:
        if name not in left:
            (out / name).unlink()
    capsys.readouterr()
    assert main(_train(tiny, out, "--seed", "2", *(["--resume"] if resume else []))) == 2
    got, err = capsys.readouterr()
    assert got == "" and err.count("\n") == 1, err  # before the header: nothing was trained
    assert f"--out {out}: holds a finished run ({left}); pass --overwrite to replace it, or choose another --out" in err
    assert {p: (out / p).read_bytes() for p in before if (out / p).exists()} == {p: b for p, b in before.items() if p in left}


def test_a_finished_run_is_refused_by_every_rank(tiny, tmp_path):
    out = tmp_path / "run"
    _finished(tiny, out)
    proc = run_pnn(*_train(tiny, out), ranks=2, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("holds a finished run") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "epoch" not in proc.stdout


def test_overwrite_replaces_the_run_whole(tiny, tmp_path, capsys):
    """No checkpoint, curves or timeline of the first run stays beside the second run's model."""
    out = tmp_path / "run"
    first = _finished(tiny, out, "--epochs", "2", "--checkpoint-every", "1", "--timeline", str(out / "trace.json"))
    (out / "curves.png").write_bytes(b"the first run's curves")  # as --plot draws them (matplotlib may be absent here)
    (out / "notes.txt").write_bytes(b"mine")
    assert {"checkpoint.npz", "trace.json"} <= set(os.listdir(out))
    assert main(_train(tiny, out, "--seed", "2", "--overwrite")) == 0
    assert sorted(p for p in os.listdir(out) if not p.startswith(".")) == ["metrics.json", "model.npz", "notes.txt"]
    assert (out / "model.npz").read_bytes() != first["model.npz"] and outdir.results_match(out)


def test_resume_into_a_finished_run_with_its_checkpoint_continues_it(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ("--epochs", "3", "--checkpoint-every", "1")
    first = _finished(tiny, out, *flags)
    capsys.readouterr()
    assert main(_train(tiny, out, *flags, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out
    assert (out / "model.npz").read_bytes() == first["model.npz"]  # the same run, continued: the same model


@pytest.mark.parametrize("target", ["empty folder", "finished run", "missing folder"])
def test_a_symlinked_out_is_refused_and_leaves_nothing_in_its_target(tiny, tmp_path, capsys, target):
    real = tmp_path / "real"
    if target == "finished run":
        _finished(tiny, real)
    elif target == "empty folder":
        real.mkdir()
    before = sorted(os.listdir(real)) if real.exists() else None
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    capsys.readouterr()
    assert main(_train(tiny, link, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {link}: is a symbolic link; give the folder it points to" in err, err
    assert (sorted(os.listdir(real)) if real.exists() else None) == before
