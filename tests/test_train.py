"""The training loop against an independent, straightforward implementation.

The reference below is written the textbook way (fresh arrays, activations of
z, explicit one-hot targets); the trainer (preallocated views, derivatives
from outputs, flat parameters) must reach the same parameters.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import learnable_dataset
from pnn_mpi.nn.evaluate import evaluate
from pnn_mpi.nn.network import Network
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.train import Clock, LoopState, Phases, batch_plan, build_network, train

_F = {
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2),
    "tanh": (np.tanh, lambda z: 1 / np.cosh(z) ** 2),
    "relu": (lambda z: np.where(z > 0, z, 0.0), lambda z: (z > 0).astype(float)),
    "leaky-relu": (lambda z: np.where(z > 0, z, 0.01 * z), lambda z: np.where(z > 0, 1.0, 0.01)),
}


def textbook_rate(cfg: TrainConfig, epoch: int) -> float:
    """The rate of a 0-based epoch: decayed, cosine-annealed over the run when asked, warmed up linearly."""
    rate = cfg.lr * cfg.lr_decay**epoch
    if cfg.lr_schedule == "cosine":
        rate *= (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2
    if epoch < cfg.warmup:
        rate *= (epoch + 1) / (cfg.warmup + 1)
    return rate


def reference_params(cfg: TrainConfig, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Train the textbook way; return the parameters flattened layer by layer (W, b)."""
    start = build_network(cfg, x.shape[1], 10)
    ws = [w.astype(float) for w in start.weights]
    bs = [b.astype(float) for b in start.biases]
    vw = [np.zeros_like(w) for w in ws]
    vb = [np.zeros_like(b) for b in bs]
    f, df = _F[cfg.activation]
    rng = np.random.default_rng([cfg.seed, 0])
    order = np.arange(len(y))
    batch = len(y) if cfg.batch_size == "full" else cfg.batch_size
    for epoch in range(cfg.epochs):
        lr = textbook_rate(cfg, epoch)
        if cfg.shuffle:
            rng.shuffle(order)
        for at in range(0, len(y), batch):
            pick = order[at : at + batch]
            xb, target = x[pick], np.eye(10)[y[pick]]
            zs, hs = [], [xb]
            for layer, (w, b) in enumerate(zip(ws, bs)):
                zs.append(hs[-1] @ w + b)
                hs.append(f(zs[-1]) if layer < len(ws) - 1 else None)
            z_out = zs[-1]
            if cfg.output == "softmax-xent":
                p = np.exp(z_out - z_out.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                delta = (p - target) / len(pick)
            else:
                s = 1 / (1 + np.exp(-z_out))
                delta = (s - target) * s * (1 - s) / len(pick)
            for layer in range(len(ws) - 1, -1, -1):
                gw, gb = hs[layer].T @ delta, delta.sum(axis=0)
                if layer:
                    delta = (delta @ ws[layer].T) * df(zs[layer - 1])
                vw[layer] = cfg.momentum * vw[layer] + gw
                vb[layer] = cfg.momentum * vb[layer] + gb
                ws[layer] = ws[layer] - lr * vw[layer]
                bs[layer] = bs[layer] - lr * vb[layer]
    return np.concatenate([a.ravel() for pair in zip(ws, bs) for a in pair])


@pytest.fixture(scope="module")
def small():
    return learnable_dataset(5, 45, 20)


def _quiet(*_):
    pass


@pytest.mark.parametrize(
    "settings",
    [
        dict(batch_size=1, momentum=0.0),  # the paper's stochastic mode
        dict(batch_size=1, momentum=0.9, activation="sigmoid"),
        dict(batch_size=7, momentum=0.5, activation="tanh", lr_decay=0.8),  # 45 = 6*7 + 3: a short last batch
        dict(batch_size="full", momentum=0.9, activation="leaky-relu", lr=0.3),
        dict(batch_size=4, output="sigmoid-mse", activation="sigmoid", init="xavier-normal", lr=0.5),
        dict(batch_size=5, hidden=(8, 6), init="uniform", bias_init=0.1, shuffle=False),
        dict(batch_size=3, hidden=(), init="normal"),  # no hidden layer: multinomial logistic regression
        dict(batch_size=6, lr_schedule="constant", warmup=0),
        dict(batch_size=6, lr_schedule="cosine", warmup=2, lr_decay=0.9),
    ],
)
def test_one_rank_matches_textbook_sgd(make_rank_data, small, settings):
    """One rank of the trainer takes exactly the steps of plain textbook SGD, schedule and warm-up included
    (unset ones as the defaults rule fills them in)."""
    images, labels, test_images, test_labels = small
    cfg = TrainConfig(**{"hidden": (12,), "epochs": 3, "lr": 0.1, "dtype": "float64", "eval_every": 0, **settings}).resolved(1)
    data = make_rank_data(images, labels, test_images, test_labels)
    result = train(cfg, SerialWorld(), data, log=_quiet)
    expected = reference_params(cfg, data.x, data.y)
    np.testing.assert_allclose(result.net.params, expected, rtol=1e-9, atol=1e-12)


def test_training_learns(make_rank_data, small):
    """On learnable data the parallel network's reported accuracy is high and matches a rescoring."""
    images, labels, test_images, test_labels = learnable_dataset(9, 600, 200)
    cfg = TrainConfig(hidden=(16,), epochs=5, batch_size=8, lr=0.1)
    data = make_rank_data(images, labels, test_images, test_labels, dtype="float32")
    result = train(cfg, SerialWorld(), data, log=_quiet)
    assert result.test_accuracy >= 0.95
    assert evaluate(result.net, data.test_images, data.test_labels)[0] == result.test_accuracy
    losses = [e.train_loss for e in result.epochs]
    assert losses[-1] < losses[0] / 2


def test_scoring_every_epoch_does_not_change_training(make_rank_data, small):
    """Per-epoch scoring reads the parameters only: the final network is bit-identical."""
    images, labels, test_images, test_labels = small
    runs = []
    for every in (0, 1):
        cfg = TrainConfig(hidden=(10,), epochs=3, batch_size=4, eval_every=every, sync="end")
        runs.append(train(cfg, SerialWorld(), make_rank_data(images, labels, test_images, test_labels, "float32"), log=_quiet))
    assert runs[0].net.params.tobytes() == runs[1].net.params.tobytes()
    assert runs[1].epochs[0].test_accuracy is not None and runs[0].epochs[0].test_accuracy is None


def test_same_seed_same_network_other_seed_other_network(make_rank_data, small):
    images, labels, test_images, test_labels = small

    def params(seed):
        cfg = TrainConfig(hidden=(10,), epochs=2, batch_size=4, seed=seed)
        return train(cfg, SerialWorld(), make_rank_data(images, labels, test_images, test_labels, "float32"), log=_quiet).net.params

    assert params(3).tobytes() == params(3).tobytes()
    assert params(3).tobytes() != params(4).tobytes()


def test_epoch_lines_are_logged_by_rank_zero(make_rank_data, small):
    images, labels, test_images, test_labels = small
    lines: list[str] = []
    cfg = TrainConfig(hidden=(10,), epochs=3, batch_size=4)
    result = train(cfg, SerialWorld(), make_rank_data(images, labels, test_images, test_labels, "float32"), log=lines.append)
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert f"{result.test_accuracy:.2%}".strip() in lines[-1]


@pytest.mark.parametrize(
    "sizes, batch, expected",
    [
        ([3, 3, 2, 2], 1, (1, 3, [4, 4, 2])),
        ([3, 3, 2, 2], 2, (2, 2, [8, 2])),
        ([5, 4], "full", (5, 1, [9])),
        ([6], 4, (4, 2, [4, 2])),
        ([2, 2], 10, (2, 1, [4])),  # a batch larger than every slice shrinks to the slice
    ],
)
def test_batch_plan(sizes, batch, expected):
    """Every rank takes the same number of steps; the global batch counts every rank's samples."""
    cfg = TrainConfig(batch_size=batch)
    size, steps, step_samples = batch_plan(cfg, sizes)
    assert (size, steps, list(step_samples)) == (expected[0], expected[1], expected[2])
    assert sum(step_samples) == sum(sizes)


def test_build_network_is_the_seeded_initialisation():
    cfg = TrainConfig(hidden=(7, 5), init="xavier-uniform", bias_init=0.25, seed=11)
    net = build_network(cfg, 20, 10)
    twin = Network((20, 7, 5, 10), "relu", "softmax-xent", "float32")
    twin.initialize("xavier-uniform", 0.25, 11)
    assert net.sizes == (20, 7, 5, 10)
    assert net.params.tobytes() == twin.params.tobytes()


def test_phases_charge_the_innermost_clocked_phase_and_report_every_span(monkeypatch):
    """comm inside compute pauses compute; an unclocked phase (checkpoint) leaves the time to the phase around it."""
    ticks = iter([0.0, 1.0, 3.0, 4.0, 4.5, 6.0])
    monkeypatch.setattr("pnn_mpi.training.train.time.perf_counter", lambda: next(ticks))
    clock, spans = Clock(), []
    phases = Phases(clock)
    phases.listeners.append(lambda *span: spans.append(span))
    with phases("compute"):  # 0 .. 6
        with phases("comm"):  # 1 .. 3
            pass
        with phases("checkpoint"):  # 4 .. 4.5, charged to compute
            pass
    assert (clock.compute, clock.comm, clock.wait, clock.eval) == (4.0, 2.0, 0.0, 0.0)
    assert spans == [("comm", 1.0, 3.0), ("checkpoint", 4.0, 4.5), ("compute", 0.0, 6.0)]


def test_loop_state_restore_undoes_everything_since_its_snapshot(make_rank_data, small):
    """snapshot() copies; restore() puts back parameters, momentum, order, shuffler, loss, progress and history."""
    images, labels, test_images, test_labels = small
    cfg = TrainConfig(hidden=(6,), momentum=0.9)
    state = LoopState.start(cfg, 0, make_rank_data(images, labels, test_images, test_labels))
    state.shuffler.shuffle(state.order)
    state.loss_sum, state.progress.global_step = 1.5, 7
    progress, saved = state.snapshot()
    before = (state.net.params.tobytes(), state.opt.velocity.tobytes(), state.order.tobytes(), state.shuffler.random())
    state.restore(progress, saved)  # the generator draw above is undone too
    state.net.params += 1.0
    state.opt.velocity += 2.0
    state.shuffler.shuffle(state.order)
    state.loss_sum, state.progress.global_step = 9.0, 99
    state.restore(progress, saved, {"compute": 5.0})
    after = (state.net.params.tobytes(), state.opt.velocity.tobytes(), state.order.tobytes(), state.shuffler.random())
    assert after == before
    assert (state.loss_sum, state.progress.global_step, state.clock.compute) == (1.5, 7, 5.0)
