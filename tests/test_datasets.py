"""Dataset specs, the search order for data folders, and loading splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import find_mnist
from pnn_mpi.common.errors import UserError
from pnn_mpi.data import datasets, idx
from pnn_mpi.data.datasets import DATASETS, get_spec

MNIST_TRAIN_DIGITS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def real_dir(name: str) -> Path:
    """A folder with the real dataset (MNIST: $PNN_MPI_DATA or the shared copy; others: the system copy), or skip."""
    spec = get_spec(name)
    folder = find_mnist() if name == "mnist" else Path("/usr/share/datasets") / name
    if folder is None or not all(datasets.find_file(folder, b) for b in spec.files.values()):
        pytest.skip(f"real {name} not found")
    return folder


@pytest.fixture(autouse=True)
def no_system_copies(tmp_path, monkeypatch):
    """Keep real copies under /usr/share/datasets out of the search-order tests."""
    monkeypatch.setattr(datasets, "SYSTEM_DIR", tmp_path / "system")


def make_tiny(folder: Path, n_train=12, n_test=5, gz=True, train_labels=None) -> Path:
    """Write a small fake dataset with the MNIST file names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        files = get_spec("mnist").files
        idx.write_idx(folder / (files[f"{split}-images"] + suffix), rng.integers(0, 256, (n, 4, 3), dtype=np.uint8))
        m = train_labels if split == "train" and train_labels is not None else n
        idx.write_idx(folder / (files[f"{split}-labels"] + suffix), rng.integers(0, 10, m, dtype=np.uint8))
    return folder


# --- specs ----------------------------------------------------------------------


def test_specs_are_complete():
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.title
        assert set(spec.files) == set(datasets.ROLES)
        if name == "custom":  # a user's own files: no canonical sums, nowhere to fetch them
            assert not spec.md5 and not spec.mirrors
            continue
        assert set(spec.md5) == set(spec.files.values())
        assert all(len(m) == 32 for m in spec.md5.values())
        assert all(m.startswith(("http://", "https://")) and m.endswith("/") for m in spec.mirrors)
    assert DATASETS["mnist"].files["test-images"] == "t10k-images-idx3-ubyte"
    assert DATASETS["mnist"].mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


def test_get_spec():
    assert get_spec("mnist") is DATASETS["mnist"]
    assert get_spec("Fashion_MNIST") is DATASETS["fashion-mnist"]
    with pytest.raises(UserError, match="unknown dataset 'cifar'; known datasets: custom, fashion-mnist, mnist"):
        get_spec("cifar")


# --- where to look ----------------------------------------------------------------


def test_candidate_order(tmp_path):
    env = {"PNN_MPI_DATA": str(tmp_path / "env")}
    got = datasets.candidate_dirs("mnist", env=env, cwd=tmp_path / "cwd", home=tmp_path / "home")
    assert got == [
        tmp_path / "env" / "mnist",
        tmp_path / "env",
        tmp_path / "cwd" / "data" / "mnist",
        tmp_path / "home" / ".cache" / "pnn_mpi" / "mnist",
        tmp_path / "system" / "mnist",
    ]


def test_candidate_order_without_env(tmp_path):
    for env in ({}, {"PNN_MPI_DATA": ""}):
        got = datasets.candidate_dirs("fashion-mnist", env=env, cwd=tmp_path, home=tmp_path / "h")
        assert got == [
            tmp_path / "data" / "fashion-mnist",
            tmp_path / "h" / ".cache" / "pnn_mpi" / "fashion-mnist",
            tmp_path / "system" / "fashion-mnist",
        ]


def test_env_folder_named_after_another_dataset_is_skipped(tmp_path):
    """$PNN_MPI_DATA=.../mnist serves mnist, but is not searched for fashion-mnist (same file names)."""
    env = {"PNN_MPI_DATA": str(tmp_path / "mnist")}
    assert tmp_path / "mnist" in datasets.candidate_dirs("mnist", env=env, cwd=tmp_path, home=tmp_path)
    fashion = datasets.candidate_dirs("fashion-mnist", env=env, cwd=tmp_path, home=tmp_path)
    assert tmp_path / "mnist" not in fashion and tmp_path / "mnist" / "fashion-mnist" in fashion


