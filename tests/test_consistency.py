"""Consistency (issue #13): checkpoints checked field by field, the data part of a checkpoint's identity,
ranks that disagree, TOML switches, bounded and quoted error lines, a full disk under download."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, clean_env, mpiexec_path, run_pnn, write_dataset
from pnn_mpi.commands.cli import main
from pnn_mpi.common.wording import bounded_line, quote
from pnn_mpi.training import checkpoint
from pnn_mpi.training.model_io import npz_bytes
from pnn_mpi.training.options import parse_train_args, train_parser

PREFIX = "pnn_mpi: error: "


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=120, test=30, seed=4)


def _flags(tiny, out, *more):
    return [
        "--dataset",
        "custom",
        "--data-dir",
        str(tiny),
        "--hidden",
        "8",
        "--epochs",
        "3",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
        *more,
    ]


def _one_line(capsys, status) -> str:
    out, err = capsys.readouterr()
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith(PREFIX) and "Traceback" not in err, err
    return err[len(PREFIX) :].rstrip("\n")


@pytest.fixture(scope="module")
def good_checkpoint(tiny, tmp_path_factory):
    """A finished 3-epoch run's checkpoint (written after epoch 2): bytes to damage per case."""
    out = tmp_path_factory.mktemp("ck") / "run"
    assert main(_flags(tiny, out)) == 0
    return (out / checkpoint.FILE).read_bytes()


