"""The network: backprop against finite differences, parameter views, initialisation, workspaces, copies,
and a training step that allocates nothing."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pnn_mpi.nn.activations import ACTIVATIONS, LEAKY_SLOPE
from pnn_mpi.nn.initializers import INITIALIZERS
from pnn_mpi.nn.losses import OUTPUTS
from pnn_mpi.nn.network import Network, layer_views, parameter_count
from pnn_mpi.nn.optim import SGD

SIZES = (5, 4, 3, 10)


def make_net(activation="tanh", output="softmax-xent", dtype="float64", sizes=SIZES, seed=0, bias=0.1) -> Network:
    net = Network(sizes, activation, output, dtype)
    # Xavier keeps sigmoid/tanh units out of saturation; a non-zero bias moves relu units off 0.
    net.initialize("xavier-normal", bias, seed)
    return net


def make_batch(net: Network, rows: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(rows, net.sizes[0])).astype(net.dtype)
    labels = rng.integers(0, net.sizes[-1], size=rows)
    return x, labels


def reference_forward(net: Network, x: np.ndarray) -> np.ndarray:
    """A straightforward forward pass written out with textbook formulas, independent of the workspace."""
    textbook = {
        "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
        "tanh": np.tanh,
        "relu": lambda z: np.maximum(z, 0.0),
        "leaky-relu": lambda z: np.where(z > 0, z, LEAKY_SLOPE * z),
    }
    a = np.asarray(x, dtype=np.float64)
    n = len(net.sizes) - 1
    at = 0
    for layer, (n_in, n_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        w = net.params[at : at + n_in * n_out].astype(np.float64).reshape(n_in, n_out)
        at += n_in * n_out
        b = net.params[at : at + n_out].astype(np.float64)
        at += n_out
        z = a @ w + b
        if layer < n - 1:
            a = textbook[net.activation_name](z)
        elif net.output_name == "softmax-xent":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
        else:
            a = 1.0 / (1.0 + np.exp(-z))
    return a


def scaled_loss(net: Network, x, labels, scale: float) -> float:
    ws = net.workspace(len(x))
    return scale * net.output.loss_sum(net.forward(x, ws), labels)


@pytest.mark.parametrize("capacity_extra", [0, 3], ids=["exact-workspace", "larger-workspace"])
@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_backward_matches_finite_differences(activation, output, rows, capacity_extra):
    """Every entry of ``grads`` equals the central difference of scale * loss_sum(forward(x))
    with respect to that parameter (float64, two hidden layers, scale = 1/batch)."""
    net = make_net(activation, output, seed=rows)
    x, labels = make_batch(net, rows, seed=100 + rows)
    scale = 1.0 / rows
    ws = net.workspace(rows + capacity_extra)
    net.forward(x, ws)
    # Central differences are only valid away from the relu kink: make sure no hidden unit sits on it.
    for z in ws.z[:-1]:
        assert np.abs(z[:rows]).min() > 1e-4
    net.grads[...] = np.nan  # backward must overwrite every entry
    loss = net.backward(x, labels, ws, scale)
    analytic = net.grads.copy()
    assert loss == pytest.approx(net.output.loss_sum(reference_forward(net, x), labels), rel=1e-12)

    h = 1e-5
    numeric = np.zeros_like(net.params)
    for i in range(net.params.size):
        keep = net.params[i]
        net.params[i] = keep + h
        up = scaled_loss(net, x, labels, scale)
        net.params[i] = keep - h
        down = scaled_loss(net, x, labels, scale)
        net.params[i] = keep
        numeric[i] = (up - down) / (2 * h)
    assert np.all(np.isfinite(analytic))
    rel = np.linalg.norm(analytic - numeric) / max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1e-30)
    assert rel < 1e-6, f"relative error {rel:.2e}"
    # Element-wise as well, so a small wrong block cannot hide in the norm of a large correct one.
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_backward_without_hidden_layer_matches_finite_differences():
    """A linear model (no hidden layer) has the right gradient too."""
    net = make_net("relu", "softmax-xent", sizes=(6, 4))
    x, labels = make_batch(net, 5, seed=9)
    ws = net.workspace(5)
    net.forward(x, ws)
    net.backward(x, labels, ws, 0.2)
    analytic = net.grads.copy()
    h = 1e-5
    numeric = np.zeros_like(net.params)
    for i in range(net.params.size):
        keep = net.params[i]
        net.params[i] = keep + h
        up = scaled_loss(net, x, labels, 0.2)
        net.params[i] = keep - h
        down = scaled_loss(net, x, labels, 0.2)
        net.params[i] = keep
        numeric[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_batch_gradient_is_sum_of_single_sample_gradients():
    """With scale 1, the batch gradient (matmul path) equals the sum of per-sample gradients (outer-product path)."""
    net = make_net("sigmoid", "sigmoid-mse")
    x, labels = make_batch(net, 6, seed=5)
    ws = net.workspace(6)
    net.forward(x, ws)
    total_loss = net.backward(x, labels, ws, 1.0)
    batch_grads = net.grads.copy()
    summed, losses = np.zeros_like(batch_grads), 0.0
    for i in range(6):
        net.forward(x[i : i + 1], ws)
        losses += net.backward(x[i : i + 1], labels[i : i + 1], ws, 1.0)
        summed += net.grads
    np.testing.assert_allclose(batch_grads, summed, rtol=1e-12, atol=1e-15)
    assert total_loss == pytest.approx(losses, rel=1e-12)


def test_backward_does_not_accumulate_and_leaves_params_and_input():
    """Two backward calls give the same grads (overwritten, not added), and params and x are untouched."""
    net = make_net("leaky-relu")
    x, labels = make_batch(net, 4, seed=1)
    params, x0 = net.params.copy(), x.copy()
    ws = net.workspace(4)
    net.forward(x, ws)
    net.backward(x, labels, ws, 0.25)
    first = net.grads.copy()
    net.forward(x, ws)
    net.backward(x, labels, ws, 0.25)
    np.testing.assert_array_equal(net.grads, first)
    np.testing.assert_array_equal(net.params, params)
    np.testing.assert_array_equal(x, x0)


def test_float32_gradients_close_to_float64():
    """A float32 network with the same seed gives outputs and gradients close to the float64 one."""
    nets = {dt: make_net("tanh", "softmax-xent", dtype=dt) for dt in ("float32", "float64")}
    x, labels = make_batch(nets["float64"], 7, seed=3)
    grads, outs = {}, {}
    for dt, net in nets.items():
        ws = net.workspace(7)
        xx = x.astype(dt)
        outs[dt] = net.forward(xx, ws).copy()
        net.backward(xx, labels, ws, 1 / 7)
        grads[dt] = net.grads.copy()
        assert outs[dt].dtype == np.dtype(dt) and grads[dt].dtype == np.dtype(dt)
    np.testing.assert_allclose(outs["float32"], outs["float64"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["float32"], grads["float64"], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_forward_matches_reference(activation, output):
    """forward equals a straightforward textbook implementation of the same MLP."""
    net = make_net(activation, output, seed=4)
    x, _ = make_batch(net, 9, seed=8)
    np.testing.assert_allclose(net.forward(x, net.workspace(9)), reference_forward(net, x), rtol=1e-12, atol=1e-15)


def test_smaller_batch_than_workspace_capacity():
    """forward and backward of 3 rows in a capacity-8 workspace equal those in a capacity-3 workspace,
    even when the big workspace holds leftovers of an earlier, larger batch."""
    net = make_net("relu", "softmax-xent")
    x8, labels8 = make_batch(net, 8, seed=12)
    x, labels = x8[:3].copy(), labels8[:3].copy()
    big, small = net.workspace(8), net.workspace(3)
    net.forward(x8 * 5.0, big)
    net.backward(x8 * 5.0, labels8, big, 1.0)  # fill the big workspace with unrelated values

    out_big = net.forward(x, big).copy()
    loss_big = net.backward(x, labels, big, 1 / 3)
    grads_big = net.grads.copy()
    out_small = net.forward(x, small).copy()
    loss_small = net.backward(x, labels, small, 1 / 3)

    assert out_big.shape == (3, SIZES[-1])
    np.testing.assert_array_equal(out_big, out_small)
    assert loss_big == loss_small
    np.testing.assert_array_equal(grads_big, net.grads)


def test_workspace_shapes_and_minimum_capacity():
    """A workspace holds capacity rows per layer, in the network's dtype; capacity is at least 1."""
    net = Network(SIZES, dtype="float32")
    ws = net.workspace(6)
    assert ws.capacity == 6 and ws.inputs.shape == (6, SIZES[0]) and ws.labels.shape == (6,)
    for arrays in (ws.z, ws.a, ws.delta):
        assert [a.shape for a in arrays] == [(6, n) for n in SIZES[1:]]
        assert all(a.dtype == np.float32 for a in arrays)
    assert net.workspace(0).capacity == 1


