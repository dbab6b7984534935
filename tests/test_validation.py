"""--val-size and --early-stop: which samples are held out, how they are scored, when training stops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_pnn, write_dataset
from pnn_mpi.common.errors import UserError
from pnn_mpi.data import datasets
from pnn_mpi.data.slicing import slice_bounds
from pnn_mpi.nn.evaluate import evaluate
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.options import parse_train_args
from pnn_mpi.training.rank_data import load_rank_data
from pnn_mpi.training.train import EpochRecord, early_stop_due, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=600, test=100, seed=8)


class RankOf(SerialWorld):
    """Rank ``rank`` of ``size`` as the data loader sees it (its collectives only gather)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def allgather(self, obj):
        return [obj] * self.size


def _file_records(folder, lo, hi):
    return datasets.load_split(datasets.get_spec("custom"), folder, "train", lo, hi)


@pytest.mark.parametrize("rank, size", [(0, 1), (0, 3), (2, 3)])
def test_the_held_out_samples_follow_the_trained_ones_sliced_like_them(tiny, rank, size):
    cfg = TrainConfig(dataset="custom", data_dir=str(tiny), val_size=100)
    data = load_rank_data(cfg, RankOf(rank, size))
    assert data.train_total == 500 and data.val_total == 100
    lo, hi = slice_bounds(100, size, rank)
    images, labels = _file_records(tiny, 500 + lo, 500 + hi)
    assert (data.val_images == images).all() and (data.val_labels == labels).all()
    with_train_size = load_rank_data(TrainConfig(dataset="custom", data_dir=str(tiny), val_size=50, train_size=200), RankOf(rank, size))
    lo, hi = slice_bounds(50, size, rank)
    assert with_train_size.train_total == 200 and (with_train_size.val_images == _file_records(tiny, 200 + lo, 200 + hi)[0]).all()


def test_validation_is_scored_every_epoch_and_the_test_set_only_at_the_end(tiny):
    cfg = TrainConfig(dataset="custom", data_dir=str(tiny), val_size=100, hidden=(16,), epochs=3, eval_every=1)
    data = load_rank_data(cfg, SerialWorld())
    result = train(cfg, SerialWorld(), data, log=lambda line: None)
    assert [r.val_accuracy is not None for r in result.epochs] == [True] * 3
    assert [r.test_accuracy is not None for r in result.epochs] == [False, False, True]
    assert result.epochs[-1].val_accuracy == evaluate(result.net, data.val_images, data.val_labels)[0]


def _history(scores):
    return [EpochRecord(i + 1, 0.1, 1.0, None, None, 0.0, val_accuracy=s) for i, s in enumerate(scores)]


@pytest.mark.parametrize(
    "scores, patience, due",
    [
        ([0.5, 0.6, 0.6], 2, False),
        ([0.5, 0.6, 0.6, 0.55], 2, True),
        ([0.5, 0.6, 0.7], 1, False),
        ([0.7, 0.6], 1, True),
        ([0.7], 1, False),
        ([0.5, 0.6, 0.6, 0.6], 0, False),
    ],
)
def test_early_stop_counts_epochs_since_the_first_best(scores, patience, due):
    assert early_stop_due(TrainConfig(val_size=10, early_stop=patience), _history(scores)) is due


def test_bad_combinations_are_user_errors(tiny):
    with pytest.raises(UserError, match="--early-stop 3 needs a validation set"):
        parse_train_args(["--early-stop", "3"])
    with pytest.raises(UserError, match="--val-size 600 leaves no training samples"):
        load_rank_data(TrainConfig(dataset="custom", data_dir=str(tiny), val_size=600), SerialWorld())


def test_two_ranks_stop_together_and_metrics_say_where(tiny, tmp_path):
    """A learning rate too small to improve anything: the best validation score is epoch 1's, so
    with patience 2 both ranks stop after epoch 3 of 20 (a rank that went on would hang the other)."""
    out = tmp_path / "run"
    proc = run_pnn(
        "--dataset",
        "custom",
        "--data-dir",
        str(tiny),
        "--hidden",
        "16",
        "--epochs",
        "20",
        "--lr",
        "1e-9",
        "--val-size",
        "100",
        "--early-stop",
        "2",
        "--out",
        str(out),
        ranks=2,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["early_stop"] == {
        "patience": 2,
        "best_epoch": 1,
        "best_val_accuracy": record["epochs"][0]["val_accuracy"],
        "stopped_early": True,
        "stopped_after_epoch": 3,
    }
    assert len(record["epochs"]) == 3 and record["dataset"]["val_samples"] == 100 and record["dataset"]["train_samples"] == 500
    assert "early stop: no better validation accuracy for 2 epochs" in proc.stdout
    assert "validation (100 held-out samples): best" in proc.stdout
    assert np.isfinite(record["test_accuracy"])