def _arrays(raw: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return json.loads(str(arrays.pop("header"))), arrays


def _header(change):
    def damage(header, arrays):
        change(header)

    return damage


def _array(name, change):
    def damage(header, arrays):
        arrays[name] = change(arrays[name])

    return damage


def _drop(name):
    return lambda header, arrays: arrays.pop(name)


def _set(path: str, value):
    """Set header[a][b]... = value (path 'a.b'); value None on a top-level key removes it."""

    def change(header):
        keys = path.split(".")
        target = header
        for key in keys[:-1]:
            target = target[key]
        if value is _REMOVE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return _header(change)


_REMOVE = object()


def _swap_first(order):
    order = order.copy()
    order[1] = order[0]
    return order


DAMAGES = {
    # case: (damage, the message the one line must hold)
    "header-without-rank-count": (_set("ranks", _REMOVE), r"header lacks ranks"),
    "rank-count-as-text": (_set("ranks", "1"), r"rank count is 1"),
    "header-without-data-identity": (_set("data", _REMOVE), r"header lacks data"),
    "negative-epoch": (_set("progress.epoch", -1), r"progress epoch is -1, not a count"),
    "epoch-past-the-run": (_set("progress.epoch", 3), r"progress epoch 3 is past the run's 3 epochs"),
    "epoch-as-float": (_set("progress.epoch", 1.0), r"progress epoch is 1.0, not a count"),
    "step-past-the-epoch": (_set("progress.step", 99), r"progress step 99 is past an epoch's 15 steps"),
    "global-step-inconsistent": (_set("progress.global_step", 7), r"global_step 7 does not match epoch 2, step 0"),
    "in-sync-as-text": (_set("progress.in_sync", "yes"), r"in_sync or train_seconds has the wrong type"),
    "progress-with-extra-key": (_set("progress.extra", 1), r"progress must hold exactly"),
    "history-too-short": (_set("progress.history", []), r"history must hold one record"),
    "history-record-without-loss": (_header(lambda h: h["progress"]["history"][0].pop("train_loss")), r"history must hold one record"),
    "history-out-of-order": (_header(lambda h: h["progress"]["history"].reverse()), r"out of order"),
    "clocks-for-two-ranks": (_header(lambda h: h["progress"]["clocks"].append(dict(h["progress"]["clocks"][0]))), r"clocks must hold"),
    "negative-clock": (_header(lambda h: h["progress"]["clocks"][0].update(compute=-1.0)), r"clocks must hold"),
    "loss-sum-nan": (_set("loss_sums", [float("nan")]), r"loss sum is not a finite number"),
    "rng-for-no-rank": (_set("rng", []), r"rng must list one entry per rank"),
    "rng-garbage": (_header(lambda h: h["rng"][0]["state"].update(state="x")), r"generator state is unusable"),
    "rng-other-generator": (_header(lambda h: h["rng"][0].update(bit_generator="MT19937")), r"generator state is unusable"),
    "order-out-of-range": (_array("order_0", lambda o: np.where(o == 0, 10**6, o)), r"order_0 is not a permutation"),
    "order-negative": (_array("order_0", lambda o: np.where(o == 0, -1, o)), r"order_0 is not a permutation"),
    "order-repeats-an-index": (_array("order_0", _swap_first), r"order_0 is not a permutation"),
    "order-too-short": (_array("order_0", lambda o: o[:-1]), r"order_0 has shape \(119,\)"),
    "order-as-floats": (_array("order_0", lambda o: o.astype(np.float64)), r"order_0 has dtype float64"),
    "params-wrong-shape": (_array("params_0", lambda p: p[:-1]), r"params_0 has shape"),
    "params-float64": (_array("params_0", lambda p: p.astype(np.float64)), r"params_0 is float64, the run trains in float32"),
    "params-nan": (_array("params_0", lambda p: np.full_like(p, np.nan)), r"params_0 holds NaN or infinity"),
    "params-2d": (_array("params_0", lambda p: p.reshape(1, -1)), r"params_0 has shape"),
    "missing-velocity": (_drop("velocity_0"), r"missing array velocity_0"),
    "missing-params": (_drop("params_0"), r"missing array params_0"),
    "velocity-wrong-shape": (_array("velocity_0", lambda v: v[:5]), r"velocity_0 has shape"),
    "header-not-json": (lambda h, a: h.update(__raw__="{not json"), r"header is not JSON"),
    "older-format": (_set("format", "pnn_mpi-checkpoint-1"), r"written by another pnn_mpi version \(pnn_mpi-checkpoint-1\)"),
    "other-data-identity": (
        _header(lambda h: h["data"]["files"]["train-images"].update(sample_sha256="0" * 32)),
        r"written for other data: files.train-images.sample_sha256 was 0+, now [0-9a-f]+",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_refused_in_one_line(tiny, tmp_path, good_checkpoint, case, capsys):
    damage, expect = DAMAGES[case]
    header, arrays = _arrays(good_checkpoint)
    damage(header, arrays)
    text = header.pop("__raw__", None) or json.dumps(header)
    out = tmp_path / "run"
    out.mkdir()
    (out / checkpoint.FILE).write_bytes(npz_bytes({"header": np.array(text), **arrays}))
    line = _one_line(capsys, main(_flags(tiny, out, "--resume")))
    import re

    assert re.search(expect, line), line
    assert str(out / checkpoint.FILE) in line
    assert not (out / "model.npz").exists()


def test_the_undamaged_checkpoint_resumes(tiny, tmp_path, good_checkpoint, capsys):
    """The control for the table above: the same file, unchanged, is accepted."""
    out = tmp_path / "run"
    out.mkdir()
    (out / checkpoint.FILE).write_bytes(good_checkpoint)
    assert main(_flags(tiny, out, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["other-images", "other-labels", "more-samples"])
def test_resume_with_other_custom_data_is_refused(tiny, tmp_path, good_checkpoint, change, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    if change == "more-samples":
        write_dataset(other, train=121, test=30, seed=4)
    else:
        name = "train-images-idx3-ubyte" if change == "other-images" else "train-labels-idx1-ubyte"
        raw = bytearray((other / name).read_bytes())
        raw[-1] = (raw[-1] + 1) % 10
        (other / name).write_bytes(bytes(raw))
    out = tmp_path / "run"
    out.mkdir()
    (out / checkpoint.FILE).write_bytes(good_checkpoint)
    line = _one_line(capsys, main(_flags(other, out, "--resume")))
    assert "written for other data" in line, line


def test_resume_with_the_same_data_elsewhere_is_accepted(tiny, tmp_path, good_checkpoint, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(tiny, moved)
    out = tmp_path / "run"
    out.mkdir()
    (out / checkpoint.FILE).write_bytes(good_checkpoint)
    assert main(_flags(moved, out, "--resume")) == 0


# --- ranks that disagree --------------------------------------------------------------------


def _mpmd(tiny, tmp_path, left: list[str], right: list[str], env_left=(), env_right=()) -> subprocess.CompletedProcess:
    base = ["--dataset", "custom", "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "run")]
    python = [sys.executable, "-m", "pnn_mpi", *base]
    command = [
        mpiexec_path(),
        "-n",
        "1",
        "env",
        *env_left,
        *python,
        "--data-dir",
        str(tiny),
        *left,
        ":",
        "-n",
        "1",
        "env",
        *env_right,
        *python,
        "--data-dir",
        str(tiny),
        *right,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=REPO, stdin=subprocess.DEVNULL)


DISAGREEMENTS = {
    "epochs": (["--epochs", "1"], ["--epochs", "2"], "configuration: rank 0 has epochs = 1, rank 1 has 2"),
    "hidden": (["--hidden", "8"], ["--hidden", "16"], "configuration: rank 0 has hidden = [8], rank 1 has [16]"),
    "sync": (["--sync", "epoch"], ["--sync", "grad"], "configuration: rank 0 has sync = epoch, rank 1 has grad"),
    "seed": (["--seed", "1"], ["--seed", "2"], "configuration: rank 0 has seed = 1, rank 1 has 2"),
    "dtype": ([], ["--dtype", "float64"], "configuration: rank 0 has dtype = float32, rank 1 has float64"),
    "kernel": ([], ["--kernel", "generic"], "kernel ="),
}


@pytest.mark.parametrize(
    "flags, installed, used",
    [
        ({"batch_size": 32}, True, "numpy"),  # auto keeps the numpy step for mini-batches, numba or not
        ({"batch_size": 1, "sync": "epoch"}, True, "numba"),  # a batch-1 kernel runs: numba where installed
        ({"batch_size": 1, "sync": "epoch"}, False, "numpy"),
        ({"batch_size": 1, "sync": "grad"}, True, "numpy"),  # a gradient sum every step: the plain step
        ({"batch_size": 32, "kernel": "numba"}, True, "numba"),
        ({"batch_size": 1, "kernel": "generic"}, True, "generic"),
    ],
)
def test_the_identity_names_the_kernel_that_runs(monkeypatch, flags, installed, used):
    """What the ranks compare is the kernel each will run: ranks with and without numba agree on a
    mini-batch run (both take the numpy step), and differ only where auto would pick numba."""
    from pnn_mpi.nn import kernels
    from pnn_mpi.training import identity
    from pnn_mpi.training.config import TrainConfig

    monkeypatch.setattr(kernels, "numba_available", lambda: installed)
    assert identity.resolved_config(TrainConfig(**flags).resolved(2))["kernel"] == used


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
def test_ranks_with_other_flags_fail_at_once_naming_the_difference(tiny, tmp_path, case):
    left, right, expect = DISAGREEMENTS[case]
    proc = _mpmd(tiny, tmp_path, left, right)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "the ranks disagree on the " in lines[0] and expect in lines[0], proc.stderr


def test_ranks_seeing_other_data_fail_naming_the_difference(tiny, tmp_path):
    other = write_dataset(tmp_path / "other", train=120, test=30, seed=5)
    proc = _mpmd(tiny, tmp_path, [], ["--data-dir", str(other)])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "the ranks disagree on the data: rank 0 has files.train-images.sample_sha256" in lines[0], proc.stderr


def test_ranks_in_other_environments_fail_naming_the_difference(tiny, tmp_path):
    """PNN_MPI_DATA differs between the ranks, no --data-dir: each finds another dataset."""
    other = write_dataset(tmp_path / "other", train=90, test=30, seed=5)
    base = ["--dataset", "custom", "--hidden", "8", "--epochs", "1", "--out", str(tmp_path / "run")]
    python = [sys.executable, "-m", "pnn_mpi", *base]
    command = [mpiexec_path(), "-n", "1", "env", f"PNN_MPI_DATA={tiny}", *python, ":", "-n", "1", "env", f"PNN_MPI_DATA={other}", *python]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=REPO, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "the ranks disagree on the data: rank 0 has files.train-images.shape = [120, 6, 6], rank 1 has [90, 6, 6]" in lines[0]


def test_ranks_that_agree_train_together(tiny, tmp_path):
    proc = _mpmd(tiny, tmp_path, ["--seed", "3"], ["--seed", "3"])
    assert proc.returncode == 0, proc.stderr
    assert "2 ranks" in proc.stdout


# --- TOML switches -----------------------------------------------------------------------------


def _switches() -> list[str]:
    return sorted(
        a.dest for a in train_parser()._actions if a.option_strings and a.nargs == 0 and a.dest not in ("help", "version")
    )  # --help, --version: no settings


def _command_line_for(dest: str, value: bool) -> list[str]:
    """What a user types for ``dest = value`` (independently of the TOML code: from the help's flags)."""
    action = next(a for a in train_parser()._actions if a.dest == dest)
    flags = list(action.option_strings)
    if value:
        return [next(f for f in flags if not f.startswith("--no-"))]
    negative = [f for f in flags if f.startswith("--no-")]
    return negative[:1]


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("dest", _switches())
def test_every_switch_works_from_toml_as_from_the_command_line(tmp_path, dest, value):
    config = tmp_path / "run.toml"
    config.write_text(f"{dest.replace('_', '-')} = {'true' if value else 'false'}\nout = 'x'\n")
    from_file = parse_train_args(["--config", str(config)])
    typed = parse_train_args([*_command_line_for(dest, value), "--out", "x"])
    assert from_file == typed


def test_the_known_switches_are_covered():
    assert {"resume", "shuffle"} <= set(_switches())


@pytest.mark.parametrize("value", ['"yes"', "1", "[true]"])
def test_a_switch_given_a_non_boolean_is_one_line(tmp_path, capsys, value):
    config = tmp_path / "run.toml"
    config.write_text(f"resume = {value}\n")
    line = _one_line(capsys, main(["--config", str(config)]))
    assert "resume must be true or false" in line


# --- bounded, quoted error lines --------------------------------------------------------------

HUGE = "x" * 500_000  # under the 1 MiB a config may hold (a bigger file is refused by its size: test_structured_files)


@pytest.mark.parametrize(
    "key, value",
    [("sync", f'"{HUGE}"'), ("activation", f'"{HUGE}"'), ("dataset", f'"{HUGE}"'), ("lr", f'"{HUGE}"'), (HUGE[:250_000], "1"), ("hidden", f'["{HUGE}"]')],
    ids=["sync", "activation", "dataset", "lr", "key", "hidden"],
)
def test_a_huge_toml_value_is_quoted_as_a_bounded_prefix(tmp_path, capsys, key, value):
    config = tmp_path / "run.toml"
    config.write_text(f"{key} = {value}\n")
    line = _one_line(capsys, main(["--config", str(config)]))
    assert len(line) < 3000, len(line)
    assert "characters)" in line


def test_a_huge_toml_value_under_mpiexec_ends_quickly(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'sync = "{"y" * 30_000_000}"\n')
    proc = run_pnn("--config", str(config), ranks=2, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0 and len(lines) == 1 and len(lines[0]) < 3000, proc.stderr[:3000]


NEWLINE_PATHS = {
    "--out": lambda tmp, tiny: ["--dataset", "custom", "--data-dir", str(tiny), "--out", str(tmp / "a\nb" / "\0x")],
    "--data-dir": lambda tmp, tiny: ["--dataset", "custom", "--data-dir", str(tmp / "no\nsuch"), "--out", str(tmp / "o")],
    "--config": lambda tmp, tiny: ["--config", str(tmp / "a\nb.toml")],
    "evaluate --model": lambda tmp, tiny: ["evaluate", "--model", str(tmp / "m\nodel.npz")],
    "predict --images": lambda tmp, tiny: ["predict", "--model", str(tmp / "model.npz"), "--images", str(tmp / "i\nmages.npy")],
}


@pytest.mark.parametrize("case", sorted(NEWLINE_PATHS))
def test_a_path_with_a_newline_cannot_break_the_line(tiny, tmp_path, case, capsys):
    from pnn_mpi.nn.network import Network
    from pnn_mpi.training.model_io import save_model

    save_model(tmp_path / "model.npz", Network((36, 10)))
    argv = NEWLINE_PATHS[case](tmp_path, tiny)
    _one_line(capsys, main(argv))


@pytest.mark.parametrize(
    "value, shown",
    [("plain", "plain"), ("a\nb", "'a\\nb'"), ("x" * 300, "x" * 200 + "... (300 characters)"), (Path("/tmp/p"), "/tmp/p"), ("tab\there", "'tab\\there'")],
)
def test_quote(value, shown):
    assert quote(value) == shown


def test_bounded_line_bounds_and_escapes():
    assert bounded_line("a\nb\rc") == "a\\nb\\rc"
    assert len(bounded_line("z" * 10**6)) < 2100


# --- download into a full disk --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_download_into_a_full_disk_prints_one_line(small_disk, mnist_dir):
    proc = run_pnn("download", "--dir", str(small_disk / "mnist"), "--mirror", str(mnist_dir), timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and lines == [f"pnn_mpi: error: {small_disk / 'mnist'}: cannot write: No space left on device"], lines
    assert os.listdir(small_disk / "mnist") == []  # no temporary left


def test_a_dataset_with_fewer_classes_resumes(tmp_path, capsys):
    """The network has as many outputs as the data has classes: the checkpoint's expected shapes follow."""
    from pnn_mpi.data.idx import write_idx

    folder = write_dataset(tmp_path / "five", train=120, test=30, seed=6)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        labels = np.frombuffer((folder / name).read_bytes()[8:], np.uint8) % 5
        write_idx(folder / name, labels)
    out = tmp_path / "run"
    assert main(_flags(folder, out)) == 0
    assert main(_flags(folder, out, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out