def test_parameter_count():
    """Weights plus biases: 784*128 + 128 + 128*10 + 10 = 101770; equals the flat array's length."""
    assert parameter_count((784, 128, 10)) == 101770
    assert parameter_count((784, 10)) == 7850
    assert parameter_count(SIZES) == 5 * 4 + 4 + 4 * 3 + 3 + 3 * 10 + 10
    assert Network((784, 128, 10)).params.size == 101770


@pytest.mark.parametrize("which", ["params", "grads"])
def test_layers_are_views_into_flat_array(which):
    """weights/biases (and grad_weights/grad_biases) are views into params (grads), laid out
    layer by layer as W1 (row-major), b1, W2, b2...; writes go both ways."""
    net = make_net()
    flat = getattr(net, which)
    ws, bs = (net.weights, net.biases) if which == "params" else (net.grad_weights, net.grad_biases)
    flat[...] = np.arange(flat.size)
    expected = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in zip(ws, bs)])
    np.testing.assert_array_equal(expected, np.arange(flat.size))
    for w, b in zip(ws, bs):
        assert np.shares_memory(w, flat) and np.shares_memory(b, flat)
    assert [w.shape for w in ws] == list(zip(SIZES[:-1], SIZES[1:]))
    assert [b.shape for b in bs] == [(n,) for n in SIZES[1:]]

    ws[1][2, 1] = -7.0
    assert flat[5 * 4 + 4 + 2 * 3 + 1] == -7.0
    bs[2][9] = -8.0
    assert flat[-1] == -8.0
    flat[0] = -9.0
    assert ws[0][0, 0] == -9.0
    assert not np.shares_memory(net.params, net.grads)


