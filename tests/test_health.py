"""The warnings about runs that train without learning: chance level after epoch 1, a stalled loss."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pnn_mpi.training import health


def records(losses, accuracy_first=None):
    return [SimpleNamespace(train_loss=loss, test_accuracy=accuracy_first if i == 0 else None) for i, loss in enumerate(losses)]


def watch(**kw):
    base = dict(lr=0.05, momentum=0.9, batch="batch 1", default_lr=0.001, default_momentum=0.9)
    return health.Watch(**{**base, **kw})


def test_stalled_needs_patience_and_a_high_loss():
    assert health.stalled([2.3, 2.3, 2.3]) is None  # not more epochs than the patience
    assert health.stalled([2.3, 2.3, 2.3, 2.3]) == (1, 2.3)
    assert health.stalled([0.37, 0.19, 0.14, 0.12, 0.10]) is None  # still falling
    assert health.stalled([1.04, 1.25, 1.53, 1.40, 1.63]) == (1, 1.04)  # rising after epoch 1
    assert health.stalled([0.3, 0.02, 0.015, 0.0151, 0.0152, 0.0153]) is None  # converged near zero: left alone
    assert health.stalled([2.3, math.nan, math.inf, math.nan]) == (1, 2.3)
    assert health.stalled([math.nan] * 5) is None


def test_chance_warning_once_after_epoch_one_naming_the_cause():
    w = watch()
    first = w.after_epoch(records([2.31], accuracy_first=0.1010), steps_done=30000)
    assert len(first) == 1 and first[0].startswith("pnn_mpi: warning: the parallel network is at chance level after epoch 1")
    assert "10.10%" in first[0] and "too high for batch 1" in first[0] and "lr 0.001, momentum 0.9" in first[0]
    assert w.after_epoch(records([2.31, 2.31], accuracy_first=0.1010), steps_done=60000) == []  # once only


@pytest.mark.parametrize("accuracy, steps", [(0.93, 1875), (0.15, 1), (None, 1875)])
def test_no_chance_warning_for_a_learning_a_young_or_an_unscored_network(accuracy, steps):
    """Learning; one full-batch step (too young to judge); epoch 1 not scored (--eval-every)."""
    assert watch().after_epoch(records([0.4], accuracy_first=accuracy), steps_done=steps) == []


@pytest.mark.parametrize(
    "classes, accuracy, chance",
    [(10, 0.19, True), (10, 0.21, False), (2, 0.55, True), (2, 0.6, False), (2, 0.97, False), (3, 0.38, True), (3, 0.45, False)],
)
def test_chance_is_measured_on_the_way_from_guessing_to_perfect(classes, accuracy, chance):
    """Two classes are not held to twice their chance rate (100%): a binary network at 97% is not at chance."""
    assert health.at_chance(accuracy, classes) is chance


def test_too_low_a_rate_is_named_as_such():
    w = watch(lr=1e-6, momentum=0.0)
    line = w.after_epoch(records([2.30], accuracy_first=0.09), steps_done=2000)[0]
    assert "too low for batch 1" in line


def test_stall_warning_once():
    w = watch(batch="batch 32", lr=0.3, momentum=0.9, default_lr=0.03)
    losses = [1.04, 1.25, 1.53, 1.40]
    said = [w.after_epoch(records(losses[: i + 1], accuracy_first=0.63), steps_done=1875 * (i + 1)) for i in range(len(losses))]
    assert said[:3] == [[], [], []]
    assert len(said[3]) == 1 and "the training loss stopped falling: 1.4 in epoch 4, no better than 1.04 in epoch 1" in said[3][0]
    assert "too high for batch 32" in said[3][0]
    assert w.after_epoch(records(losses + [1.6], accuracy_first=0.63), steps_done=9000) == []


# --- as a user sees them: real launches on MNIST ---------------------------------------------

import json  # noqa: E402

from conftest import clean_env, run_pnn  # noqa: E402


def _launch(mnist_dir, tmp_path, *flags, ranks=2):
    out = tmp_path / "out"
    proc = run_pnn("--train-size", "4000", "--test-size", "2000", "--out", str(out), *flags, ranks=ranks, env=clean_env(PNN_MPI_DATA=str(mnist_dir)))
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((out / "metrics.json").read_text())


def test_the_paper_mode_trap_is_named(mnist_dir, tmp_path):
    """Issue #10: batch 1 with the mini-batch rate and momentum (0.05, 0.9) stays at chance level: one line says so and why."""
    proc, record = _launch(mnist_dir, tmp_path, "--batch-size", "1", "--lr", "0.05", "--momentum", "0.9", "--epochs", "1")
    assert record["test_accuracy"] < 0.2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pnn_mpi: warning:")]
    assert len(lines) == 1 and "at chance level after epoch 1" in lines[0] and "too high for batch 1" in lines[0]
    assert record["warnings"] == lines


def test_a_rate_too_small_to_move_is_named_twice(mnist_dir, tmp_path):
    """A rate that barely moves the network: at chance after epoch 1 (rate too low), and a loss that stops falling."""
    proc, record = _launch(mnist_dir, tmp_path, "--lr", "1e-7", "--epochs", "5", "--lr-schedule", "constant")
    warnings = record["warnings"]
    assert len(warnings) == 2 and all(w in proc.stderr for w in warnings)
    assert "at chance level after epoch 1" in warnings[0] and "too low for batch 32" in warnings[0]
    assert "the training loss stopped falling" in warnings[1]


def test_a_healthy_run_warns_of_nothing(mnist_dir, tmp_path):
    proc, record = _launch(mnist_dir, tmp_path, "--epochs", "5")
    assert record["warnings"] == [] and "warning" not in proc.stderr
    assert record["test_accuracy"] > 0.85
