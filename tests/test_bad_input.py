"""Bad input, table-driven (issue #5): every case with the one line it must produce.

Each row of ``CASES`` builds its files under ``tmp_path`` (a small dataset from
``write_dataset`` with one file damaged, a config file, a model file...), runs
the command line, and expects:

- exit status 2 (in-process ``main()``), or non-zero under ``mpiexec`` (Open MPI
  turns a rank's status 2 into its own);
- exactly one program line on stderr, starting ``pnn_mpi: error: `` (Open MPI's
  boxed teardown notice is not ours and is filtered out);
- the expected text (a regular expression searched in that line);
- the path of the file at fault, where a file is at fault;
- no traceback anywhere, nothing on stdout (the error comes before any work).

One-rank cases call ``pnn_mpi.commands.cli.main`` in this process (cheap); only the cases
that need several ranks launch ``mpiexec``. The table is complete on its own;
comments saying "also: test_x.py" only note where a fault is covered too.
Two property tests (hypothesis) feed random bytes to the command line as a
training file and as ``evaluate --images/--labels`` files.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import find_mnist, learnable_images, run_pnn, write_dataset
from pnn_mpi.commands.cli import main
from pnn_mpi.data.datasets import DATASETS, find_file
from pnn_mpi.data.idx import read_records, write_idx
from pnn_mpi.nn.network import Network
from pnn_mpi.training.model_io import model_arrays, npz_bytes

PREFIX = "pnn_mpi: error: "
TRAIN_N, TEST_N = 60, 20  # the small dataset every case starts from: 6x6 images
FILES = DATASETS["custom"].files  # role -> canonical basename

# A quick training run on {data}: if a bad value slipped through, it would train for
# one epoch of 60 samples (and the case would fail on its exit status), not for minutes.
TRAIN = ("--dataset", "custom", "--data-dir", "{data}", "--epochs", "1", "--hidden", "4", "--out", "{tmp}/out")
TEST_IDX = ("--images", "{data}/t10k-images-idx3-ubyte", "--labels", "{data}/t10k-labels-idx1-ubyte")
EVALUATE = ("evaluate", "--model", "{model}", *TEST_IDX)
PREDICT = ("predict", "--model", "{model}", "--images")


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], Path | None]  # builds the files; returns the file at fault, if one is
    argv: tuple[str, ...]  # placeholders: {tmp}, {data} (tmp/data), {model} (tmp/model.npz), {bad} (setup's file)
    expect: str  # regular expression searched in the error line
    ranks: int = 1  # 1: main() in this process; more: mpiexec -n ranks python -m pnn_mpi


# --- setups --------------------------------------------------------------------


def _data(tmp: Path, gz: bool = False) -> Path:
    return write_dataset(tmp / "data", train=TRAIN_N, test=TEST_N, gz=gz)


def _path(tmp: Path, role: str, gz: bool = False) -> Path:
    return tmp / "data" / (FILES[role] + (".gz" if gz else ""))


def dataset(gz: bool = False):
    """The intact dataset: the fault is in the flags."""

    def setup(tmp):
        _data(tmp, gz)

    return setup


def payload(role: str, change: Callable[[bytes], bytes], gz: bool = False):
    """Damage the IDX bytes of one file (decompressed first when gz, recompressed after)."""

    def setup(tmp):
        _data(tmp, gz)
        path = _path(tmp, role, gz)
        if gz:
            path.write_bytes(gzip.compress(change(gzip.decompress(path.read_bytes())), mtime=0))
        else:
            path.write_bytes(change(path.read_bytes()))
        return path

    return setup


def payloads(changes: dict[str, Callable[[bytes], bytes]], gz: bool = False):
    """Damage several files at once; the first one named is the file at fault."""

    def setup(tmp):
        _data(tmp, gz)
        for role, change in changes.items():
            path = _path(tmp, role, gz)
            raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
            path.write_bytes(gzip.compress(change(raw), mtime=0) if gz else change(raw))
        return _path(tmp, next(iter(changes)), gz)

    return setup


def stream(role: str, change: Callable[[bytes], bytes]):
    """Damage the on-disk bytes of one .gz file (the compressed stream itself)."""

    def setup(tmp):
        _data(tmp, gz=True)
        path = _path(tmp, role, gz=True)
        path.write_bytes(change(path.read_bytes()))
        return path

    return setup


def replace(role: str, array: np.ndarray, gz: bool = False):
    """Replace one file by another (well-formed) IDX array."""

    def setup(tmp):
        _data(tmp, gz)
        path = _path(tmp, role, gz)
        write_idx(path, array)
        return path

    return setup


# Byte surgery on an IDX file: header = magic (4 bytes), then one 4-byte size per dimension.
def magic(value: int) -> Callable[[bytes], bytes]:
    return lambda b: value.to_bytes(4, "big") + b[4:]


def dim(i: int, value: int) -> Callable[[bytes], bytes]:
    return lambda b: b[: 4 + 4 * i] + value.to_bytes(4, "big") + b[8 + 4 * i :]


def label(i: int, value: int) -> Callable[[bytes], bytes]:
    return lambda b: b[: 8 + i] + bytes([value]) + b[9 + i :]


def flip(at: float, n: int = 8) -> Callable[[bytes], bytes]:
    """Invert n bytes from the fraction ``at`` of the file on."""

    def change(b: bytes) -> bytes:
        i = int(len(b) * at)
        return b[:i] + bytes(x ^ 0xFF for x in b[i : i + n]) + b[i + n :]

    return change


EMPTY = lambda b: b""  # noqa: E731
SHORT = lambda b: b[:6]  # noqa: E731  the magic and half of the first size
CUT = lambda b: b[:-10]  # noqa: E731
EXTRA = lambda b: b + b"\0\0\0\0\0"  # noqa: E731
HALF = lambda b: b[: len(b) // 2]  # noqa: E731


def mnist_copy(role: str, *, index: int):
    """A copy of the real MNIST (symlinks) in which one label of ``role`` is changed, staying in 0..9:
    only its checksum can tell."""

    def setup(tmp):
        real = find_mnist()
        if real is None:
            pytest.skip("real MNIST not found: set PNN_MPI_DATA to a folder with the four files")
        folder = tmp / "mnist"
        folder.mkdir()
        for basename in FILES.values():
            source = find_file(real, basename)
            (folder / source.name).symlink_to(source.resolve())
        source = find_file(real, FILES[role])
        target = folder / source.name
        target.unlink()
        gz = source.name.endswith(".gz")
        raw = bytearray(gzip.decompress(source.read_bytes()) if gz else source.read_bytes())
        raw[8 + index] = (raw[8 + index] + 1) % 10
        target.write_bytes(gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw))
        return target

    return setup


def file_named(name: str, content: bytes | None = b"not a folder"):
    """A plain file (or, with content None, a path that does not exist) at tmp/name."""

    def setup(tmp):
        _data(tmp)
        path = tmp / name
        if content is not None:
            path.write_bytes(content)
        return path

    return setup


def toml(text: str | bytes):
    def setup(tmp):
        _data(tmp)
        path = tmp / "run.toml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return setup


# --- model files ------------------------------------------------------------------


class LeaveTrace:
    """Unpickling this creates the folder ``trace``: proof that a file was unpickled."""

    def __init__(self, trace: Path):
        self.trace = str(trace)

    def __reduce__(self):
        return (os.mkdir, (self.trace,))


def good_arrays(inputs: int = 36) -> dict[str, np.ndarray]:
    net = Network((inputs, 4, 10), "relu", "softmax-xent", "float32")
    net.params[...] = np.random.default_rng(0).normal(0.0, 0.1, net.params.shape)
    return model_arrays(net, {"dataset": "custom", "image_shape": "6x6", "ranks": "1"})


def fewer_classes(classes: int):
    """A model of ``classes`` outputs (trained on data with fewer classes than the test set holds), beside the dataset."""

    def setup(tmp):
        _data(tmp)
        net = Network((36, 4, classes), "relu", "softmax-xent", "float32")
        net.params[...] = np.random.default_rng(0).normal(0.0, 0.1, net.params.shape)
        path = tmp / "model.npz"
        path.write_bytes(npz_bytes(model_arrays(net, {"dataset": "custom", "image_shape": "6x6", "ranks": "1"})))
        return path

    return setup


def model(change: Callable[[dict], dict] | None = None, *, inputs: int = 36):
    """A well-formed model.npz, with ``change`` applied to its arrays first."""

    def setup(tmp):
        _data(tmp)
        arrays = good_arrays(inputs)
        path = tmp / "model.npz"
        path.write_bytes(npz_bytes(change(arrays) if change else arrays))
        return path

    return setup


def model_bytes(make: Callable[[Path], bytes]):
    """A model.npz whose bytes are not from us at all."""

    def setup(tmp):
        _data(tmp)
        path = tmp / "model.npz"
        path.write_bytes(make(tmp))
        return path

    return setup


def with_model(setup: Callable[[Path], Path | None], inputs: int = 36):
    """A good model.npz beside the files ``setup`` builds (and damages)."""

    def both(tmp):
        model(inputs=inputs)(tmp)
        return setup(tmp)

    return both


def model_at(make: Callable[[Path], None], name: str = "model.npz"):
    """Whatever ``make`` puts at tmp/name, as the model."""

    def setup(tmp):
        _data(tmp)
        make(tmp / name)
        return tmp / name

    return setup


def without(*names: str):
    return lambda a: {k: v for k, v in a.items() if k not in names}


def with_(**values):
    return lambda a: {**a, **{k: np.asarray(v) for k, v in values.items()}}


def _object_array_npz(tmp: Path) -> bytes:
    path = tmp / "objects.npz"
    arrays = good_arrays()
    arrays["W1"] = np.array([LeaveTrace(tmp / "trace")] * 2, dtype=object)
    np.savez(path, **arrays)  # allow_pickle is on when saving: the object array is pickled
    return path.read_bytes()


def _nan_weights(a):
    w = a["W1"].copy()
    w[3, 1] = np.nan
    return {**a, "W1": w}


def predict_input(make: Callable[[Path], None] | None, name: str):
    """A model for 6x6 images and a --images file tmp/name made by ``make`` (None: no file)."""

    def setup(tmp):
        model()(tmp)
        path = tmp / name
        if make is not None:
            make(path)
        return path

    return setup


def _save_pixels(side: int):
    return lambda path: np.save(path, learnable_images(5, np.random.default_rng(0), side=side)[0])


def _save_objects(path: Path) -> None:
    np.save(path, np.array([LeaveTrace(path.parent / "trace"), 1], dtype=object), allow_pickle=True)


# --- the table ------------------------------------------------------------------------

IMAGES_HEADER = r"header says 60 images \(2160 bytes\)"
LABELS_HEADER = r"header says 60 labels \(60 bytes\)"


def idx_cases(gz: bool) -> list[Case]:
    """The IDX faults, for raw files or .gz ones. Also: tests/test_idx.py (reader level)."""
    k = "gz" if gz else "raw"
    empty = "decompresses to nothing" if gz else "empty file"
    return [
        Case(f"{k}-empty-images", payload("train-images", EMPTY, gz), TRAIN, rf"{empty}; expected an IDX images file"),
        Case(f"{k}-empty-labels", payload("train-labels", EMPTY, gz), TRAIN, rf"{empty}; expected an IDX labels file"),
        Case(f"{k}-short-header", payload("train-images", SHORT, gz), TRAIN, r"short header: file holds 6 bytes, an IDX images header needs 16"),
        Case(
            f"{k}-images-with-label-magic",
            payload("train-images", magic(2049), gz),
            TRAIN,
            r"wrong magic number 2049 \(0x00000801: 1-dimensional, unsigned byte\); expected 2051 .* for IDX images",
        ),
        Case(
            f"{k}-labels-with-image-magic",
            payload("train-labels", magic(2051), gz),
            TRAIN,
            r"wrong magic number 2051 \(0x00000803: 3-dimensional, unsigned byte\); expected 2049 .* for IDX labels",
        ),
        Case(
            f"{k}-float-type-code",
            payload("train-images", magic(0x0D03), gz),
            TRAIN,
            r"unsupported element type 0x0D \(32-bit float\); only 0x08 \(unsigned byte\) is supported",
        ),
        Case(
            f"{k}-four-dims",
            payload("test-images", magic(0x0804), gz),
            TRAIN,
            r"wrong magic number 2052 \(0x00000804: 4-dimensional, unsigned byte\); expected 2051",
        ),
        Case(f"{k}-zero-rows", payload("train-images", dim(1, 0), gz), TRAIN, r"bad image dimensions 0x6: rows and columns must be at least 1"),
        Case(f"{k}-truncated-payload", payload("train-images", CUT, gz), TRAIN, rf"truncated payload: {IMAGES_HEADER}, file holds 2150 bytes"),
        Case(
            f"{k}-oversized-payload",
            payload("train-labels", EXTRA, gz),
            TRAIN,
            rf"oversized payload: {LABELS_HEADER}, file holds 65 bytes \(5 bytes after the last record\)",
        ),
        Case(f"{k}-label-10", payload("train-labels", label(7, 10), gz), TRAIN, r"label out of range at index 7: 10 \(labels must be 0..9\); 1 bad labels"),
        Case(f"{k}-label-255-last", payload("train-labels", label(59, 255), gz), TRAIN, r"label out of range at index 59: 255 \(labels must be 0..9\)"),
        Case(
            f"{k}-count-mismatch",
            payload("train-labels", lambda b: dim(0, 59)(b)[:-1], gz),
            TRAIN,
            r"image/label count mismatch: \S*train-images-idx3-ubyte\S* holds 60 images but \S+ holds 59 labels",
        ),
        Case(
            f"{k}-huge-count",
            payload("train-images", dim(0, 10**9), gz),
            TRAIN,
            r"image/label count mismatch: \S+ holds 1000000000 images but \S+ holds 60 labels",
        ),
        # Headers promising a billion samples over a few bytes: refused without allocating them.
        Case(
            f"{k}-huge-counts",
            payloads({"train-images": dim(0, 10**9), "train-labels": dim(0, 10**9)}, gz),
            TRAIN,
            r"truncated payload: header says 1000000000 images \(36000000000 bytes\), file holds 2160 bytes",
        ),
    ]


CASES: list[Case] = [
    # --- IDX files, raw and gzip (the reader's faults; also: test_idx.py, test_datasets.py)
    *idx_cases(gz=False),
    *idx_cases(gz=True),
    Case(
        "raw-gzip-bytes-without-gz-name",
        payload("train-images", gzip.compress),
        TRAIN,
        r"wrong magic number .*; the file looks gzip-compressed, so its name should end in \.gz",
    ),
    Case("gz-corrupt-stream", stream("train-images", flip(0.5)), TRAIN, r"corrupt gzip data \(.+\)"),
    Case(
        "gz-bad-crc",
        stream("train-labels", lambda b: b[:-8] + bytes([b[-8] ^ 1]) + b[-7:]),
        TRAIN,  # the CRC-32 trailer
        r"corrupt gzip data \(.*incorrect data check\)",
    ),
    Case("gz-cut-short", stream("train-images", HALF), TRAIN, r"gzip stream cut short \(the file ends inside the compressed data\)"),
    Case("gz-not-gzip", stream("train-labels", gzip.decompress), TRAIN, r"not gzip-compressed, though the name ends in \.gz"),
    Case("gz-trailing-garbage", stream("test-labels", lambda b: b + b"junk"), TRAIN, r"trailing garbage after the gzip data"),
    Case("raw-no-records", replace("train-labels", np.zeros(0, np.uint8)), TRAIN, r"count mismatch: \S+ holds 60 images but \S+ holds 0 labels"),
    Case(
        "raw-no-training-records",
        payloads({"train-images": lambda b: dim(0, 0)(b)[:16], "train-labels": lambda b: dim(0, 0)(b)[:8]}),
        TRAIN,
        r"training set is empty|only 0 training samples",
    ),
    # An empty test set cannot score the network (today: trains, reports "nan%", writes NaN into metrics.json).
    Case("raw-empty-test-set", payloads({"test-images": lambda b: dim(0, 0)(b)[:16], "test-labels": lambda b: dim(0, 0)(b)[:8]}), TRAIN, r"test set is empty"),
    Case("raw-test-label-12", payload("test-labels", label(3, 12)), TRAIN, r"label out of range at index 3: 12"),
    # The test images must have the training images' size: the network is built for the latter.
    Case(
        "raw-test-images-other-size", replace("test-images", learnable_images(TEST_N, np.random.default_rng(0), 7)[0]), TRAIN, r"7x7.*6x6|6x6.*7x7"
    ),  # today: a ValueError traceback once training evaluates
    Case(
        "canonical-train-labels-checksum",
        mnist_copy("train-labels", index=100),
        (
            "--dataset",
            "mnist",
            "--data-dir",
            "{tmp}/mnist",
            "--train-size",
            "100",
            "--test-size",
            "100",
            "--epochs",
            "1",
            "--hidden",
            "4",
            "--out",
            "{tmp}/out",
        ),
        r"checksum mismatch: payload MD5 is [0-9a-f]{32}, expected a25bea736e30d166cdddb491f175f624 "
        r"\(not the canonical train-labels-idx1-ubyte\?\)",
    ),
    Case(
        "canonical-test-labels-checksum-evaluate",
        lambda tmp: (model(inputs=784)(tmp), mnist_copy("test-labels", index=5)(tmp))[1],
        ("evaluate", "--model", "{model}", "--dataset", "mnist", "--data-dir", "{tmp}/mnist"),
        r"checksum mismatch: .*expected 27ae3e4e09519cfbb04c329615203637",
    ),
    # --- evaluate --images/--labels with bad IDX files
    Case(
        "evaluate-truncated-images",
        with_model(payload("test-images", CUT)),
        EVALUATE,
        r"truncated payload: header says 20 images \(720 bytes\), file holds 710 bytes",
    ),
    Case("evaluate-label-out-of-range", with_model(payload("test-labels", label(0, 200))), EVALUATE, r"label out of range at index 0: 200"),
    Case(
        "evaluate-labels-beyond-the-model",
        fewer_classes(3),
        EVALUATE,
        r"t10k-labels-idx1-ubyte: holds label \d, but the model .*model.npz knows only 3 classes \(0\.\.2\)",
    ),
    Case(
        "evaluate-count-mismatch",
        with_model(replace("test-labels", np.zeros(19, np.uint8))),
        EVALUATE,
        r"\S+t10k-images-idx3-ubyte holds 20 images but \S+ holds 19 labels",
    ),
    Case(
        "evaluate-images-are-labels",
        lambda tmp: (model()(tmp), _path(tmp, "test-labels"))[1],
        ("evaluate", "--model", "{model}", "--images", "{bad}", "--labels", "{bad}"),
        r"wrong magic number 2049",
    ),
    Case(
        "evaluate-no-records",
        with_model(payloads({"test-images": lambda b: dim(0, 0)(b)[:16], "test-labels": lambda b: dim(0, 0)(b)[:8]})),
        EVALUATE,
        r"holds no images",
    ),
    Case(
        "evaluate-images-without-labels",
        with_model(dataset()),
        ("evaluate", "--model", "{model}", "--images", "{data}/t10k-images-idx3-ubyte"),
        r"--images and --labels go together",
    ),
    # --- training flags (also: test_cli.py at parser level; test_e2e.py for a few at 4 ranks)
    Case("epochs-0", dataset(), (*TRAIN, "--epochs", "0"), r"argument --epochs: expected a number of at least 1, got 0"),
    Case("epochs-negative", dataset(), (*TRAIN, "--epochs", "-1"), r"argument --epochs: expected a number of at least 1, got -1"),
    Case("lr-0", dataset(), (*TRAIN, "--lr", "0"), r"--lr 0\.0: the learning rate must be positive and finite"),
    Case("lr-negative", dataset(), (*TRAIN, "--lr", "-0.1"), r"--lr -0\.1: the learning rate must be positive and finite"),
    Case("lr-nan", dataset(), (*TRAIN, "--lr", "nan"), r"--lr nan: the learning rate must be positive and finite"),
    Case("lr-text", dataset(), (*TRAIN, "--lr", "fast"), r"argument --lr: invalid float value: 'fast'"),
    Case("momentum-1", dataset(), (*TRAIN, "--momentum", "1"), r"--momentum 1\.0: expected a value in \[0, 1\)"),
    Case("lr-decay-0", dataset(), (*TRAIN, "--lr-decay", "0"), r"--lr-decay 0\.0: expected a factor in \(0, 1\]"),
    Case("hidden-0", dataset(), (*TRAIN, "--hidden", "0"), r"argument --hidden: expected a number of at least 1, got 0"),
    Case("batch-size-0", dataset(), (*TRAIN, "--batch-size", "0"), r"argument --batch-size: expected a number of at least 1, got 0"),
    Case("batch-size-abc", dataset(), (*TRAIN, "--batch-size", "abc"), r"argument --batch-size: expected a whole number, got 'abc'"),
    Case(
        "batch-size-over-slice-1-rank", dataset(), (*TRAIN, "--batch-size", "61"), r"--batch-size 61 is larger than a rank's slice \(60 samples with 1 ranks?\)"
    ),
    Case("train-size-negative", dataset(), (*TRAIN, "--train-size", "-5"), r"argument --train-size: expected a number of at least 1, got -5"),
    Case("test-size-0", dataset(), (*TRAIN, "--test-size", "0"), r"argument --test-size: expected a number of at least 1, got 0"),
    Case("activation-softsign", dataset(), (*TRAIN, "--activation", "softsign"), r"argument --activation: invalid choice: 'softsign' \(choose from .*relu"),
    Case("output-mse", dataset(), (*TRAIN, "--output", "mse"), r"argument --output: invalid choice: 'mse' \(choose from .*sigmoid-mse"),
    Case("init-zeros", dataset(), (*TRAIN, "--init", "zeros"), r"argument --init: invalid choice: 'zeros'"),
    Case("sync-steps-0", dataset(), (*TRAIN, "--sync", "steps:0"), r"--sync 'steps:0': steps needs a positive step count"),
    Case("sync-weekly", dataset(), (*TRAIN, "--sync", "weekly"), r"--sync 'weekly': expected one of end, epoch, steps:K, local\[:K\[:L\]\], grad"),
    Case("dtype-float16", dataset(), (*TRAIN, "--dtype", "float16"), r"argument --dtype: invalid choice: 'float16'"),
    Case("seed-negative", dataset(), (*TRAIN, "--seed", "-1"), r"argument --seed: expected a number of at least 0, got -1"),
    Case("dataset-cifar", dataset(), (*TRAIN, "--dataset", "cifar"), r"argument --dataset: invalid choice: 'cifar'"),
    Case("unknown-flag", dataset(), (*TRAIN, "--bogus"), r"unrecognized arguments: --bogus"),
    Case("flag-without-value", dataset(), (*TRAIN, "--epochs"), r"argument --epochs: expected one argument"),
    Case(
        "data-dir-missing",
        file_named("nowhere", None),
        (*TRAIN, "--data-dir", "{bad}"),
        r"dataset custom not found; looked in: \S+nowhere \(no such folder \(or not readable\)\); --data-dir was given",
    ),
    Case(
        "data-dir-lacks-a-file",
        lambda tmp: (_data(tmp), _path(tmp, "test-labels").unlink(), tmp / "data")[2],
        TRAIN,
        r"dataset custom not found; looked in: \S+ \(missing t10k-labels-idx1-ubyte\[\.gz\]\)",
    ),
    Case("out-is-a-file", file_named("file"), (*TRAIN, "--out", "{bad}"), r"--out \S+: cannot write there \(File exists\)"),
    Case("out-below-a-file", file_named("file"), (*TRAIN, "--out", "{bad}/sub"), r"--out \S+/sub: cannot write there \(Not a directory\)"),
    # --- several ranks (mpiexec): faults that depend on the number of ranks, or that only one rank sees
    Case(
        "batch-size-over-slice-2-ranks",
        dataset(),
        (*TRAIN, "--batch-size", "31"),
        r"--batch-size 31 is larger than a rank's slice \(30 samples with 2 ranks\)",
        ranks=2,
    ),
    Case("more-ranks-than-samples", dataset(), (*TRAIN, "--train-size", "1"), r"2 ranks but only 1 training samples: every rank needs at least one", ranks=2),
    # Only the last rank drains the .gz to its end: the other rank must stop too, with the same line.
    Case(
        "gz-oversized-seen-by-last-rank", payload("train-images", EXTRA, gz=True), TRAIN, rf"oversized payload: {IMAGES_HEADER}, file holds 2165 bytes", ranks=2
    ),
    Case("bad-flag-2-ranks", dataset(), (*TRAIN, "--lr", "nan"), r"--lr nan: the learning rate must be positive and finite", ranks=2),
    # --- TOML config files (also: test_cli.py at parser level)
    Case("toml-malformed", toml("hidden = [1, 2\n"), ("--config", "{bad}", *TRAIN), r"--config \S+: not valid TOML: "),
    Case("toml-unknown-key", toml("learning_rate = 0.1\n"), ("--config", "{bad}", *TRAIN), r"--config \S+: unknown setting 'learning_rate' \(known: .*lr"),
    Case("toml-wrong-type", toml('hidden = "many"\n'), ("--config", "{bad}", *TRAIN), r"hidden.*'many'"),
    Case("toml-bad-count", toml("epochs = 0\n"), ("--config", "{bad}", *TRAIN), r"epochs.* 0"),
    Case("toml-bad-rate", toml("lr = 0.0\n"), ("--config", "{bad}", *TRAIN), r"lr 0\.0: the learning rate must be positive"),
    Case("toml-list-for-scalar", toml("lr = [0.1, 0.2]\n"), ("--config", "{bad}", *TRAIN), r"--config \S+: lr takes one value, not a list"),
    Case("toml-table", toml("[sync]\nkind = 'end'\n"), ("--config", "{bad}", *TRAIN), r"--config \S+: sync must be a value, not a table"),
    Case("toml-missing-file", file_named("absent.toml", None), ("--config", "{bad}", *TRAIN), r"--config \S+: No such file or directory"),
    Case("toml-not-utf8", toml(b"lr = 0.1\n# caf\xe9\n"), ("--config", "{bad}", *TRAIN), r"--config \S+: not valid TOML: .*utf-8"),
    # --- model files for evaluate --model (also: test_model_io.py at load_model level)
    Case("model-missing", file_named("model.npz", None), EVALUATE, r"\S+: no such model file"),
    # A text file is not "pickled (object) data", and a command-line user has no allow_pickle to set.
    Case("model-is-text", model_bytes(lambda tmp: b"hello, I am a model\n"), EVALUATE, r"\S+: not a pnn_mpi model \((?!.*pickle)"),
    Case("model-is-empty", model_bytes(lambda tmp: b""), EVALUATE, r"\S+: not a pnn_mpi model \("),
    Case("model-is-a-folder", model_at(lambda path: path.mkdir()), EVALUATE, r"\S+: not a pnn_mpi model \("),
    Case(
        "model-plain-npy",
        model_at(lambda path: np.save(path, good_arrays()["W1"]), "model.npy"),
        ("evaluate", "--model", "{bad}", *TEST_IDX),
        r"not a pnn_mpi model \(a single array, not an \.npz archive\)",
    ),
    Case("model-without-format-mark", model(without("format")), EVALUATE, r"not a pnn_mpi model \(no 'pnn_mpi-model' format mark\)"),
    Case(
        "model-foreign-npz",
        model_bytes(lambda tmp: npz_bytes({"weights": np.zeros((3, 3))})),
        EVALUATE,
        r"not a pnn_mpi model \(no 'pnn_mpi-model' format mark\)",
    ),
    Case(
        "model-W1-transposed",
        model(lambda a: {**a, "W1": a["W1"].T.copy()}),
        EVALUATE,
        r"broken pnn_mpi model: W1 has shape \(4, 36\) float32, expected \(36, 4\) float32",
    ),
    Case("model-missing-b2", model(without("b2")), EVALUATE, r"broken pnn_mpi model: missing array b2"),
    Case("model-unknown-activation", model(with_(activation="softsign")), EVALUATE, r"broken pnn_mpi model: unknown activation 'softsign'"),
    Case("model-wrong-version", model(with_(version=2)), EVALUATE, r"broken pnn_mpi model: format version 2 is not 1"),
    Case(
        "model-float16",
        model(lambda a: {**a, **{k: v.astype(np.float16) for k, v in a.items() if k[0] in "Wb"}}),
        EVALUATE,
        r"broken pnn_mpi model: weights must be one of float32, float64",
    ),
    Case("model-nan-weights", model(_nan_weights), EVALUATE, r"broken pnn_mpi model: parameters hold NaN or infinity"),
    Case("model-object-array", model_bytes(_object_array_npz), EVALUATE, r"not a pnn_mpi model \(.*allow_pickle=False"),
    Case("model-pickle-renamed-npz", model_bytes(lambda tmp: pickle.dumps(LeaveTrace(tmp / "trace"))), EVALUATE, r"not a pnn_mpi model \("),
    Case("model-for-other-images", with_model(lambda tmp: _path(tmp, "test-images"), inputs=784), EVALUATE, r"images have 36 pixels, the model takes 784"),
    # --- predict --images (also: test_e2e.py for the wrong size)
    Case("predict-npy-wrong-size", predict_input(_save_pixels(7), "big.npy"), (*PREDICT, "{bad}"), r"images have 49 pixels, the model takes 36"),
    Case(
        "predict-npy-strings",
        predict_input(lambda p: np.save(p, np.array(["3", "7"])), "strings.npy"),
        (*PREDICT, "{bad}"),
        r"expected uint8 pixels or floats in \[0, 1\], got <U1",
    ),
    Case("predict-npy-objects", predict_input(_save_objects, "objects.npy"), (*PREDICT, "{bad}"), r"not a readable \.npy array \(.*allow_pickle=False"),
    Case(
        "predict-npy-one-dim",
        predict_input(lambda p: np.save(p, np.zeros(36, np.uint8)), "flat.npy"),
        (*PREDICT, "{bad}"),
        r"expected images, got an array of shape \(36,\)",
    ),
    Case(
        "predict-npy-empty", predict_input(lambda p: np.save(p, np.zeros((0, 6, 6), np.uint8)), "empty.npy"), (*PREDICT, "{bad}"), r"holds no images"
    ),  # today: a ValueError traceback from reshape
    # Floats are taken as already scaled to [0, 1]: 0..255 floats would be silently misread.
    Case(
        "predict-npy-floats-not-scaled",
        predict_input(lambda p: np.save(p, np.full((3, 6, 6), 200.0)), "floats.npy"),
        (*PREDICT, "{bad}"),
        r"\[0, 1\].*200|200.*\[0, 1\]",
    ),
    Case("predict-npy-missing", predict_input(None, "absent.npy"), (*PREDICT, "{bad}"), r"\S+: no such file"),
    Case("predict-idx-missing", predict_input(None, "absent-idx3-ubyte"), (*PREDICT, "{bad}"), r"cannot read: No such file or directory"),
    Case("predict-idx-are-labels", lambda tmp: (model()(tmp), _path(tmp, "test-labels"))[1], (*PREDICT, "{bad}"), r"wrong magic number 2049"),
    # --out that cannot be written: today a FileNotFoundError / IsADirectoryError traceback, status 1.
    Case(
        "predict-out-in-missing-folder",
        lambda tmp: (model()(tmp), tmp / "nowhere" / "p.txt")[1],
        (*PREDICT, "{data}/t10k-images-idx3-ubyte", "--out", "{bad}"),
        r"--out \S+: cannot write there",
    ),
    Case(
        "predict-out-is-a-folder",
        lambda tmp: (model()(tmp), tmp / "data")[1],
        (*PREDICT, "{data}/t10k-images-idx3-ubyte", "--out", "{bad}"),
        r"--out \S+: is a directory; name a file",
    ),
]


# What Open MPI's launcher may print while it tears a failed job down, besides its boxed notice:
# a libevent warning, or PMIx's "[host:pid] PMIX ERROR: PMIX_ERR_UNREACH in file ...pmix_server.c"
# when a rank's last message reaches a server that is already going away.
_LAUNCHER_NOISE = re.compile(r"\[warn\] Epoll|\[[^\]\s]+:\d+\] PMIX ERROR: ")


def _program_lines(stderr: str) -> list[str]:
    """stderr without what Open MPI's launcher adds: a notice boxed between dashed rules when a
    rank exits non-zero, and the teardown noise above."""
    lines, boxed = [], False
    for line in stderr.splitlines():
        text = line.strip()
        if len(text) > 20 and set(text) == {"-"}:
            boxed = not boxed
        elif text and not boxed and not _LAUNCHER_NOISE.match(text):
            lines.append(line)
    return lines


def _fill(argv: tuple[str, ...], tmp: Path, bad: Path | None) -> list[str]:
    where = {"tmp": str(tmp), "data": str(tmp / "data"), "model": str(tmp / "model.npz"), "bad": str(bad)}
    return [arg.format(**where) for arg in argv]


def test_the_table_is_complete():
    """Issue #5 asks for at least 30 cases, each with a distinct name and its own expected message."""
    ids = [case.id for case in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert sum(case.ranks > 1 for case in CASES) >= 2


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line(case: Case, tmp_path, capsys):
    bad = case.setup(tmp_path)
    argv = _fill(case.argv, tmp_path, bad)
    if case.ranks == 1:
        status = main(argv)
        out, err = capsys.readouterr()
        assert status == 2, err
        lines = err.splitlines()
    else:
        proc = run_pnn(*argv, ranks=case.ranks, timeout=120)
        out, err = proc.stdout, proc.stderr
        assert proc.returncode != 0, err
        lines = _program_lines(err)
    assert "Traceback" not in err + out, err
    assert len(lines) == 1, err
    assert err.count(PREFIX) == 1, err
    line = lines[0]
    assert line.startswith(PREFIX), err
    assert re.search(case.expect, line[len(PREFIX) :]), f"{case.expect!r} not in {line!r}"
    if bad is not None:
        assert str(bad) in line, f"the file at fault ({bad}) is not named: {line!r}"
    assert out == "", out  # every fault is caught before any work or output
    assert not (tmp_path / "trace").exists(), "a file was unpickled"


# --- property: random bytes through the command line ----------------------------------

try:
    import hypothesis
    from hypothesis import HealthCheck
    from hypothesis import strategies as st
except ImportError:
    hypothesis = None


def _status_and_line(argv: list[str], path: Path, expect: str, capsys) -> None:
    """main(argv) with a random file at ``path``: status 2 and one line naming the file, or,
    should the bytes happen to form a valid IDX file, an ordinary run (status 0)."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out, err
    if status == 0:
        read_records(path, expect=expect)  # valid by chance: then it must really read
        return
    assert status == 2 and out == "", err
    assert err.startswith(PREFIX) and err.count("\n") == 1 and err.endswith("\n"), err
    assert str(path) in err, err


if hypothesis is None:

    def test_random_training_file_gives_one_line():
        pytest.importorskip("hypothesis")

    def test_random_evaluate_files_give_one_line():
        pytest.importorskip("hypothesis")

else:

    def _junk():
        """(bytes, how): random bytes or bytes that begin like an IDX header with 60 records
        (so the payload checks run), written as they are, gzip-compressed (to get past the
        gzip layer of a .gz name), or gzip-compressed and cut short."""
        header = st.sampled_from([b"", b"\0\0\x08\x03", b"\0\0\x08\x01", b"\0\0\x08\x03\0\0\0\x3c\0\0\0\x06\0\0\0\x06", b"\0\0\x08\x01\0\0\0\x3c"])
        headed = st.tuples(header, st.binary(max_size=200)).map(b"".join)
        return st.tuples(st.one_of(st.binary(max_size=300), headed), st.sampled_from(["as is", "gzip", "gzip cut"]))

    def _write(path: Path, junk: tuple[bytes, str]) -> None:
        data, how = junk
        if how != "as is":
            data = gzip.compress(data, mtime=0)
            data = data[: len(data) // 2] if how == "gzip cut" else data
        path.write_bytes(data)

    _SETTINGS = dict(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )

    @hypothesis.settings(**_SETTINGS)
    @hypothesis.given(junk=_junk(), role=st.sampled_from(["train-images", "train-labels"]), gz=st.booleans())
    def test_random_training_file_gives_one_line(tmp_path, capsys, junk, role, gz):
        """Random bytes as a training file (raw or .gz name) of --dataset custom, in-process."""
        folder = tmp_path / ("gz" if gz else "raw")
        if not folder.exists():
            write_dataset(folder, train=TRAIN_N, test=TEST_N, gz=gz)
        path = folder / (FILES[role] + (".gz" if gz else ""))
        original = path.read_bytes()
        _write(path, junk)
        try:
            argv = [arg.format(data=folder, tmp=tmp_path) for arg in TRAIN]
            _status_and_line(argv, path, role.split("-")[1], capsys)
        finally:
            path.write_bytes(original)

    @hypothesis.settings(**_SETTINGS)
    @hypothesis.given(junk=_junk(), which=st.sampled_from(["--images", "--labels"]), gz=st.booleans())
    def test_random_evaluate_files_give_one_line(tmp_path, capsys, junk, which, gz):
        """Random bytes as evaluate's --images or --labels file (raw or .gz name), in-process."""
        if not (tmp_path / "model.npz").exists():
            model()(tmp_path)
        path = tmp_path / ("junk.gz" if gz else "junk")
        _write(path, junk)
        argv = _fill(EVALUATE, tmp_path, None)
        argv[argv.index(which) + 1] = str(path)
        _status_and_line(argv, path, which[2:], capsys)
