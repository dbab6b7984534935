"""Model files: round trips, deterministic bytes, plain-numpy readability, one UserError per bad file,
and atomic writes."""

from __future__ import annotations

import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pnn_mpi.common.errors import UserError
from pnn_mpi.nn.network import Network
from pnn_mpi.training import model_io
from pnn_mpi.training.model_io import load_model, save_model, write_atomically

SIZES = (6, 5, 4, 3)
UNPICKLED: list[str] = []


def _record_unpickling(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Trap:
    """An object whose unpickling leaves a trace: loading must never get that far."""

    def __reduce__(self):
        return (_record_unpickling, ("unpickled!",))


@pytest.fixture(autouse=True)
def _clear_trap():
    UNPICKLED.clear()
    yield
    assert UNPICKLED == [], "a model file was unpickled"


def trained_like(activation="tanh", output="softmax-xent", dtype="float32", seed=3, sizes=SIZES) -> Network:
    net = Network(sizes, activation, output, dtype)
    net.initialize("xavier-uniform", 0.0, seed)
    # Non-trivial biases too, so that a mix-up of W and b would show.
    net.params[...] += np.linspace(-0.5, 0.5, net.params.size).astype(net.dtype)
    return net


def plain_arrays(net: Network) -> dict[str, np.ndarray]:
    """What a model file holds, rebuilt here from the documented layout with plain numpy."""
    arrays = {
        "format": np.array("pnn_mpi-model"),
        "version": np.array(1),
        "sizes": np.array(net.sizes, dtype=np.int64),
        "activation": np.array(net.activation_name),
        "output": np.array(net.output_name),
    }
    for i, (w, b) in enumerate(zip(net.weights, net.biases), start=1):
        arrays[f"W{i}"], arrays[f"b{i}"] = w.copy(), b.copy()
    return arrays


@pytest.mark.parametrize(
    "activation, output, dtype, sizes",
    [
        ("tanh", "softmax-xent", "float32", SIZES),
        ("relu", "sigmoid-mse", "float64", SIZES),
        ("leaky-relu", "softmax-xent", "float64", (7, 2)),
        ("sigmoid", "sigmoid-mse", "float32", (4, 8, 8, 8, 2)),
    ],
)
def test_round_trip(tmp_path, activation, output, dtype, sizes):
    """load(save(net)) restores params exactly, the architecture, the dtype and the metadata strings."""
    net = trained_like(activation, output, dtype, sizes=sizes)
    path = tmp_path / "model.npz"
    meta = {"dataset": "mnist", "input_shape": "28x28", "ranks": 4}
    save_model(path, net, meta)
    loaded, metadata = load_model(path)
    assert loaded.sizes == net.sizes
    assert (loaded.activation_name, loaded.output_name) == (activation, output)
    assert loaded.dtype == np.dtype(dtype) and loaded.params.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded.params, net.params)
    assert metadata == {"dataset": "mnist", "input_shape": "28x28", "ranks": "4"}
    # The loaded weights are the network's own views, not detached copies.
    assert all(np.shares_memory(w, loaded.params) for w in loaded.weights)
    x = np.random.default_rng(0).normal(size=(3, sizes[0])).astype(dtype)
    np.testing.assert_array_equal(loaded.forward(x, loaded.workspace(3)), net.forward(x, net.workspace(3)))


def test_round_trip_without_metadata(tmp_path):
    """A model saved without metadata loads with an empty metadata dict."""
    path = tmp_path / "m.npz"
    save_model(path, trained_like())
    assert load_model(path)[1] == {}


def test_same_network_gives_identical_bytes(tmp_path, monkeypatch):
    """Saving the same network twice, days apart by the clock, gives byte-identical files;
    a different network gives different bytes."""
    net = trained_like()
    save_model(tmp_path / "a.npz", net, {"dataset": "mnist"})
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 86400 + 7)
    save_model(tmp_path / "b.npz", net.copy(), {"dataset": "mnist"})
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    save_model(tmp_path / "c.npz", trained_like(seed=4), {"dataset": "mnist"})
    assert (tmp_path / "c.npz").read_bytes() != (tmp_path / "a.npz").read_bytes()


