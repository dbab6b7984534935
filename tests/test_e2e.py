"""The program as users run it: ``mpiexec -n P python -m pnn_mpi ...`` in a subprocess.

Each launch runs under MPIEXEC_TIMEOUT (set by ``clean_env``) and a subprocess
timeout, so a deadlock fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, clean_env, learnable_images, run_pnn, write_dataset
from pnn_mpi.data.idx import read_records


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small learnable dataset in --dataset custom form (600 train, 100 test, 6x6 pixels)."""
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=600, test=100, seed=1)


def _tiny_args(folder, out, *more):
    return ["--dataset", "custom", "--data-dir", str(folder), "--hidden", "16", "--epochs", "3", "--out", str(out), *more]


# Lines Open MPI's launcher may print while it tears down a failed job.
_LAUNCHER_NOISE = re.compile(r"\[warn\] Epoll |\[[^\]\s]+:\d+\] PMIX ERROR: ")


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The program's own stderr lines, without what Open MPI's launcher adds: a boxed
    notice (between dashed rules) for any job that exits non-zero, and now and then
    a libevent "[warn] Epoll ..." or a "PMIX ERROR" line as it tears the job down."""
    lines, in_box = [], False
    for line in proc.stderr.splitlines():
        if set(line.strip()) == {"-"} and len(line.strip()) > 20:
            in_box = not in_box
        elif line.strip() and not in_box and not _LAUNCHER_NOISE.match(line.strip()):
            lines.append(line)
    return lines


def test_four_ranks_on_real_mnist_then_evaluate_reproduces(mnist_dir, tmp_path):
    """Four ranks, 20,000 MNIST samples, 3 epochs: >= 93% (96.4% measured with the defaults of issue #10); evaluate agrees exactly."""
    out = tmp_path / "run"
    env = clean_env(PNN_MPI_DATA=str(mnist_dir))
    proc = run_pnn("--train-size", "20000", "--epochs", "3", "--seed", "1", "--out", str(out), ranks=4, env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["test_accuracy"] >= 0.93
    assert record["ranks"] == 4 and record["dataset"]["slice_sizes"] == [5000] * 4
    assert record["config"]["sync"] == "local:5:64" and record["seed"] == 1  # batch 32's default sync
    assert record["warnings"] == [] and "warning" not in proc.stderr
    assert record["mpi_library"] and record["mpi_library_version"]
    assert record["kernel"] == "numpy" and record["config"]["kernel"] == "auto"  # auto: the numpy step for mini-batches
    assert record["train_seconds"] > 0 and record["samples_per_second"] == pytest.approx(60000 / record["train_seconds"])
    assert len(record["epochs"]) == 3 and record["epochs"][-1]["test_accuracy"] == record["test_accuracy"]
    assert len(record["local_test_accuracy"]["per_rank"]) == 4
    assert f"{record['test_accuracy']:.2%}" in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("epoch ")]) == 3

    check = run_pnn("evaluate", "--model", str(out / "model.npz"), "--json", env=env)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["test_accuracy"] == record["test_accuracy"]


def test_same_seed_and_ranks_give_a_bit_identical_model(tiny, tmp_path):
    runs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        proc = run_pnn(*_tiny_args(tiny, tmp_path / name, "--seed", seed, "--sync", "end"), ranks=2)
        assert proc.returncode == 0, proc.stderr
        runs.append((tmp_path / name / "model.npz").read_bytes())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_one_rank_under_mpiexec_equals_no_launcher(tiny, tmp_path):
    """`python -m pnn_mpi` alone is the 1-rank case: the same model as mpiexec -n 1."""
    launched = run_pnn(*_tiny_args(tiny, tmp_path / "mpi"), ranks=1)
    alone = run_pnn(*_tiny_args(tiny, tmp_path / "plain"))
    assert launched.returncode == 0 and alone.returncode == 0, launched.stderr + alone.stderr
    assert (tmp_path / "mpi" / "model.npz").read_bytes() == (tmp_path / "plain" / "model.npz").read_bytes()
    assert "1 rank," in alone.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "0"], "pnn_mpi: error: --lr 0.0: the learning rate must be positive and finite"),
        (["--activation", "softsign"], "pnn_mpi: error: argument --activation: invalid choice: 'softsign'"),
        (["--train-size", "3"], "pnn_mpi: error: 4 ranks but only 3 training samples"),
        (["--batch-size", "200"], "pnn_mpi: error: --batch-size 200 is larger than a rank's slice (150 samples with 4 ranks)"),
        (["--sync", "often"], "pnn_mpi: error: --sync 'often': expected one of end, epoch, steps:K, local[:K[:L]], grad"),
    ],
)
def test_user_error_is_one_line_and_fails_the_job(tiny, tmp_path, flags, message):
    proc = run_pnn(*_tiny_args(tiny, tmp_path / "out"), *flags, ranks=4, timeout=120)
    assert proc.returncode != 0
    lines = _error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(message)


def test_damaged_file_seen_by_one_rank_is_one_line(tiny, tmp_path):
    """The last label is out of range: only the last rank reads it, every rank stops, one line."""
    folder = write_dataset(tmp_path / "bad", train=600, test=100, seed=1)
    path = folder / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] = 77
    path.write_bytes(bytes(raw))
    proc = run_pnn(*_tiny_args(folder, tmp_path / "out"), ranks=4, timeout=120)
    assert proc.returncode != 0
    lines = _error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("pnn_mpi: error: ") and "77" in lines[0], proc.stderr


