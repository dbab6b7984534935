"""The defaults rule: learning rate, momentum, schedule, warm-up and sync follow the gradient mode."""

from __future__ import annotations

import pytest

from pnn_mpi import defaults as d


@pytest.mark.parametrize("ranks", [1, 4, 16])
def test_batch_one_averages_parameters_with_its_own_small_rate(ranks):
    """Batch 1 never gets the mini-batch rate (the trap: 0.05 with momentum 0.9 ends at chance level)."""
    found = d.for_mode(1, None, ranks)
    assert (found.mode, found.sync, found.lr, found.momentum, found.lr_schedule, found.warmup) == (
        d.STOCHASTIC, "epoch", pytest.approx(0.05 / 32), d.MOMENTUM, "cosine", 0)


@pytest.mark.parametrize("ranks", [1, 4, 16])
def test_full_batch_takes_a_constant_large_rate(ranks):
    found = d.for_mode("full", None, ranks)
    assert (found.mode, found.sync, found.lr, found.momentum, found.lr_schedule, found.warmup) == (
        d.FULL, "epoch", d.FULL_LR, d.MOMENTUM, "constant", 0)


@pytest.mark.parametrize("batch, ranks, lr, warmup", [
    (32, 1, 0.05, 0), (32, 4, 0.2, 1), (32, 16, 0.8, 1), (32, 64, 0.8, 1),  # capped at MAX_LR
    (8, 1, 0.0125, 0), (8, 4, 0.05, 0), (64, 1, 0.1, 1),
])
def test_mini_batch_rate_follows_the_global_batch(batch, ranks, lr, warmup):
    """Under gradient averaging one update sees P*b samples: the rate scales with it (linear scaling rule),
    capped, with a warm-up epoch whenever it was scaled above the batch-32 rate."""
    found = d.for_mode(batch, None, ranks)
    assert found.sync == "grad" and found.momentum == d.MOMENTUM and found.lr_schedule == "cosine"
    assert found.lr == pytest.approx(lr) and found.warmup == warmup


def test_a_chosen_sync_changes_what_an_update_sees():
    """With parameter averaging each rank's update sees only its own batch: no scaling by P."""
    assert d.for_mode(32, "epoch", 16).lr == pytest.approx(0.05)
    assert d.for_mode(32, "steps:20", 16).warmup == 0
    assert d.for_mode(1, "grad", 4).lr == pytest.approx(0.05 * 4 / 32)  # batch 1 under grad: 4 samples per update


def test_resolve_fills_only_what_is_unset():
    values = dict(batch_size=32, lr=None, momentum=0.5, lr_schedule=None, warmup=None, sync=None, epochs=3)
    out = d.resolve(values, 4)
    assert out == dict(batch_size=32, lr=pytest.approx(0.2), momentum=0.5, lr_schedule="cosine", warmup=1, sync="grad", epochs=3)
    assert d.FOLLOWING == ("lr", "lr_schedule", "warmup", "sync")
    assert d.resolve(out, 4) == out  # resolving twice changes nothing
    mine = dict(values, lr=0.05, sync="end", lr_schedule="constant", warmup=0, momentum=0.0)
    assert d.resolve(mine, 16) == mine
