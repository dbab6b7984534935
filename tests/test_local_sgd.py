"""Local SGD (``--sync local``) across real MPI ranks, against a textbook simulation of it.

The reference below simulates every rank in one process the plain way: a
relu/softmax network per rank with its own momentum, fresh arrays at every
step, an average of parameters *and* momentum every K steps since the last
one (K growing as the rate falls below its peak, in warm-up or cosine decay)
counted across epoch ends, then a
final average of the parameters alone. The trainer (flat buffers, one
Allreduce over parameters and momentum together) must reach the same
network on every rank. Run under ``mpiexec -n P python -m pytest --with-mpi``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import learnable_dataset
from pnn_mpi.data.slicing import slice_bounds, slice_sizes
from pnn_mpi.parallel.comm import World
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.train import build_network, train

pytestmark = pytest.mark.mpi(min_size=2)


def textbook_period(first: int, largest: int, fraction: float) -> int:
    """Steps between averages at ``fraction`` of the peak rate: first / fraction, rounded, between first and largest."""
    if fraction <= first / largest:
        return largest
    return min(largest, max(first, round(first / fraction)))


def textbook_local_sgd(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, bounds: list[tuple[int, int]], first: int, largest: int) -> np.ndarray:
    """Every rank's training simulated in turn; returns the final averaged parameters, flattened (W, b per layer)."""
    start = build_network(cfg, x.shape[1], 10)
    ranks = len(bounds)
    nets = [[[w.astype(float).copy() for w in start.weights], [b.astype(float).copy() for b in start.biases]] for _ in range(ranks)]
    vel = [[[np.zeros_like(w) for w in ws], [np.zeros_like(b) for b in bs]] for ws, bs in nets]
    rngs = [np.random.default_rng([cfg.seed, r]) for r in range(ranks)]
    orders = [np.arange(lo, hi) for lo, hi in bounds]
    steps = max(math.ceil((hi - lo) / cfg.batch_size) for lo, hi in bounds)

    def average(with_momentum: bool) -> None:
        for group in (nets, vel) if with_momentum else (nets,):
            for part in (0, 1):
                for layer in range(len(group[0][part])):
                    mean = np.mean([g[part][layer] for g in group], axis=0)
                    for g in group:
                        g[part][layer] = mean.copy()

    since = 0
    for epoch in range(cfg.epochs):
        fraction = 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs)) * ((epoch + 1) / (cfg.warmup + 1) if epoch < cfg.warmup else 1.0)
        lr = cfg.lr * fraction
        period = textbook_period(first, largest, fraction)
        for r in range(ranks):
            rngs[r].shuffle(orders[r])
        for s in range(steps):
            for r in range(ranks):
                pick = orders[r][s * cfg.batch_size : (s + 1) * cfg.batch_size]
                if len(pick):
                    textbook_step(nets[r], vel[r], x[pick], y[pick], lr, cfg.momentum)
            since += 1
            if since >= period and s < steps - 1:
                average(True)
                since = 0
        if epoch < cfg.epochs - 1 and since >= period:  # the period ended on the epoch's last step
            average(True)
            since = 0
    average(False)
    ws, bs = nets[0]
    return np.concatenate([a.ravel() for pair in zip(ws, bs) for a in pair])