def test_layer_views_split_any_flat_array():
    """layer_views cuts an arbitrary parameter-shaped array into views covering it exactly once."""
    flat = np.zeros(parameter_count(SIZES))
    weights, biases = layer_views(flat, SIZES)
    for w, b in zip(weights, biases):
        w += 1
        b += 1
    np.testing.assert_array_equal(flat, 1.0)


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_initialize_is_reproducible(init):
    """The same seed gives identical params; another seed gives different weights; every bias is set."""
    a, b, c = (Network(SIZES, dtype="float64") for _ in range(3))
    a.initialize(init, 0.25, 42)
    b.initialize(init, 0.25, 42)
    c.initialize(init, 0.25, 43)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.weights[0], c.weights[0])
    for bias in a.biases:
        np.testing.assert_array_equal(bias, 0.25)
    for w in a.weights:
        assert np.all(w != 0) and np.all(np.isfinite(w))
    # Each layer draws its own values: no two layers repeat the same stream.
    assert not np.array_equal(a.weights[1].ravel()[:3], a.weights[0].ravel()[:3])


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_float32_initialization_is_float64_cast(init):
    """float32 params from a seed equal the float64 params from that seed, cast to float32."""
    n32, n64 = Network(SIZES, dtype="float32"), Network(SIZES, dtype="float64")
    n32.initialize(init, 0.1, 7)
    n64.initialize(init, 0.1, 7)
    assert n32.params.dtype == np.float32 and n64.params.dtype == np.float64
    np.testing.assert_array_equal(n32.params, n64.params.astype(np.float32))


def test_copy_is_independent():
    """copy() gives an equal network whose params, grads and views share no memory with the original."""
    net = make_net("sigmoid", "sigmoid-mse", dtype="float32")
    twin = net.copy()
    assert (twin.sizes, twin.activation_name, twin.output_name, twin.dtype) == (net.sizes, "sigmoid", "sigmoid-mse", np.float32)
    np.testing.assert_array_equal(twin.params, net.params)
    assert not np.shares_memory(twin.params, net.params)
    assert not np.shares_memory(twin.grads, net.grads)
    assert np.shares_memory(twin.weights[0], twin.params)
    before = net.params.copy()
    twin.weights[0][...] = 3.0
    twin.params[-1] = 4.0
    np.testing.assert_array_equal(net.params, before)
    net.params[0] = -1.0
    assert twin.params[0] == 3.0
    # The copy computes the same function as the original did.
    x, _ = make_batch(net, 2, seed=0)
    net.params[...] = before
    twin.params[...] = before
    np.testing.assert_array_equal(net.forward(x, net.workspace(2)), twin.forward(x, twin.workspace(2)))


def test_depth_and_sizes():
    """sizes are stored as a tuple of ints and depth counts weight layers."""
    net = Network([np.int64(5), 4, 3, 10])
    assert net.sizes == SIZES and all(type(s) is int for s in net.sizes)
    assert net.depth == 3
    assert net.params.dtype == np.float32  # the default dtype