def test_candidate_duplicates_listed_once(tmp_path):
    env = {"PNN_MPI_DATA": str(tmp_path / "data")}
    got = datasets.candidate_dirs("mnist", env=env, cwd=tmp_path, home=tmp_path)
    assert got.count(tmp_path / "data" / "mnist") == 1


def test_data_dir_is_authoritative(tmp_path):
    make_tiny(tmp_path / "cwd" / "data" / "mnist")
    env = {"PNN_MPI_DATA": str(tmp_path / "env")}
    explicit = tmp_path / "explicit"
    assert datasets.candidate_dirs("mnist", explicit, env, tmp_path, tmp_path) == [explicit]
    with pytest.raises(UserError) as info:
        datasets.locate("mnist", explicit, env=env, cwd=tmp_path / "cwd", home=tmp_path)
    msg = str(info.value)
    assert "--data-dir was given" in msg and str(explicit) in msg
    assert str(tmp_path / "cwd") not in msg


def test_locate_picks_first_complete_folder(tmp_path):
    env = {"PNN_MPI_DATA": str(tmp_path / "env")}
    kw = dict(env=env, cwd=tmp_path / "cwd", home=tmp_path / "home")
    make_tiny(tmp_path / "home" / ".cache" / "pnn_mpi" / "mnist")
    assert datasets.locate("mnist", **kw) == tmp_path / "home" / ".cache" / "pnn_mpi" / "mnist"
    partial = make_tiny(tmp_path / "cwd" / "data" / "mnist")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()  # incomplete: skipped
    assert datasets.locate("mnist", **kw) == tmp_path / "home" / ".cache" / "pnn_mpi" / "mnist"
    make_tiny(tmp_path / "env", gz=False)  # $PNN_MPI_DATA itself holds the files
    assert datasets.locate("mnist", **kw) == tmp_path / "env"


def test_locate_error_names_every_place(tmp_path):
    env = {"PNN_MPI_DATA": str(tmp_path / "env")}
    partial = make_tiny(tmp_path / "cwd" / "data" / "fashion-mnist")
    (partial / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError) as info:
        datasets.locate("fashion-mnist", env=env, cwd=tmp_path / "cwd", home=tmp_path / "home")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("dataset fashion-mnist not found")
    for place in datasets.candidate_dirs("fashion-mnist", env=env, cwd=tmp_path / "cwd", home=tmp_path / "home"):
        assert str(place) in msg
    assert "missing train-labels-idx1-ubyte[.gz]" in msg
    assert "python -m pnn_mpi download --dataset fashion-mnist" in msg
    assert "PNN_MPI_DATA" in msg


def test_find_file_prefers_raw(tmp_path):
    assert datasets.find_file(tmp_path, "x") is None
    (tmp_path / "x.gz").write_bytes(b"")
    assert datasets.find_file(tmp_path, "x") == tmp_path / "x.gz"
    (tmp_path / "x").write_bytes(b"")
    assert datasets.find_file(tmp_path, "x") == tmp_path / "x"
    assert datasets.find_file(tmp_path / "nowhere", "x") is None


# --- loading ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_split_count_and_load(tmp_path, gz):
    folder = make_tiny(tmp_path, gz=gz)
    spec = get_spec("mnist")
    assert datasets.split_count(spec, folder, "train") == 12
    assert datasets.split_count(spec, folder, "test") == 5
    x, y = datasets.load_split(spec, folder, "train", check_end=True)
    assert x.shape == (12, 12) and y.shape == (12,) and x.dtype == y.dtype == np.uint8
    xs, ys = datasets.load_split(spec, folder, "train", 4, 9)
    np.testing.assert_array_equal(xs, x[4:9])
    np.testing.assert_array_equal(ys, y[4:9])
    with pytest.raises(UserError, match="unknown split 'val'"):
        datasets.split_count(spec, folder, "val")