def textbook_step(net, vel, xb: np.ndarray, yb: np.ndarray, lr: float, momentum: float) -> None:
    """One heavy-ball SGD step of a relu/softmax network on a batch, the mean loss's gradient."""
    ws, bs = net
    hs, zs = [xb], []
    for layer, (w, b) in enumerate(zip(ws, bs)):
        zs.append(hs[-1] @ w + b)
        hs.append(np.maximum(zs[-1], 0.0) if layer < len(ws) - 1 else None)
    p = np.exp(zs[-1] - zs[-1].max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta = (p - np.eye(10)[yb]) / len(yb)
    for layer in range(len(ws) - 1, -1, -1):
        gw, gb = hs[layer].T @ delta, delta.sum(axis=0)
        if layer:
            delta = (delta @ ws[layer].T) * (zs[layer - 1] > 0)
        vel[0][layer] = momentum * vel[0][layer] + gw
        vel[1][layer] = momentum * vel[1][layer] + gb
        ws[layer] = ws[layer] - lr * vel[0][layer]
        bs[layer] = bs[layer] - lr * vel[1][layer]


@pytest.mark.parametrize("n, batch, sync, first, largest", [(96, 3, "local:2:6", 2, 6), (101, 4, "local:3:5", 3, 5), (80, 2, "local", 5, 64)])
def test_local_sgd_equals_the_textbook_simulation(make_rank_data, n, batch, sync, first, largest):
    """P ranks under local:K:L reach the textbook's network: averages at the same steps, momentum
    averaged with the parameters (101 samples split unevenly: a short rank takes a smaller last batch)."""
    world = World()
    images, labels, test_images, test_labels = learnable_dataset(31, n, 20)
    sizes = slice_sizes(n, world.size)
    lo, hi = slice_bounds(n, world.size, world.rank)
    cfg = TrainConfig(hidden=(9,), epochs=5, lr=0.2, momentum=0.9, warmup=1, lr_schedule="cosine", batch_size=batch, dtype="float64", sync=sync, eval_every=0)
    result = train(cfg, world, make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels, sizes=sizes, start=lo), log=lambda *_: None)
    for other in world.allgather(result.net.params):
        assert other.tobytes() == result.net.params.tobytes()
    whole = make_rank_data(images, labels, test_images, test_labels)  # the samples as the trainer reads them
    expected = textbook_local_sgd(cfg, whole.x, whole.y, [slice_bounds(n, world.size, r) for r in range(world.size)], first, largest)
    np.testing.assert_allclose(result.net.params, expected, rtol=1e-9, atol=1e-12)


def test_local_sgd_counts_every_allreduce(make_rank_data):
    """The clock counts each average of parameters and momentum (twice the parameters' bytes), the final
    average of the parameters alone, the scores and the stop checks; the counts match the textbook's averages."""
    world = World()
    n, batch = 64 * world.size, 4
    images, labels, test_images, test_labels = learnable_dataset(32, n, 20)
    lo, hi = slice_bounds(n, world.size, world.rank)
    cfg = TrainConfig(hidden=(5,), epochs=4, lr=0.1, warmup=1, batch_size=batch, sync="local:3:9", dtype="float32", eval_every=1)
    result = train(
        cfg, world, make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels, "float32", sizes=[64] * world.size, start=lo), log=lambda *_: None
    )
    clock = result.clocks[world.rank]
    steps, params = 16, result.net.params.nbytes
    periods = [textbook_period(3, 9, 0.5 * (1 + math.cos(math.pi * e / 4)) * (0.5 if e == 0 else 1.0)) for e in range(4)]
    averages, riding, scores, since = 0, 0, 0, 0
    for epoch, period in enumerate(periods):
        for s in range(steps):
            since += 1
            if since >= period and not (epoch == 3 and s == steps - 1):  # the final step: the final average follows
                averages, since = averages + 1, 0
                riding += s < steps - 1  # inside the epoch the stop check rides along: 3 float32 values more
        if epoch < 3:  # scored: an average of a copy first when the epoch did not end on an average
            scores += 1 + (since > 0)
    assert clock.average_allreduces == averages + 1 == clock.syncs  # + the final average
    assert clock.average_bytes == averages * 2 * params + riding * 3 * 4 + params and riding > 0
    assert clock.gradient_allreduces == 0
    # The last epoch's loss came with its last stop check: no Allreduce of its own. The final
    # scores, in shares, are one small Allreduce of counts each: the local networks' (apart
    # before the final average) and the parallel network's.
    assert clock.score_allreduces == scores + 2 and clock.check_allreduces == 4
