"""Batch-1 kernels against the generic trainer step, sample by sample.

The reference is what train.py does with batch 1: ``gradients`` with scale 1,
then ``SGD.step``, for each sample in turn. Every backend must reach the same
parameters (and velocity): float64 to rounding, float32 to a small tolerance.
The "python" backend runs the numba kernel's source uncompiled, so its logic is
checked even where numba is not installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, learnable_images
from pnn_mpi.nn import kernels
from pnn_mpi.nn.activations import ACTIVATIONS
from pnn_mpi.nn.evaluate import to_inputs
from pnn_mpi.nn.losses import OUTPUTS
from pnn_mpi.nn.network import Network
from pnn_mpi.nn.optim import SGD
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.training import train as train_module
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.rank_data import RankData
from pnn_mpi.training.train import gradients

SAMPLES = 24
LR = 0.2


def numba_or_skip(backend: str) -> None:
    if backend == "numba":
        pytest.importorskip("numba")


def sparse_inputs(rows: int, width: int, dtype, seed: int = 0) -> np.ndarray:
    """Pixel-like inputs: most entries exactly zero, one row entirely dark."""
    rng = np.random.default_rng(seed)
    x = (rng.random((rows, width)) < 0.3) * rng.random((rows, width))
    x[3] = 0.0
    return x.astype(dtype)


def make_net(sizes, activation, output, dtype) -> Network:
    net = Network(sizes, activation, output, dtype)
    net.initialize("xavier-normal", 0.1, 7)
    return net


def generic_steps(net: Network, opt: SGD, x, y, order, lr) -> float:
    ws, loss = net.workspace(1), 0.0
    for k in range(len(order)):
        loss += gradients(net, ws, x, y, order[k : k + 1], 1.0)
        opt.step(net.params, net.grads, lr)
    return loss


def assert_close(actual, expected, dtype) -> None:
    scale = float(np.abs(expected).max())
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12 * scale)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hidden", [(9,), (9, 7)], ids=["1-hidden", "2-hidden"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("backend", ["numpy", "numba", "python"])
def test_backend_matches_generic_batch1_loop(backend, activation, output, momentum, hidden, dtype):
    """local_steps over a shuffled order equals gradients + SGD.step per sample: params, velocity, loss."""
    numba_or_skip(backend)
    sizes = (30, *hidden, 10)
    x = sparse_inputs(SAMPLES, sizes[0], dtype)
    y = np.random.default_rng(1).integers(0, 10, SAMPLES).astype(np.intp)
    order = np.random.default_rng(2).permutation(SAMPLES)

    ref = make_net(sizes, activation, output, dtype)
    ref_opt = SGD(ref.params, momentum)
    ref_loss = generic_steps(ref, ref_opt, x, y, order, LR)

    net = make_net(sizes, activation, output, dtype)
    opt = SGD(net.params, momentum)
    loss = kernels.local_steps(net, opt.velocity, x, y, order, 0, SAMPLES, LR, momentum, backend=backend)

    assert_close(net.params, ref.params, dtype)
    if momentum:
        assert_close(opt.velocity, ref_opt.velocity, dtype)
    assert loss == pytest.approx(ref_loss, rel=1e-12 if dtype == "float64" else 1e-5)
    assert not np.array_equal(net.params, make_net(sizes, activation, output, dtype).params)


@pytest.mark.parametrize("backend", ["numpy", "numba", "python"])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_calls_in_pieces_equal_one_call(backend, momentum):
    """One stepper run over [0, 5), [5, 5), [5, 40) equals one run over [0, 40): the state lives in params and velocity."""
    numba_or_skip(backend)
    sizes, dtype = (30, 8, 10), "float64"
    x = sparse_inputs(40, 30, dtype, seed=3)
    y = np.random.default_rng(4).integers(0, 10, 40).astype(np.intp)
    order = np.random.default_rng(5).permutation(40)
    whole, parts = make_net(sizes, "tanh", "softmax-xent", dtype), make_net(sizes, "tanh", "softmax-xent", dtype)
    opt_whole, opt_parts = SGD(whole.params, momentum), SGD(parts.params, momentum)
    total = kernels.local_steps(whole, opt_whole.velocity, x, y, order, 0, 40, LR, momentum, backend=backend)
    stepper = kernels.SampleStepper(parts, x, backend)
    pieces = sum(stepper.run(opt_parts.velocity, y, order, a, b, LR, momentum) for a, b in ((0, 5), (5, 5), (5, 40)))
    np.testing.assert_allclose(parts.params, whole.params, rtol=1e-14, atol=1e-15)
    assert pieces == pytest.approx(total, rel=1e-14)


@pytest.mark.parametrize("backend", ["numpy", "numba", "python"])
def test_empty_range_and_stop_past_the_end(backend):
    """start >= stop changes nothing and returns 0; stop past len(order) stops at its end."""
    numba_or_skip(backend)
    net = make_net((30, 8, 10), "relu", "softmax-xent", "float64")
    x = sparse_inputs(12, 30, "float64")
    y = np.arange(12, dtype=np.intp) % 10
    before = net.params.copy()
    stepper = kernels.SampleStepper(net, x, backend)
    assert stepper.run(None, y, np.arange(12), 7, 7, LR, 0.0) == 0.0
    np.testing.assert_array_equal(net.params, before)
    ref = make_net((30, 8, 10), "relu", "softmax-xent", "float64")
    generic_steps(ref, SGD(ref.params), x, y, np.arange(8, 12), LR)
    stepper.run(None, y, np.arange(12), 8, 99, LR, 0.0)
    assert_close(net.params, ref.params, "float64")


def test_python_source_equals_compiled_numba():
    """The compiled kernel and its source run as Python give the same float64 parameters."""
    pytest.importorskip("numba")
    x = sparse_inputs(20, 30, "float64", seed=8)
    y = np.random.default_rng(9).integers(0, 10, 20).astype(np.intp)
    nets = {b: make_net((30, 9, 7, 10), "sigmoid", "sigmoid-mse", "float64") for b in ("numba", "python")}
    for backend, net in nets.items():
        opt = SGD(net.params, 0.9)
        kernels.local_steps(net, opt.velocity, x, y, np.arange(20), 0, 20, LR, 0.9, backend=backend)
    np.testing.assert_allclose(nets["numba"].params, nets["python"].params, rtol=1e-13, atol=1e-15)


def test_sparse_rows_lists_every_nonzero_entry():
    """indptr/columns hold exactly each row's non-zero columns, in order, also across chunk borders."""
    x = sparse_inputs(23, 30, "float32", seed=11)
    indptr, columns = kernels.sparse_rows(x, chunk=5)
    assert indptr[0] == 0 and len(indptr) == 24 and columns.dtype == np.uint16
    for i, row in enumerate(x):
        np.testing.assert_array_equal(columns[indptr[i] : indptr[i + 1]], np.flatnonzero(row))


