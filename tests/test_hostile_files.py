"""Hostile files (issue #13): decompression bombs, huge declared shapes, requests no memory holds.

Every case must end in one line ``pnn_mpi: error: ...`` naming the file (or the
figure), or -- where the file is merely big but honest -- succeed while
holding one block at a time. The bombs run in a child process whose address
space is capped (``resource.setrlimit(RLIMIT_AS)``) a few hundred MiB above
what the same command needs on a tiny input, so inflating a bomb whole, or
allocating what a header declares, fails the test.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import clean_env, write_dataset
from pnn_mpi.commands.cli import main
from pnn_mpi.common.errors import UserError
from pnn_mpi.data.idx import write_idx
from pnn_mpi.nn.network import Network
from pnn_mpi.training.model_io import load_model, model_arrays, npz_bytes, save_model

PREFIX = "pnn_mpi: error: "
HEADROOM = 300 * 2**20  # what a bounded reader may use beyond the calibrated baseline
BOMB_BYTES = 1 << 30  # what each bomb inflates to


def _model(inputs: int = 36, hidden: int = 8) -> Network:
    net = Network((inputs, hidden, 10), "relu", "softmax-xent", "float32")
    net.initialize("he", 0.0, 1)
    return net


def _npy_header(shape, descr="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def _zero_stream(total: int, block: int = 1 << 22):
    zeros = bytes(block)
    for at in range(0, total, block):
        yield zeros[: min(block, total - at)]


def _add_bomb_entry(archive: zipfile.ZipFile, name: str, header: bytes, payload: int) -> None:
    """An entry whose declared sizes are honest, and whose payload is ``payload`` deflated zero bytes."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(header)
        for chunk in _zero_stream(payload):
            member.write(chunk)