# --- The training step allocates nothing -------------------------------------------------------
#
# numpy reports its allocations to tracemalloc. What a step may still allocate is
# per-call bookkeeping that dies within the call: array views made by slicing,
# 0-d arrays for Python scalars, the iterator state numpy makes for 1-element
# arrays. Measured at 1.2-2.5 KB whatever the batch and widths (Python 3.11,
# numpy 2.4), so the bound is 4 KiB. A temporary sized by the data either exceeds
# that in these networks or, if smaller, shows as a difference between the narrow
# and the wide configuration below (a float32 per row: 248 bytes; per hidden unit,
# input or class: at least 120 bytes), which must stay within 64 bytes.

STEP_BOUND = 4096
NARROW, WIDE = ((16, 24, 12, 10), 2), ((96, 120, 60, 40), 64)  # (sizes, batch)


def traced_step_memory(step, warmup: int = 20, steps: int = 200) -> tuple[int, int, int]:
    """(growth over the first half, growth over the second half, peak above the start) of ``steps`` calls."""
    tracemalloc.start()
    try:
        for _ in range(warmup):  # lazy first-use caches, also those made only while tracing
            step()
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(steps // 2):
            step()
        middle, _ = tracemalloc.get_traced_memory()
        for _ in range(steps - steps // 2):
            step()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return middle - start, end - middle, peak - start


def make_step(activation, output, sizes, batch, momentum, via_train=True):
    """One SGD step per call on the next batch of a small shuffled dataset: train.gradients + SGD.step,
    or (via_train=False) forward/backward on ready-made batches + SGD.step."""
    from pnn_mpi.training.train import gradients

    net = make_net(activation, output, dtype="float32", sizes=sizes)
    opt, ws = SGD(net.params, momentum), net.workspace(batch)
    rng = np.random.default_rng(0)
    n = 4 * batch
    x = rng.random((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n).astype(np.intp)
    order = rng.permutation(n)
    batches = [(x[order[s * batch : (s + 1) * batch]], y[order[s * batch : (s + 1) * batch]]) for s in range(4)]
    at = [0]

    def step() -> None:
        s = at[0] = (at[0] + 1) % 4
        if via_train:
            gradients(net, ws, x, y, order[s * batch : (s + 1) * batch], 1.0 / batch)
        else:
            xb, yb = batches[s]
            net.forward(xb, ws)
            net.backward(xb, yb, ws, 1.0 / batch)
        opt.step(net.params, net.grads, 0.01)

    return step


def check_no_allocation(activation, output, momentum, via_train) -> None:
    peaks = []
    for sizes, batch in (NARROW, WIDE):
        first, second, peak = traced_step_memory(make_step(activation, output, sizes, batch, momentum, via_train))
        assert second == first and abs(second) <= 256, f"traced memory grows: {first} then {second} bytes per 100 steps"
        assert peak <= STEP_BOUND, f"a step allocated {peak} bytes at its peak (sizes {sizes}, batch {batch})"
        peaks.append(peak)
    assert abs(peaks[1] - peaks[0]) <= 64, f"peak depends on batch or widths: {peaks} bytes (narrow, wide)"


@pytest.mark.parametrize("output", sorted(OUTPUTS))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_gradients_and_sgd_step_allocate_nothing(activation, output):
    """train.gradients + SGD.step (momentum 0.9), 200 steps under tracemalloc: no growth, and no
    allocation at the peak beyond per-call bookkeeping that is independent of batch and widths."""
    check_no_allocation(activation, output, 0.9, via_train=True)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_network_forward_backward_and_step_allocate_nothing(output, momentum):
    """The same for forward/backward on ready batches (no gather), and for batch 1."""
    check_no_allocation("relu", output, momentum, via_train=False)
    first, second, peak = traced_step_memory(make_step("tanh", output, NARROW[0], 1, momentum, via_train=False))
    assert second == first and peak <= STEP_BOUND, (first, second, peak)


def test_workspace_layers_are_views_of_one_buffer_per_kind():
    """Each layer's outputs and errors are (capacity, width) blocks of ``a_flat``/``delta_flat``, layer
    after layer: what the compiled step (fused.py) indexes by capacity times the widths below."""
    net = Network((6, 5, 4, 3), dtype="float64")
    ws = net.workspace(7)
    for flat, blocks in ((ws.a_flat, ws.a), (ws.delta_flat, ws.delta)):
        assert flat.shape == (7 * (5 + 4 + 3),)
        at = 0
        for block, width in zip(blocks, (5, 4, 3)):
            assert block.shape == (7, width) and np.shares_memory(block, flat)
            block[...] = width
            assert (flat[at : at + 7 * width] == width).all()
            at += 7 * width