def test_resolve_and_errors():
    """auto picks numba when importable; unknown names, missing velocity and misfit inputs are refused."""
    assert kernels.resolve("auto") == ("numba" if kernels.numba_available() else "numpy")
    assert kernels.resolve("numpy") == "numpy"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.resolve("cuda")
    net = make_net((30, 8, 10), "relu", "softmax-xent", "float32")
    x = sparse_inputs(4, 30, "float32")
    with pytest.raises(ValueError, match="momentum needs a velocity"):
        kernels.local_steps(net, None, x, np.zeros(4, np.intp), np.arange(4), 0, 4, LR, 0.9, backend="numpy")
    with pytest.raises(ValueError, match="do not fit"):
        kernels.SampleStepper(net, x.astype(np.float64), "numpy")


def test_auto_falls_back_to_numpy_when_numba_cannot_load(monkeypatch):
    """A numba that is installed but fails to import makes "auto" use numpy; asking for numba then fails."""

    def broken():
        raise ImportError("numba is broken here")

    monkeypatch.setattr(kernels, "numba_available", lambda: True)
    monkeypatch.setattr(kernels, "_compiled", broken)
    net = make_net((30, 8, 10), "relu", "softmax-xent", "float32")
    x = sparse_inputs(4, 30, "float32")
    assert kernels.SampleStepper(net, x, "auto").backend == "numpy"
    with pytest.raises(ImportError):
        kernels.SampleStepper(net, x, "numba")