def _run_capped(args: list[str], cap: int | None, cwd: Path) -> subprocess.CompletedProcess:
    def limit():
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run(
        [sys.executable, "-m", "pnn_mpi", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        preexec_fn=limit,
    )


def _vm_peak_of(args: list[str], cwd: Path) -> int:
    """Peak address space of ``python -m pnn_mpi ARGS`` (read from /proc by a wrapper)."""
    code = (
        "import runpy, sys, atexit\n"
        "def peak():\n"
        "    line = [l for l in open('/proc/self/status') if l.startswith('VmPeak:')][0]\n"
        "    sys.stderr.write('VMPEAK %d\\n' % (int(line.split()[1]) * 1024))\n"
        "atexit.register(peak)\n"
        f"sys.argv = ['pnn_mpi', *{args!r}]\n"
        "try:\n    runpy.run_module('pnn_mpi', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=clean_env(), cwd=cwd)
    found = re.search(r"VMPEAK (\d+)", proc.stderr)
    assert found, proc.stderr
    return int(found.group(1))


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small model and dataset, and the bombs, built once for the module."""
    root = tmp_path_factory.mktemp("hostile")
    data = write_dataset(root / "data", train=60, test=20)
    save_model(root / "model.npz", _model(), {"dataset": "custom"})
    save_model(root / "mnist-model.npz", _model(784), {"dataset": "mnist"})

    # A valid model plus an entry it does not use, deflated from 1 GiB of zeros (about 1 MB on disk).
    arrays = model_arrays(_model())
    with zipfile.ZipFile(root / "bomb-unused.npz", "w") as archive:
        for name, array in arrays.items():
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), _npy_bytes(array))
        _add_bomb_entry(archive, "padding.npy", _npy_header((BOMB_BYTES // 4,)), BOMB_BYTES)
    # The same bomb under a name the model uses, declaring a shape the architecture does not have.
    with zipfile.ZipFile(root / "bomb-used.npz", "w") as archive:
        for name, array in arrays.items():
            if name != "W1":
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), _npy_bytes(array))
        _add_bomb_entry(archive, "W1.npy", _npy_header((36, BOMB_BYTES // 36 // 4)), BOMB_BYTES // 36 // 4 * 36 * 4)

    # IDX images of 28x28 zeros: 1.2 million images (940 MB) in about 1 MB of gzip, and their labels.
    count = 1_200_000
    with gzip.open(root / "bomb-images.gz", "wb", compresslevel=9) as handle:
        handle.write((2051).to_bytes(4, "big") + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        for chunk in _zero_stream(count * 784):
            handle.write(chunk)
    with gzip.open(root / "bomb-labels.gz", "wb", compresslevel=9) as handle:
        handle.write((2049).to_bytes(4, "big") + count.to_bytes(4, "big"))
        for chunk in _zero_stream(count):
            handle.write(chunk)
    # An honest .npy of 300 MB of 28x28 uint8 images: more than the cap leaves, streamed in blocks.
    with open(root / "big.npy", "wb") as handle:
        rows = 300 * 2**20 // 784
        handle.write(_npy_header((rows, 28, 28), "|u1"))
        for chunk in _zero_stream(rows * 784):
            handle.write(chunk)
    tiny = root / "tiny.npy"
    np.save(tiny, np.zeros((3, 28, 28), np.uint8))
    baseline = _vm_peak_of(["predict", "--model", str(root / "mnist-model.npz"), "--images", str(tiny)], root)
    training = _vm_peak_of(["--dataset", "custom", "--data-dir", str(data), "--hidden", "8", "--epochs", "1", "--out", str(root / "calibrate")], root)
    return {"root": root, "data": data, "cap": baseline + HEADROOM, "train_cap": training + HEADROOM}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


# --- bombs, each under the address-space cap -------------------------------------------------

BOMBS = {
    # command line (placeholders: {root}, {data}), what it must print: an error line (regex) or None for success
    "model-with-unused-bomb-entry": (
        ["evaluate", "--model", "{root}/bomb-unused.npz", "--images", "{data}/t10k-images-idx3-ubyte", "--labels", "{data}/t10k-labels-idx1-ubyte"],
        None,
    ),
    "model-whose-W1-is-a-bomb": (
        ["evaluate", "--model", "{root}/bomb-used.npz", "--images", "{data}/t10k-images-idx3-ubyte", "--labels", "{data}/t10k-labels-idx1-ubyte"],
        r"broken pnn_mpi model: W1 has shape \(36, \d+\)",
    ),
    "predict-gz-images-bomb": (["predict", "--model", "{root}/mnist-model.npz", "--images", "{root}/bomb-images.gz", "--out", "{root}/predicted.npy"], None),
    "evaluate-gz-images-bomb": (
        ["evaluate", "--model", "{root}/mnist-model.npz", "--images", "{root}/bomb-images.gz", "--labels", "{root}/bomb-labels.gz"],
        None,
    ),
    "predict-big-honest-npy": (["predict", "--model", "{root}/mnist-model.npz", "--images", "{root}/big.npy", "--out", "{root}/big-predicted.npy"], None),
    "train-on-gz-bomb": (
        ["--dataset", "custom", "--data-dir", "{root}/bombdata", "--hidden", "8", "--epochs", "1", "--out", "{root}/bomb-run"],
        r"training network 784-8-10 .* needs about .* more than the .* available",
    ),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_bombs_stay_within_a_memory_cap(files, case):
    root, data = files["root"], files["data"]
    if case == "train-on-gz-bomb" and not (root / "bombdata").exists():
        (root / "bombdata").mkdir()
        os.symlink(root / "bomb-images.gz", root / "bombdata" / "train-images-idx3-ubyte.gz")
        os.symlink(root / "bomb-labels.gz", root / "bombdata" / "train-labels-idx1-ubyte.gz")
        write_idx(root / "bombdata" / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
        write_idx(root / "bombdata" / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    argv, expect = BOMBS[case]
    cap = files["train_cap"] if argv[0].startswith("--") else files["cap"]
    proc = _run_capped([a.format(root=root, data=data) for a in argv], cap, root)
    if expect is None:
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
        if "--out" in argv:
            found = np.load(argv[argv.index("--out") + 1].format(root=root))
            assert (found == found[0]).all() and len(found) > 100_000  # every image, all zeros: one class
    else:
        assert re.search(expect, _one_line(proc)), proc.stderr


def test_the_cap_is_tight_enough_to_catch_a_whole_inflation(files):
    """The cap must fail what the old code did: np.load inflating the unused bomb entry."""
    code = f"import numpy as np; a = np.load({str(files['root'] / 'bomb-unused.npz')!r}); [a[n] for n in a.files]"
    cap = files["cap"]

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert proc.returncode != 0 and ("MemoryError" in proc.stderr or "allocate" in proc.stderr), proc.stderr


# --- declared shapes refused from the header, in process ------------------------------------


def _huge_w1_model(path: Path, shape, descr="<f4", sizes=None, data: bytes = b"") -> None:
    """A model whose W1 header declares ``shape`` while the entry holds only ``data``."""
    arrays = model_arrays(_model())
    if sizes is not None:
        arrays["sizes"] = np.array(sizes, dtype=np.int64)
    raw = npz_bytes({k: v for k, v in arrays.items() if k != "W1"})
    buffer = io.BytesIO(raw)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(zipfile.ZipInfo("W1.npy", date_time=(1980, 1, 1, 0, 0, 0)), _npy_header(shape, descr) + data)
    path.write_bytes(buffer.getvalue())


def _lying_zip_size(path: Path) -> None:
    """A well-formed W1 entry whose zip directory then claims 4 GiB uncompressed."""
    _huge_w1_model(path, (36, 8), data=bytes(36 * 8 * 4))
    raw = bytearray(path.read_bytes())
    # Patch the central directory's uncompressed size of W1.npy (stored: also the local header's).
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = archive.getinfo("W1.npy")
    central = raw.rfind(b"PK\x01\x02", 0, len(raw))
    while central != -1:
        name_len = int.from_bytes(raw[central + 28 : central + 30], "little")
        if raw[central + 46 : central + 46 + name_len] == b"W1.npy":
            raw[central + 24 : central + 28] = (0xFFFFFFF0).to_bytes(4, "little")
            break
        central = raw.rfind(b"PK\x01\x02", 0, central)
    path.write_bytes(bytes(raw))
    assert info.file_size < 0xFFFFFFF0


HEADERS = {
    # name: how the model file is built, and the message the one line must hold
    "W1-declares-58-TiB": (
        lambda p: _huge_w1_model(p, (36, 2**42)),
        r"entry W1: the archive declares 128 bytes, its header [\d,]+ \(\(36, 4398046511104\) float32\)",
    ),
    "sizes-and-W1-agree-on-a-huge-layer": (
        lambda p: _huge_w1_model(p, (36, 8 * 2**30), sizes=[36, 8 * 2**30, 10]),
        r"the archive declares .* bytes, its header|needs about .* of memory",
    ),
    "W1-header-beyond-entry": (lambda p: _huge_w1_model(p, (36, 8)), r"the archive declares \d+ bytes, its header \d+"),
    "zip-directory-lies-about-size": (_lying_zip_size, r"the archive declares [\d,]+ bytes, its header"),
    "W1-object-dtype": (lambda p: _huge_w1_model(p, (36, 8), descr="|O"), r"never loaded \(allow_pickle=False\)"),
    "sizes-declares-a-billion-layers": (
        lambda p: _huge_w1_model(p, (36, 8), sizes=None) or _replace_entry(p, "sizes", _npy_header((10**9,), "<i8")),
        r"'sizes' must list two or more positive layer widths",
    ),
}


def _replace_entry(path: Path, name: str, content: bytes) -> None:
    with zipfile.ZipFile(path) as old:
        kept = {i.filename: old.read(i) for i in old.infolist() if i.filename != f"{name}.npy"}
    with zipfile.ZipFile(path, "w") as new:
        for entry, data in kept.items():
            new.writestr(entry, data)
        new.writestr(f"{name}.npy", content)


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_model_headers_are_checked_before_inflating(tmp_path, case):
    build, expect = HEADERS[case]
    path = tmp_path / "model.npz"
    build(path)
    with pytest.raises(UserError) as info:
        load_model(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    assert re.search(expect, text), text


def _npy_file(path: Path, shape, descr="|u1", data: bytes = b"") -> Path:
    path.write_bytes(b"".join([_npy_header(shape, descr), data]))
    return path


NPY_INPUTS = {
    "declares-58-TiB": (lambda p: _npy_file(p, (2**40, 28, 28)), r"truncated: its header declares \(1099511627776, 28, 28\)"),
    "declares-more-than-it-holds": (lambda p: _npy_file(p, (10, 28, 28), data=bytes(784)), r"truncated: its header declares"),
    "holds-more-than-declared": (lambda p: _npy_file(p, (1, 28, 28), data=bytes(784 * 2)), r"oversized: its header declares"),
    "an-npz-instead": (lambda p: p.write_bytes(npz_bytes({"images": np.zeros((2, 28, 28), np.uint8)})), r"an \.npz archive, not a \.npy array"),
    "object-array": (lambda p: _npy_file(p, (2,), "|O", bytes(16)), r"never loaded \(allow_pickle=False\)"),
    "header-too-long": (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00\xff\xff" + b" " * 65535), r"not a readable \.npy"),
    "not-npy-at-all": (lambda p: p.write_bytes(b"hello"), r"not a readable \.npy"),
    "floats-out-of-range": (lambda p: np.save(p, np.full((3, 28, 28), 7.0)), r"float pixels must lie in \[0, 1\], found 7 to 7"),
    "nan-pixels": (lambda p: np.save(p, np.full((3, 28, 28), np.nan)), r"float pixels must lie in \[0, 1\]"),
}


@pytest.mark.parametrize("case", sorted(NPY_INPUTS))
def test_predict_npy_refused_from_its_header(files, tmp_path, case, capsys):
    build, expect = NPY_INPUTS[case]
    path = tmp_path / "images.npy"
    build(path)
    status = main(["predict", "--model", str(files["root"] / "mnist-model.npz"), "--images", str(path)])
    out, err = capsys.readouterr()
    assert status == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith(PREFIX) and str(path) in err, err
    assert re.search(expect, err), err


GZ_INPUTS = {
    # declared record counts a .gz of this size cannot hold (deflate expands at most ~1032:1)
    "images-declare-a-billion": (
        "images",
        lambda: gzip.compress((2051).to_bytes(4, "big") + (10**9).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(784 * 3)),
    ),
    "labels-declare-4-billion": ("labels", lambda: gzip.compress((2049).to_bytes(4, "big") + (2**32 - 1).to_bytes(4, "big") + bytes(20))),
}


@pytest.mark.parametrize("case", sorted(GZ_INPUTS))
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_gz_idx_with_impossible_counts_is_refused(files, tmp_path, case, command, capsys):
    role, build = GZ_INPUTS[case]
    bad = tmp_path / f"{role}.gz"
    bad.write_bytes(build())
    data = files["data"]
    model = str(files["root"] / ("model.npz" if role == "labels" else "mnist-model.npz"))
    images = str(bad) if role == "images" else str(data / "t10k-images-idx3-ubyte")
    labels = str(bad) if role == "labels" else str(data / "t10k-labels-idx1-ubyte")
    if command == "predict" and role == "labels":
        pytest.skip("predict reads no labels")
    argv = ["predict", "--model", model, "--images", images] if command == "predict" else ["evaluate", "--model", model, "--images", images, "--labels", labels]
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 2 and err.count("\n") == 1 and str(bad) in err, err
    assert re.search(r"truncated payload|holds \d+ images but", err), err


# --- requests that cannot fit ------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [["1000000000"], ["100000", "100000", "100000"], ["4096"] * 3000])
def test_training_that_cannot_fit_is_one_line_naming_the_figure(files, hidden, capsys):
    status = main(["--dataset", "custom", "--data-dir", str(files["data"]), "--epochs", "1", "--out", str(files["root"] / "never"), "--hidden", *hidden])
    out, err = capsys.readouterr()
    assert status == 2 and err.count("\n") == 1, err
    assert re.search(r"needs about [\d.]+ [KMGTP]iB of memory \(.*\), more than the [\d.]+ [KMGTP]?i?B available", err), err
    assert not (files["root"] / "never" / "model.npz").exists()


def test_a_model_bigger_than_the_memory_cap_is_one_line(files):
    """An honest model of 63 MB, loaded by a process capped at what a tiny model needs plus 30 MiB."""
    root = files["root"]
    save_model(root / "wide.npz", _model(784, 20_000))
    cap = files["cap"] - HEADROOM + 30 * 2**20
    proc = _run_capped(["predict", "--model", str(root / "wide.npz"), "--images", str(root / "tiny.npy")], cap, root)
    line = _one_line(proc)
    assert "wide.npz: the model 784-20000-10 needs about" in line and "address-space limit" in line, line


def test_hidden_a_billion_under_mpiexec_is_one_line(files):
    from conftest import run_pnn

    proc = run_pnn("--dataset", "custom", "--data-dir", str(files["data"]), "--hidden", "1000000000", "--out", str(files["root"] / "n2"), ranks=2, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "needs about" in lines[0] and "TiB" in lines[0], proc.stderr


@pytest.mark.parametrize("target", ["model", "images", "model-by-link", "folder"])
def test_predict_out_never_replaces_an_input(tmp_path, target, capsys):
    """--out naming the model, the images (directly or through a link) or a folder is refused in
    one line before anything is read, and every input is left as it was."""
    model, images = tmp_path / "model.npz", tmp_path / "images.npy"
    save_model(model, _model(), {"dataset": "custom"})
    np.save(images, np.zeros((3, 6, 6), np.uint8))
    before = {p: p.read_bytes() for p in (model, images)}
    out = {"model": model, "images": images, "folder": tmp_path}.get(target, tmp_path / "link.npz")
    if target == "model-by-link":
        out.symlink_to(model)
    status = main(["predict", "--model", str(model), "--images", str(images), "--out", str(out)])
    _, err = capsys.readouterr()
    assert status == 2 and err.count("\n") == 1 and err.startswith(PREFIX), err
    assert ("is a directory" if target == "folder" else "name another file") in err
    assert {p: p.read_bytes() for p in before} == before


# --- structured files (#19): every JSON, TOML and XML file a command reads ------------------------

DEEP_JSON = "[" * 200_000  # json.loads: RecursionError
DEEP_TOML = "a = " + "[" * 200_000
METRICS_OK = '{"epochs": [{"epoch": 1, "test_accuracy": 0.5}, {"epoch": 2, "test_accuracy": 0.6}]}'
PLATFORM = "<platform version='4.1'><zone id='z' routing='Full'><cluster id='c' prefix='h' suffix='' radical='{radical}' core='{core}' speed='{speed}' bw='{bw}' lat='0s'/></zone></platform>"
GOOD = {"radical": "0-3", "core": "2", "speed": "1Gf", "bw": "1GBps"}
LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY a{i} "{("&a;" if i == 1 else f"&a{i - 1};") * 10}">' for i in range(1, 12))
    + "]><p>&a11;</p>"
)


def _write(text: str | None):
    """A file holding ``text``; None: a link to /dev/zero (endless)."""

    def make(path: Path) -> None:
        if text is None:
            path.symlink_to("/dev/zero")
        else:
            path.write_text(text)

    return make


def _sparse(path: Path) -> None:
    """A regular file of 1 TiB that holds nothing (sparse): refused from its size, never read."""
    with open(path, "wb") as handle:
        handle.truncate(1 << 40)


STRUCTURED = {
    # name: (the hostile file's name, how it is made, the command (placeholders {bad}, {cal}, {tmp}), what the line says)
    "plot-wrong-type": (
        "run/metrics.json",
        _write(METRICS_OK.replace("0.6", '"abc"')),
        ["plot", "{tmp}/run"],
        r'field "epochs\[1\]\.test_accuracy" should be a number, not "abc"',
    ),
    "plot-epoch-not-integer": (
        "run/metrics.json",
        _write(METRICS_OK.replace('"epoch": 2', '"epoch": "2"')),
        ["plot", "{tmp}/run"],
        r'field "epochs\[1\]\.epoch" should be an integer',
    ),
    "plot-deep": ("run/metrics.json", _write(DEEP_JSON), ["plot", "{tmp}/run"], r"nested more than 64 levels deep"),
    "plot-endless": ("run/metrics.json", _write(None), ["plot", "{tmp}/run"], r"more than the [\d,]+ bytes"),
    "plot-per-rank-text": (
        "run/metrics.json",
        _write(METRICS_OK[:-1] + ', "local_test_accuracy": {"per_rank": [0.5, "x"]}}'),
        ["plot", "{tmp}/run"],
        r'field "local_test_accuracy\.per_rank\[1\]" should be a number',
    ),
    "config-endless": ("run.toml", _write(None), ["--config", "{bad}"], r"--config \S+: more than the 1,048,576 bytes"),
    "config-deep": ("run.toml", _write(DEEP_TOML), ["--config", "{bad}"], r"--config \S+: nested more than 64 levels deep"),
    "config-dotted-key": ("run.toml", _write("a" + ".a" * 200_000 + " = 1"), ["--config", "{bad}"], r"--config \S+: nested more than 64 levels deep"),
    "grid-huge": ("grid.toml", _sparse, ["study", "--grid", "{bad}"], r"--grid \S+: 1,099,511,627,776 bytes, more than the 1,048,576"),
    "plot-huge": ("run/metrics.json", _sparse, ["plot", "{tmp}/run"], r"1,099,511,627,776 bytes, more than the"),
    "grid-deep": ("grid.toml", _write(DEEP_TOML), ["study", "--grid", "{bad}"], r"--grid \S+: nested more than 64 levels deep"),
    "platform-huge-range": (
        "p.xml",
        _write(PLATFORM.format(**{**GOOD, "radical": "0-999999999999"})),
        ["scaling", "--calibration", "{cal}", "--platform", "{bad}"],
        r"1,000,000,000,000 hosts, more than the 65,536",
    ),
    "platform-text-range": (
        "p.xml",
        _write(PLATFORM.format(**{**GOOD, "radical": "a-b"})),
        ["scaling", "--calibration", "{cal}", "--platform", "{bad}"],
        r"radical 'a-b' should be N or N-M",
    ),
    "platform-zero-cores": (
        "p.xml",
        _write(PLATFORM.format(**{**GOOD, "core": "0"})),
        ["scaling", "--calibration", "{cal}", "--platform", "{bad}"],
        r"core '0': should be an integer from 1",
    ),
    "platform-negative-speed": (
        "p.xml",
        _write(PLATFORM.format(**{**GOOD, "speed": "-1Gf"})),
        ["scaling", "--calibration", "{cal}", "--platform", "{bad}"],
        r"speed -1e\+09: should be positive",
    ),
    "platform-zero-bandwidth": (
        "p.xml",
        _write(PLATFORM.format(**{**GOOD, "bw": "0Bps"})),
        ["scaling", "--calibration", "{cal}", "--platform", "{bad}"],
        r"bw 0: should be positive",
    ),
    "platform-billion-laughs": ("p.xml", _write(LAUGHS), ["scaling", "--calibration", "{cal}", "--platform", "{bad}"], r"declares the entity a"),
    "platform-endless": ("p.xml", _write(None), ["scaling", "--calibration", "{cal}", "--platform", "{bad}"], r"more than the [\d,]+ bytes"),
    "calibration-list": ("cal.json", _write("[1, 2]"), ["scaling", "--calibration", "{bad}"], r"should hold a table, not a list"),
    "calibration-links-text": (
        "cal.json",
        _write(
            '{"machine": "m", "cores": 2, "compute": {"36-8-10": {"all": {"per_step": 0, "per_sample": 0}}}, "links": {"shm": {"latency": "x", "bandwidth": 1}}}'
        ),
        ["scaling", "--calibration", "{bad}"],
        r'field "links\.shm\.latency" should be a number at least 0, not "x"',
    ),
    "calibration-bad-model-label": (
        "cal.json",
        _write('{"machine": "m", "cores": 2, "compute": {"big": {"all": {"per_step": 0, "per_sample": 0}}}, "links": {}}'),
        ["scaling", "--calibration", "{bad}"],
        r'field "compute\.big" should be named as layer widths',
    ),
    "timeline-no-run": (
        "t.json",
        _write('{"traceEvents": []}'),
        ["scaling", "--calibration", "{cal}", "--from-timeline", "{bad}"],
        r'field "otherData" is missing',
    ),
    "timeline-span-text": (
        "t.json",
        _write(
            '{"otherData": {"sizes": [36, 8, 10], "batch_size": 10, "slice_sizes": [60], "epochs": 1, "ranks": 1},'
            ' "traceEvents": [{"ph": "X", "pid": 0, "ts": 0, "dur": "long", "cat": "compute"}]}'
        ),
        ["scaling", "--calibration", "{cal}", "--from-timeline", "{bad}"],
        r'field "traceEvents\[0\]\.dur" should be a number at least 0, not "long"',
    ),
    "calibration-deep": ("cal.json", _write('{"measured": ' + DEEP_JSON), ["scaling", "--calibration", "{bad}"], r"nested more than 64 levels deep"),
}


@pytest.fixture(scope="module")
def light_cap(tmp_path_factory):
    """An address-space cap: what a command that fails at once needs, plus HEADROOM."""
    root = tmp_path_factory.mktemp("cap")
    return _vm_peak_of(["plot", str(root / "absent")], root) + HEADROOM


@pytest.mark.parametrize("case", sorted(STRUCTURED))
def test_hostile_structured_files_are_one_line_within_a_memory_cap(tmp_path, light_cap, case):
    name, make, argv, expect = STRUCTURED[case]
    bad = tmp_path / name
    bad.parent.mkdir(exist_ok=True)
    make(bad)
    from pnn_mpi.scaling.costs import Calibration, Link, StepCost

    cal = Calibration("toy", 2, {"36-8-10": {"one": StepCost(1e-3, 0), "all": StepCost(1e-3, 0)}}, {"shm": Link(1e-6, 1e9)})
    (tmp_path / "good-cal.json").write_text(cal.to_json())
    started = time.monotonic()
    proc = _run_capped([a.format(bad=bad, cal=tmp_path / "good-cal.json", tmp=tmp_path) for a in argv], light_cap, tmp_path)
    assert time.monotonic() - started < 60
    line = _one_line(proc)
    assert bad.name in line, line
    assert re.search(expect, line), line