def test_count_mismatch(tmp_path):
    folder = make_tiny(tmp_path, train_labels=11)
    spec = get_spec("mnist")
    for call in (lambda: datasets.split_count(spec, folder, "train"), lambda: datasets.load_split(spec, folder, "train", 0, 3)):
        with pytest.raises(UserError) as info:
            call()
        msg = str(info.value)
        assert "count mismatch" in msg
        assert f"{folder / 'train-images-idx3-ubyte.gz'} holds 12 images" in msg
        assert f"{folder / 'train-labels-idx1-ubyte.gz'} holds 11 labels" in msg
    assert datasets.split_count(spec, folder, "test") == 5  # the other split is fine


def test_missing_file_in_folder(tmp_path):
    folder = make_tiny(tmp_path)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing t10k-images-idx3-ubyte"):
        datasets.load_split(get_spec("mnist"), folder, "test")
    with pytest.raises(UserError, match="missing t10k-images-idx3-ubyte"):
        datasets.verify_files(get_spec("mnist"), folder)


def test_verify_on_fake_data_fails_cleanly(tmp_path):
    folder = make_tiny(tmp_path)
    with pytest.raises(UserError, match="checksum mismatch: payload MD5 is [0-9a-f]{32}, expected"):
        datasets.load_split(get_spec("mnist"), folder, "test", 0, 1, verify=True)
    with pytest.raises(UserError, match="not the canonical train-images-idx3-ubyte"):
        datasets.verify_files(get_spec("mnist"), folder)


# --- real data -------------------------------------------------------------------------------


def test_real_mnist_counts_and_digits():
    spec, folder = get_spec("mnist"), real_dir("mnist")
    assert datasets.split_count(spec, folder, "train") == 60000
    assert datasets.split_count(spec, folder, "test") == 10000
    x, y = datasets.load_split(spec, folder, "train", verify=True)
    assert x.shape == (60000, 784) and y.shape == (60000,)
    assert np.bincount(y, minlength=10).tolist() == MNIST_TRAIN_DIGITS
    xt, yt = datasets.load_split(spec, folder, "test", 9000, 10000, verify=True)
    assert xt.shape == (1000, 784) and yt.shape == (1000,)
    datasets.verify_files(spec, folder)


def test_real_mnist_one_changed_pixel_fails_verify(tmp_path):
    spec, folder = get_spec("mnist"), real_dir("mnist")
    for basename in spec.files.values():
        src = datasets.find_file(folder, basename)
        shutil.copyfile(src, tmp_path / src.name)
    images = datasets.find_file(tmp_path, "t10k-images-idx3-ubyte")
    x = idx.read_records(images, expect="images").reshape(10000, 28, 28)
    x[1234, 14, 14] ^= 0xFF
    raw = tmp_path / "t10k-images-idx3-ubyte"  # raw shadows the .gz (find_file prefers raw)
    idx.write_idx(raw, x)
    datasets.load_split(spec, tmp_path, "test", 0, 100)  # plain slice read: no MD5 check
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte: checksum mismatch"):
        datasets.load_split(spec, tmp_path, "test", 0, 100, verify=True)
    with pytest.raises(UserError, match="checksum mismatch"):
        datasets.verify_files(spec, tmp_path)
    x[1234, 14, 14] ^= 0xFF  # restored: canonical again, whatever the container
    idx.write_idx(raw, x)
    datasets.load_split(spec, tmp_path, "test", verify=True)


def test_real_fashion_mnist_checksums():
    spec, folder = get_spec("fashion-mnist"), real_dir("fashion-mnist")
    datasets.verify_files(spec, folder)
    assert datasets.split_count(spec, folder, "train") == 60000
    _, y = datasets.load_split(spec, folder, "test")
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