def test_precompile_fills_the_cache():
    """precompile() compiles both dtypes; a numba stepper then builds."""
    pytest.importorskip("numba")
    kernels.precompile()
    assert kernels.SampleStepper(make_net((30, 8, 10), "relu", "softmax-xent", "float64"), sparse_inputs(4, 30, "float64"), "numba").backend == "numba"


def test_importing_the_package_does_not_import_numba():
    """numba stays optional and costs nothing until the numba backend runs."""
    code = (
        "import sys, pnn_mpi, pnn_mpi.nn.kernels, pnn_mpi.training.train, pnn_mpi.commands.bench, pnn_mpi.commands.file_commands, pnn_mpi.commands.cli\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# --- In the trainer: batch 1 through a kernel takes the generic loop's steps -------------------


class RecordingWorld(SerialWorld):
    """One rank that records every collective's kind and buffer, in order."""

    def __init__(self):
        self.calls = []

    def sum_(self, buf):
        self.calls.append(("sum", buf.copy()))

    def average_(self, buf):
        self.calls.append(("average", buf.copy()))


def small_rank_data(n: int = 45) -> RankData:
    rng = np.random.default_rng(21)
    images, labels = learnable_images(n, rng)
    test_images, test_labels = learnable_images(20, rng)
    return RankData(
        directory=Path("."),
        train_total=n,
        slice_sizes=[n],
        start=0,
        x=to_inputs(images.reshape(n, -1), "float64"),
        y=labels.astype(np.intp),
        test_images=test_images.reshape(20, -1),
        test_labels=test_labels.astype(np.intp),
        test_total=20,
        image_shape=images.shape[1:],
        classes=10,
        load_seconds=0.0,
    )


needs_kernel_option = pytest.mark.skipif("kernel" not in TrainConfig.__dataclass_fields__, reason="the trainer has no kernel option yet")


@needs_kernel_option
@pytest.mark.parametrize("sync", ["end", "epoch", "steps:7", "steps:45", "steps:100"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_trainer_batch1_kernel_equals_generic_loop(backend, momentum, sync, monkeypatch):
    """train() with batch 1 through a kernel reaches the generic loop's parameters and epoch losses,
    and makes the same collectives in the same order with the same buffers: syncs of steps:K
    (also across epoch ends) and the stop/divergence checks (here every 5 steps) fall on the same steps."""
    numba_or_skip(backend)
    monkeypatch.setattr(train_module, "check_interval", lambda batch: 5)
    data = small_rank_data()
    runs = {}
    for kernel in (backend, "generic"):
        world = RecordingWorld()
        cfg = TrainConfig(hidden=(12,), epochs=3, batch_size=1, lr=0.1, momentum=momentum, dtype="float64", eval_every=0, sync=sync, kernel=kernel)
        runs[kernel] = (train_module.train(cfg, world, data, log=lambda *_: None), world.calls)
    (fast, fast_calls), (plain, plain_calls) = runs[backend], runs["generic"]
    np.testing.assert_allclose(fast.net.params, plain.net.params, rtol=1e-10, atol=1e-12)
    assert [e.train_loss for e in fast.epochs] == pytest.approx([e.train_loss for e in plain.epochs], rel=1e-10)
    assert [(kind, len(buf)) for kind, buf in fast_calls] == [(kind, len(buf)) for kind, buf in plain_calls]
    for (_, ours), (_, theirs) in zip(fast_calls, plain_calls):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