def test_readable_by_plain_numpy(tmp_path):
    """np.load(allow_pickle=False) reads the file: format mark, version, architecture, one W/b per layer."""
    net = trained_like(dtype="float64")
    path = tmp_path / "model.npz"
    save_model(path, net, {"dataset": "fashion"})
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"format", "version", "sizes", "activation", "output", "W1", "b1", "W2", "b2", "W3", "b3", "meta_dataset"}
        assert str(archive["format"]) == "pnn_mpi-model"
        assert int(archive["version"]) == 1
        assert archive["sizes"].tolist() == list(SIZES)
        assert str(archive["activation"]) == "tanh" and str(archive["output"]) == "softmax-xent"
        assert str(archive["meta_dataset"]) == "fashion"
        for i, (w, b) in enumerate(zip(net.weights, net.biases), start=1):
            np.testing.assert_array_equal(archive[f"W{i}"], w)
            np.testing.assert_array_equal(archive[f"b{i}"], b)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None


def test_loads_a_file_written_by_np_savez(tmp_path):
    """A file built independently with np.savez from the documented layout loads as that network."""
    net = trained_like(activation="relu", dtype="float64")
    path = tmp_path / "by_hand.npz"
    np.savez(path, **plain_arrays(net), meta_note=np.array("hello"))
    loaded, meta = load_model(path)
    np.testing.assert_array_equal(loaded.params, net.params)
    assert loaded.activation_name == "relu" and meta == {"note": "hello"}


def _broken(net: Network, change) -> dict[str, np.ndarray]:
    arrays = plain_arrays(net)
    change(arrays)
    return arrays


def _set(key, value):
    return lambda arrays: arrays.__setitem__(key, value)


def _drop(key):
    return lambda arrays: arrays.pop(key)


def _nan_weight(arrays):
    arrays["W2"][1, 1] = np.nan


def _inf_bias(arrays):
    arrays["b3"][0] = np.inf


