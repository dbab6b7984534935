"""The fused mini-batch step (nn/fused.py) against the numpy step, and in the trainer.

The reference is the numpy step: ``Network.forward``/``backward`` then
``sgd_step``. The fused step rounds differently, so it must agree to a tight
tolerance, never bit for bit; the same path and seed must give the same bits.
The "python" backend runs the kernels' source uncompiled, so their logic is
checked where numba is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, clean_env, learnable_images, rank_data, run_pnn, write_dataset
from pnn_mpi.nn import fused
from pnn_mpi.nn.activations import ACTIVATIONS
from pnn_mpi.nn.losses import OUTPUTS
from pnn_mpi.nn.network import Network
from pnn_mpi.nn.optim import sgd_step
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.training import train as train_module
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.model_io import load_model
from pnn_mpi.training.train import Hooks, LoopState, Run

BATCHES = (8, 8, 5)  # an uneven last batch
LR = 0.2


def numba_or_skip(backend: str) -> None:
    if backend == "numba":
        pytest.importorskip("numba")


def make_net(sizes, activation, output, dtype) -> Network:
    net = Network(sizes, activation, output, dtype)
    net.initialize("xavier-normal", 0.1, 7)
    return net


def batches(width: int, dtype):
    """Pixel-like batches (most entries zero) with labels, of the sizes BATCHES."""
    rng = np.random.default_rng(3)
    for b in BATCHES:
        x = ((rng.random((b, width)) < 0.3) * rng.random((b, width))).astype(dtype)
        yield x, rng.integers(0, 10, b).astype(np.intp)


def assert_close(actual, expected, dtype) -> None:
    """float64 to rounding; float32 within 1e-5 of the largest magnitude."""
    scale = float(np.abs(expected).max())
    rtol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def numpy_steps(net: Network, velocity, momentum: float) -> list[float]:
    ws, losses = net.workspace(max(BATCHES)), []
    for x, y in batches(net.sizes[0], net.dtype):
        net.forward(x, ws)
        losses.append(net.backward(x, y, ws, 1.0 / len(x)))
        sgd_step(net.params, net.grads, LR, velocity, momentum)
    return losses


def fused_steps(net: Network, velocity, momentum: float, backend: str) -> list[float]:
    ws, losses, step = net.workspace(max(BATCHES)), [], fused.FusedStep(net, backend)
    for x, y in batches(net.sizes[0], net.dtype):
        losses.append(step.gradients(x, y, ws, 1.0 / len(x)))
        step.update(net.params, net.grads, velocity, LR, momentum)
    return losses


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hidden", [(9,), (9, 7)], ids=["1-hidden", "2-hidden"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("backend", ["numba", "python"])
def test_fused_steps_match_the_numpy_step(backend, activation, output, momentum, hidden, dtype):
    """Three mini-batch steps (the last one short): the same parameters, velocity and losses to rounding."""
    numba_or_skip(backend)
    sizes = (30, *hidden, 10)
    ref = make_net(sizes, activation, output, dtype)
    ref_velocity = np.zeros_like(ref.params) if momentum else None
    ref_losses = numpy_steps(ref, ref_velocity, momentum)

    net = make_net(sizes, activation, output, dtype)
    velocity = np.zeros_like(net.params) if momentum else None
    losses = fused_steps(net, velocity, momentum, backend)

    assert_close(net.params, ref.params, dtype)
    if momentum:
        assert_close(velocity, ref_velocity, dtype)
    assert losses == pytest.approx(ref_losses, rel=1e-12 if dtype == "float64" else 1e-5)
    assert not np.array_equal(net.params, make_net(sizes, activation, output, dtype).params)


def slice_of_batches(width: int, dtype):
    """The batches of ``batches`` as one slice, with the order that takes them one after another."""
    xs, ys = zip(*batches(width, dtype))
    return np.concatenate(xs), np.concatenate(ys), np.arange(sum(BATCHES))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hidden", [(), (9,), (9, 7)], ids=["0-hidden", "1-hidden", "2-hidden"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("backend", ["numba", "python"])
def test_whole_steps_match_the_numpy_step(backend, activation, output, momentum, hidden, dtype):
    """The whole step in one call (gather, products through BLAS's gemm with the update folded in):
    the numpy step's parameters, velocity and losses to rounding, one call per batch (``step``) and
    all batches in one call (``steps``), which agree bit for bit."""
    numba_or_skip(backend)
    sizes = (30, *hidden, 10)
    ref = make_net(sizes, activation, output, dtype)
    ref_velocity = np.zeros_like(ref.params) if momentum else None
    ref_losses = numpy_steps(ref, ref_velocity, momentum)
    x, y, order = slice_of_batches(30, dtype)
    ends = np.cumsum((0, *BATCHES))
    results = []
    for one_call in (False, True):
        net = make_net(sizes, activation, output, dtype)
        if not fused.supports(net):
            pytest.skip("no fused kernels for this network")
        step, ws = fused.FusedStep(net, backend), net.workspace(max(BATCHES))
        assert step.whole
        velocity = np.zeros_like(net.params) if momentum else None
        if one_call:
            losses = [step.steps(x, y, order, 0, len(BATCHES), BATCHES[0], ws, velocity, LR, momentum)]
        else:
            losses = [step.step(x, y, order[a:b], ws, 1.0 / (b - a), velocity, LR, momentum) for a, b in zip(ends[:-1], ends[1:])]
        assert_close(net.params, ref.params, dtype)
        if momentum:
            assert_close(velocity, ref_velocity, dtype)
        results.append((net.params.tobytes(), losses))
    assert sum(results[0][1]) == results[1][1][0]
    assert results[0][0] == results[1][0]
    assert results[0][1] == pytest.approx(ref_losses, rel=1e-12 if dtype == "float64" else 1e-5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("backend", ["numba", "python"])
def test_whole_step_without_update_leaves_the_gradient(backend, activation, dtype):
    """``step(update=False)`` (the grad schedule's step): the gradient ``backward`` leaves, scaled, and the
    parameters untouched."""
    numba_or_skip(backend)
    ref, net = (make_net((30, 9, 7, 10), activation, "softmax-xent", dtype) for _ in range(2))
    if not fused.supports(net):
        pytest.skip("no fused kernels for this network")
    before = net.params.copy()
    x, y, order = slice_of_batches(30, dtype)
    picked = order[3:11]
    ws = ref.workspace(8)
    ref.forward(x[picked], ws)
    expected = ref.backward(x[picked], y[picked], ws, 0.25)
    loss = fused.FusedStep(net, backend).step(x, y, picked, net.workspace(8), 0.25, update=False)
    assert loss == pytest.approx(expected, rel=1e-12 if dtype == "float64" else 1e-5)
    assert_close(net.grads, ref.grads, dtype)
    assert net.params.tobytes() == before.tobytes()


def test_a_batch_larger_than_the_workspace_is_refused():
    """The compiled step writes into the workspace: a batch it cannot hold is a ValueError, not a write past it."""
    net = make_net((30, 9, 10), "relu", "softmax-xent", "float64")
    x, y, order = slice_of_batches(30, "float64")
    step = fused.FusedStep(net, "python")
    with pytest.raises(ValueError, match="do not fit a workspace for 4"):
        step.step(x, y, order[:5], net.workspace(4), 0.2)
    with pytest.raises(ValueError, match="do not fit a workspace for 4"):
        step.steps(x, y, order, 0, 2, 5, net.workspace(4), None, LR, 0.0)


def test_without_numpys_blas_the_step_calls_numpy_between_passes(monkeypatch):
    """Where numpy's BLAS is not one the whole step can call, the numba step is the passes between
    numpy's products (``whole`` false), and the trainer still matches the numpy step to rounding."""
    pytest.importorskip("numba")
    from pnn_mpi.nn import blas

    monkeypatch.setattr(blas, "numpy_gemm", lambda: None)
    net = make_net((30, 8, 10), "relu", "softmax-xent", "float32")
    step = fused.FusedStep(net)
    assert not step.whole
    with pytest.raises(RuntimeError, match="no gemm"):
        step.step(*slice_of_batches(30, "float32")[:2], np.arange(4), net.workspace(4), 0.25)
    data = trainer_data()
    fast, plain = trained("numba", data, momentum=0.9), trained("numpy", data, momentum=0.9)
    assert_close(fast.net.params, plain.net.params, "float32")
    assert fast.net.params.tobytes() != plain.net.params.tobytes()


def test_python_source_equals_compiled_numba():
    """The compiled kernels and their source run as Python give the same float64 parameters."""
    pytest.importorskip("numba")
    nets = {b: make_net((30, 9, 7, 10), "sigmoid", "sigmoid-mse", "float64") for b in ("numba", "python")}
    for backend, net in nets.items():
        fused_steps(net, np.zeros_like(net.params), 0.9, backend)
    np.testing.assert_allclose(nets["numba"].params, nets["python"].params, rtol=1e-13, atol=1e-15)


def test_precompile_fills_the_cache():
    """precompile() compiles the fused kernels for both dtypes (and the batch-1 kernels); their steps then build."""
    pytest.importorskip("numba")
    from pnn_mpi.nn import blas

    fused.precompile()
    whole = ("_k_train_step", "_k_train_steps")  # need numpy's gemm (nn/blas.py)
    names = [n for n in fused._FUNCTIONS if blas.numpy_gemm() or n not in whole]
    assert all(fused._compiled()[name].signatures for name in names)  # compiled here, for the cache
    assert fused.FusedStep(make_net((30, 8, 10), "relu", "softmax-xent", "float64")).backend == "numba"


def test_unsupported_network_is_refused():
    """An activation without a fused kernel: supports() says so and the step refuses it."""
    net = make_net((30, 8, 10), "relu", "softmax-xent", "float32")
    assert fused.supports(net)
    net.activation = ACTIVATIONS["relu"].__class__("new", ACTIVATIONS["relu"].forward, ACTIVATIONS["relu"].grad_from_output, 99)
    assert not fused.supports(net)
    with pytest.raises(ValueError, match="no fused kernels"):
        fused.FusedStep(net, "python")


# --- In the trainer: --kernel numba takes the fused step for mini-batches -------------------------


def trainer_data(n: int = 45):
    rng = np.random.default_rng(21)
    images, labels = learnable_images(n, rng)
    test_images, test_labels = learnable_images(20, rng)
    return rank_data(images, labels, test_images, test_labels, dtype="float32")


def trained(kernel: str, data, **settings):
    cfg = TrainConfig(**{"hidden": (12,), "epochs": 3, "batch_size": 7, "lr": 0.1, "dtype": "float32", "eval_every": 0, "kernel": kernel, **settings})
    return train_module.train(cfg, SerialWorld(), data, log=lambda *_: None)


@pytest.mark.parametrize(
    "batch, sync, kernel, chosen",
    [
        (7, "local", "numba", "numba"),
        (7, "grad", "numba", "numba"),
        (1, "grad", "numba", "numba"),
        (1, "epoch", "numba", None),
        (7, "local", "auto", None),
        (7, "local", "numpy", None),
    ],
)
def test_which_step_the_trainer_takes(batch, sync, kernel, chosen):
    """The fused step runs where --kernel numba meets a step without a batch-1 kernel; auto keeps numpy for mini-batches."""
    if kernel == "numba":
        pytest.importorskip("numba")
    data = trainer_data()
    cfg = TrainConfig(hidden=(12,), batch_size=batch, lr=0.1, dtype="float32", sync=sync, kernel=kernel)
    state = LoopState.start(cfg.resolved(1), 0, data)
    run = Run.prepare(cfg, SerialWorld(), data, state, Hooks(), log=lambda *_: None)
    assert (run.fused_step.backend if run.fused_step else None) == chosen


@pytest.mark.parametrize("sync", ["local", "grad", "steps:4", "end"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_trainer_with_numba_matches_the_numpy_step(sync, momentum, activation):
    """train() with --kernel numba: the numpy run's parameters and epoch losses to rounding, 45 samples in batches of 7."""
    pytest.importorskip("numba")
    data = trainer_data()
    fast, plain = (trained(k, data, sync=sync, momentum=momentum, activation=activation) for k in ("numba", "numpy"))
    assert_close(fast.net.params, plain.net.params, "float32")
    assert [e.train_loss for e in fast.epochs] == pytest.approx([e.train_loss for e in plain.epochs], rel=1e-5)
    assert fast.net.params.tobytes() != plain.net.params.tobytes()  # the fused step ran: its rounding differs


def test_trainer_falls_back_to_numpy_for_an_activation_without_kernels(monkeypatch):
    """An activation the fused step has no kernel for takes the numpy step: the numpy run's bits."""
    pytest.importorskip("numba")
    monkeypatch.setattr(fused, "FUSED_ACTIVATIONS", frozenset())
    data = trainer_data()
    assert trained("numba", data).net.params.tobytes() == trained("numpy", data).net.params.tobytes()


def test_numba_that_cannot_load_is_one_error_line(monkeypatch):
    """numba found but failing to import: --kernel numba is refused as a UserError (one line), not a traceback."""
    from pnn_mpi.common.errors import UserError

    def broken():
        raise ImportError("numba is broken here")

    monkeypatch.setattr(fused, "_compiled", broken)
    with pytest.raises(UserError, match="--kernel numba: numba cannot be loaded here"):
        trained("numba", trainer_data())


# --- The real command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=600, test=100, seed=1)


def tiny_args(folder, out, *more):
    return ["--dataset", "custom", "--data-dir", str(folder), "--hidden", "16", "--epochs", "2", "--out", str(out), *more]


def params(out: Path) -> np.ndarray:
    return load_model(out / "model.npz")[0].params


@pytest.mark.parametrize("sync", ["local", "grad"])
def test_numba_runs_are_bit_identical_and_agree_with_numpy(tiny, tmp_path, sync):
    """Two ranks, --kernel numba twice with one seed: the same model bytes; --kernel numpy: the same model to rounding."""
    pytest.importorskip("numba")
    for name, kernel in (("a", "numba"), ("b", "numba"), ("c", "numpy")):
        proc = run_pnn(*tiny_args(tiny, tmp_path / name, "--kernel", kernel, "--sync", sync, "--seed", "5"), ranks=2)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a" / "model.npz").read_bytes() == (tmp_path / "b" / "model.npz").read_bytes()
    assert_close(params(tmp_path / "a"), params(tmp_path / "c"), "float32")
    assert not np.array_equal(params(tmp_path / "a"), params(tmp_path / "c"))  # the fused step ran: its rounding differs


HIDE_NUMBA = "import sys, runpy; sys.modules['numba'] = None; sys.argv[0] = 'pnn_mpi'; runpy.run_module('pnn_mpi', run_name='__main__')"


def test_without_numba_auto_trains_the_same_model_and_numba_is_refused(tiny, tmp_path):
    """numba absent: the default kernel trains mini-batches to the same bits as with numba installed;
    --kernel numba is one error line and exit 2."""
    env = clean_env()
    hidden = subprocess.run(
        [sys.executable, "-c", HIDE_NUMBA, *tiny_args(tiny, tmp_path / "hidden")], capture_output=True, text=True, env=env, cwd=REPO, timeout=240
    )
    assert hidden.returncode == 0, hidden.stderr
    present = run_pnn(*tiny_args(tiny, tmp_path / "present"))
    assert present.returncode == 0, present.stderr
    assert params(tmp_path / "hidden").tobytes() == params(tmp_path / "present").tobytes()
    refused = subprocess.run(
        [sys.executable, "-c", HIDE_NUMBA, *tiny_args(tiny, tmp_path / "refused", "--kernel", "numba")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=240,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == ["pnn_mpi: error: --kernel numba: numba is not installed (pip install 'pnn_mpi[fast]')"]


def test_numba_that_fails_to_import_stops_every_rank_with_one_line(tiny, tmp_path):
    """A numba package that raises on import, two ranks, --kernel numba: one error line per rank, no traceback, exit 2."""
    fake = tmp_path / "site" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('this numba is broken')\n")
    env = clean_env()
    env["PYTHONPATH"] = f"{fake.parent}:{env.get('PYTHONPATH', '')}"
    proc = run_pnn(*tiny_args(tiny, tmp_path / "out", "--kernel", "numba"), ranks=2, env=env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi: error:")]
    assert errors and set(errors) == {"pnn_mpi: error: --kernel numba: numba cannot be loaded here (this numba is broken)"}