def test_missing_data_says_where_it_looked(tmp_path):
    env = clean_env(HOME=str(tmp_path / "home"))
    env.pop("PNN_MPI_DATA", None)
    proc = run_pnn("--dataset", "mnist", env=env, cwd=tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "looked in" in lines[0] and str(tmp_path / "data" / "mnist") in lines[0]
    assert "python -m pnn_mpi download" in lines[0]


def test_crash_on_one_rank_aborts_the_job_with_its_traceback(tiny, tmp_path):
    env = clean_env(PNN_MPI_INJECT="raise:1:2")
    began = time.monotonic()
    proc = run_pnn(*_tiny_args(tiny, tmp_path / "out"), ranks=4, env=env, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - began < 60
    assert "pnn_mpi: rank 1: unexpected error" in proc.stderr
    assert "Traceback" in proc.stderr and "InjectedFault" in proc.stderr
    assert not (tmp_path / "out" / "model.npz").exists()


def test_unwritable_out_fails_before_training(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_pnn(*_tiny_args(tiny, blocker / "sub"), ranks=2)
    lines = _error_lines(proc)
    assert proc.returncode != 0 and len(lines) == 1 and "cannot write there" in lines[0], proc.stderr
    assert "epoch" not in proc.stdout


def test_toml_config_replaces_flags(tiny, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'dataset = "custom"\ndata-dir = "{tiny}"\nhidden = [12, 8]\nepochs = 2\nsync = "grad"\nbatch_size = 10\n')
    proc = run_pnn("--config", str(config), "--out", str(tmp_path / "out"), "--epochs", "1", ranks=2)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["config"]["hidden"] == [12, 8] and record["config"]["sync"] == "grad"
    assert record["config"]["epochs"] == 1  # the flag after --config wins
    assert record["network"]["sizes"] == [36, 12, 8, 10]


def test_predict_and_evaluate_without_mpi(tiny, tmp_path):
    proc = run_pnn(*_tiny_args(tiny, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    model = str(tmp_path / "out" / "model.npz")
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    images = read_records(tiny / "t10k-images-idx3-ubyte", expect="images")
    labels = read_records(tiny / "t10k-labels-idx1-ubyte", expect="labels")
    np.save(tmp_path / "images.npy", images.reshape(-1, 6, 6))

    # In one process that must never load MPI: evaluate, predict on IDX and on .npy.
    script = f"""
import sys
from pnn_mpi.commands.cli import main
assert main(["evaluate", "--model", {model!r}, "--images", {str(tiny / "t10k-images-idx3-ubyte")!r}, "--labels", {str(tiny / "t10k-labels-idx1-ubyte")!r}, "--json"]) == 0
assert main(["predict", "--model", {model!r}, "--images", {str(tiny / "t10k-images-idx3-ubyte")!r}, "--out", {str(tmp_path / "idx.npy")!r}]) == 0
assert main(["predict", "--model", {model!r}, "--images", {str(tmp_path / "images.npy")!r}, "--out", {str(tmp_path / "npy.txt")!r}]) == 0
assert "mpi4py" not in sys.modules, "evaluate/predict imported MPI"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["test_accuracy"] == record["test_accuracy"]
    from_idx = np.load(tmp_path / "idx.npy")
    from_npy = np.array([int(v) for v in (tmp_path / "npy.txt").read_text().split()])
    assert (from_idx == from_npy).all() and len(from_idx) == 100
    assert np.mean(from_idx == labels) == pytest.approx(record["test_accuracy"])


def test_predict_rejects_wrong_image_size(tiny, tmp_path):
    proc = run_pnn(*_tiny_args(tiny, tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    images, _ = learnable_images(5, np.random.default_rng(0), side=7)
    np.save(tmp_path / "big.npy", images)
    bad = run_pnn("predict", "--model", str(tmp_path / "out" / "model.npz"), "--images", str(tmp_path / "big.npy"))
    assert bad.returncode == 2 and _error_lines(bad) == [f"pnn_mpi: error: {tmp_path / 'big.npy'}: images have 49 pixels, the model takes 36"]


def test_download_from_a_folder_mirror_then_found(mnist_dir, tmp_path):
    dest = tmp_path / "data"
    proc = run_pnn("download", "--dir", str(dest), "--mirror", str(tmp_path / "nowhere"), "--mirror", str(mnist_dir), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "all files verified" in proc.stdout
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in mnist_dir.glob("*.gz"))
    again = run_pnn("download", "--dir", str(dest), "--if-missing")
    assert again.returncode == 0 and f"found in {dest}" in again.stdout


def test_help_documents_every_flag_without_mpi():
    proc = run_pnn("--help")
    assert proc.returncode == 0
    for flag in (
        "--hidden",
        "--activation",
        "--output",
        "--init",
        "--batch-size",
        "--lr",
        "--momentum",
        "--epochs",
        "--sync",
        "--seed",
        "--dtype",
        "--data-dir",
        "--dataset",
        "--train-size",
        "--test-size",
        "--out",
        "--config",
    ):
        assert flag in proc.stdout


def test_a_run_that_fails_before_training_leaves_no_empty_folder(tmp_path):
    """Issue 11: no data, so no run: neither runs/ nor --out's parents stay behind (a folder that held
    something before is kept)."""
    missing = ["--data-dir", str(tmp_path / "nothing")]
    proc = run_pnn(*missing, cwd=tmp_path)
    assert proc.returncode == 2 and "not found" in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = run_pnn(*missing, "--out", str(tmp_path / "a" / "b"), cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert run_pnn(*missing, "--out", str(tmp_path / "kept"), cwd=tmp_path).returncode == 2
    assert {p.name for p in (tmp_path / "kept").iterdir()} - {".pnn_mpi.lock"} == {"notes.txt"}  # kept, with the run lock


def test_one_epoch_is_singular(tiny, tmp_path):
    proc = run_pnn("--dataset", "custom", "--data-dir", str(tiny), "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert " 1 epoch, " in proc.stdout and "1 epochs" not in proc.stdout