BAD_ARCHIVES = {
    "no-format-mark": _drop("format"),
    "wrong-format-mark": _set("format", np.array("someone-else")),
    "wrong-version": _set("version", np.array(2)),
    "version-as-text": _set("version", np.array("1")),
    "missing-version": _drop("version"),
    "unknown-activation": _set("activation", np.array("swish")),
    "unknown-output": _set("output", np.array("softmax-hinge")),
    "sizes-too-short": _set("sizes", np.array([6], dtype=np.int64)),
    "sizes-zero-width": _set("sizes", np.array([6, 0, 4, 3], dtype=np.int64)),
    "sizes-float": _set("sizes", np.array([6.0, 5.0, 4.0, 3.0])),
    "W-transposed": lambda a: a.__setitem__("W2", a["W2"].T.copy()),
    "W-wrong-dtype": lambda a: a.__setitem__("W2", a["W2"].astype(np.float64)),
    "W1-integer": lambda a: a.__setitem__("W1", a["W1"].astype(np.int32)),
    "missing-b2": _drop("b2"),
    "missing-W3": _drop("W3"),
    "nan-in-weights": _nan_weight,
    "inf-in-biases": _inf_bias,
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archive_is_user_error_naming_file(tmp_path, case):
    """Each kind of broken model archive is a UserError whose message names the file."""
    path = tmp_path / f"{case}.npz"
    np.savez(path, **_broken(trained_like(), BAD_ARCHIVES[case]))
    with pytest.raises(UserError) as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("sizes", [[6, 5, 4, 2], [6, 5, 4, 3, 3], [2**32, 2**32, 4, 3]], ids=["last-width", "extra-layer", "huge"])
def test_sizes_disagreeing_with_weights_is_user_error(tmp_path, sizes):
    """A 'sizes' record that does not match the stored W/b arrays is a UserError naming the file,
    even when the widths are absurdly large (the file must not decide how much memory to allocate)."""
    path = tmp_path / "mismatch.npz"
    np.savez(path, **_broken(trained_like(), _set("sizes", np.array(sizes, dtype=np.int64))))
    with pytest.raises(UserError) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_wrong_version_message_names_versions(tmp_path):
    """A version mismatch says which version was found."""
    path = tmp_path / "v2.npz"
    np.savez(path, **_broken(trained_like(), _set("version", np.array(2))))
    with pytest.raises(UserError, match="version"):
        load_model(path)


def _write_text(path: Path):
    path.write_text("W1 = [[1, 2], [3, 4]]\n")


def _write_empty(path: Path):
    path.write_bytes(b"")


def _write_npy(path: Path):
    with open(path, "wb") as handle:  # an .npy payload, whatever the file is called
        np.save(handle, np.arange(10.0))


def _write_truncated(path: Path):
    save_model(path, trained_like())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_object_npz(path: Path):
    arrays = plain_arrays(trained_like())
    arrays["W1"] = np.array([Trap(), Trap()], dtype=object)
    np.savez(path, allow_pickle=True, **arrays)


def _write_object_meta_npz(path: Path):
    np.savez(path, allow_pickle=True, **plain_arrays(trained_like()), meta_x=np.array([Trap()], dtype=object))


def _write_pickle(path: Path):
    with open(path, "wb") as handle:
        pickle.dump({"W1": Trap(), "format": "pnn_mpi-model"}, handle)


def _write_pickled_npy(path: Path):
    with open(path, "wb") as handle:
        np.save(handle, np.array([Trap()], dtype=object), allow_pickle=True)


BAD_FILES = {
    "text": _write_text,
    "empty": _write_empty,
    "plain-npy": _write_npy,
    "truncated-npz": _write_truncated,
    "object-array-npz": _write_object_npz,
    "object-array-in-metadata": _write_object_meta_npz,
    "pickle": _write_pickle,
    "pickled-npy": _write_pickled_npy,
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_bad_file_is_user_error_naming_file(tmp_path, case, suffix):
    """A file that is not a model at all is a UserError naming it, and nothing in it is unpickled
    (the autouse fixture checks that no Trap was ever rebuilt)."""
    path = tmp_path / f"{case}{suffix}"
    BAD_FILES[case](path)
    with pytest.raises(UserError) as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_user_error(tmp_path):
    """A missing file is a UserError naming it."""
    path = tmp_path / "nowhere" / "model.npz"
    with pytest.raises(UserError) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_write_atomically_replaces_content_and_leaves_no_temp(tmp_path):
    """A successful write replaces the file's content and leaves only that file in the folder."""
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    write_atomically(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_write_atomically_keeps_old_file_when_rename_fails(tmp_path, monkeypatch):
    """If the final rename fails, the old file is intact, the error propagates and no temp file is left."""
    path = tmp_path / "model.npz"
    path.write_bytes(b"old bytes")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        write_atomically(path, b"new bytes")
    assert path.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_write_atomically_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    """If writing the data fails (disk full at fsync), the old file is intact and no temp file is left."""
    path = tmp_path / "model.npz"
    path.write_bytes(b"old bytes")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_atomically(path, b"new bytes")
    assert path.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_save_model_failure_keeps_previous_model(tmp_path, monkeypatch):
    """A failed save_model over an existing model leaves the previous model loadable."""
    path = tmp_path / "model.npz"
    first = trained_like(seed=1)
    save_model(path, first)
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        save_model(path, trained_like(seed=2))
    monkeypatch.undo()
    np.testing.assert_array_equal(load_model(path)[0].params, first.params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_npz_bytes_is_a_plain_stored_zip():
    """npz_bytes writes an uncompressed zip with one .npy entry per array, all with the same fixed timestamp."""
    import io

    data = model_io.npz_bytes({"a": np.arange(3), "b": np.array("text")})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["a.npy", "b.npy"]
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        assert len({i.date_time for i in infos}) == 1
