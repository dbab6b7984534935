"""The defaults rule: learning rate, momentum, schedule, warm-up and sync follow the gradient mode."""

from __future__ import annotations

import math

import pytest

from pnn_mpi.training import defaults as d


@pytest.mark.parametrize("ranks", [1, 4, 16])
def test_batch_one_averages_parameters_with_its_own_small_rate(ranks):
    """Batch 1 never gets the mini-batch rate (the trap: 0.05 with momentum 0.9 ends at chance level)."""
    found = d.for_mode(1, None, ranks)
    assert (found.mode, found.sync, found.lr, found.momentum, found.lr_schedule, found.warmup) == (
        d.STOCHASTIC,
        "epoch",
        pytest.approx(0.05 / 32),
        d.MOMENTUM,
        "cosine",
        0,
    )


@pytest.mark.parametrize("ranks", [1, 4, 16])
def test_full_batch_takes_a_constant_large_rate(ranks):
    found = d.for_mode("full", None, ranks)
    assert (found.mode, found.sync, found.lr, found.momentum, found.lr_schedule, found.warmup) == (d.FULL, "epoch", d.FULL_LR, d.MOMENTUM, "constant", 0)


@pytest.mark.parametrize(
    "batch, ranks, lr, warmup",
    [
        (32, 1, 0.05, 0),  # one rank: the single network's rate, as before local SGD became the default
        (32, 2, 0.1, 2),  # the one-rank rate times 1 + log2 P
        (32, 3, 0.05 * (1 + math.log2(3)), 2),
        (32, 4, 0.15, 2),
        (32, 8, 0.2, 2),
        (32, 16, 0.25, 2),
        (32, 64, 0.25, 2),  # capped at LOCAL_MAX_LR (0.35 by the logarithm)
        (8, 1, 0.0125, 0),
        (8, 4, 0.0375, 0),  # pools 32 samples: no warm-up
        (16, 8, 0.1, 2),
        (16, 16, 0.125, 2),
        (128, 2, 0.25, 2),  # 0.2 x 2, capped
        (64, 1, 0.1, 1),
        (512, 1, 0.8, 1),  # one rank keeps the single network's cap
    ],
)
def test_mini_batch_default_is_local_sgd_with_the_pooled_rate(batch, ranks, lr, warmup):
    """The default for mini-batches averages parameters (local); its rate grows with the logarithm of
    the ranks (slower than grad's linear rule, since each local step sees only b samples), at most 0.25,
    with two warm-up epochs when the ranks pool more than 32 samples."""
    found = d.for_mode(batch, None, ranks)
    assert found.sync == "local:5:64" and found.momentum == d.MOMENTUM and found.lr_schedule == "cosine"
    assert found.lr == pytest.approx(lr) and found.warmup == warmup


@pytest.mark.parametrize(
    "batch, ranks, lr, warmup",
    [(32, 1, 0.05, 0), (32, 4, 0.2, 1), (32, 16, 0.8, 1), (32, 64, 0.8, 1), (8, 1, 0.0125, 0), (8, 4, 0.05, 0), (64, 1, 0.1, 1)],
)
def test_grad_rate_follows_the_global_batch(batch, ranks, lr, warmup):
    """Under gradient averaging one update sees P*b samples: the rate scales with it (linear scaling rule),
    capped at MAX_LR, with a warm-up epoch whenever it was scaled above the batch-32 rate."""
    found = d.for_mode(batch, "grad", ranks)
    assert found.lr == pytest.approx(lr) and found.warmup == warmup and found.lr_schedule == "cosine"


@pytest.mark.parametrize("epochs, warmup", [(1, 0), (2, 1), (5, 1), (9, 1), (10, 2), (30, 2)])
def test_local_warmup_never_takes_the_whole_run(epochs, warmup):
    assert d.for_mode(32, None, 4, epochs).warmup == warmup


def test_one_rank_default_takes_the_steps_it_took_under_grad():
    """P = 1 stays as it was: local and grad resolve to the same rate, schedule and warm-up there."""
    for batch in (1, 8, 32, 64, 512):
        local, grad = d.for_mode(batch, None, 1), d.for_mode(batch, "grad", 1)
        assert (local.lr, local.lr_schedule, local.warmup) == (grad.lr, grad.lr_schedule, grad.warmup)


def test_a_chosen_sync_changes_what_an_update_sees():
    """Under epoch, steps:K and end each rank's update sees only its own batch: no scaling by P."""
    assert d.for_mode(32, "epoch", 16).lr == pytest.approx(0.05)
    assert d.for_mode(32, "steps:20", 16).warmup == 0
    assert d.for_mode(1, "grad", 4).lr == pytest.approx(0.05 * 4 / 32)  # batch 1 under grad: 4 samples per update
    assert d.for_mode(32, "local:8:64", 16).lr == pytest.approx(0.25)  # any local schedule pools P*b


def test_resolve_fills_only_what_is_unset():
    values = dict(batch_size=32, lr=None, momentum=0.5, lr_schedule=None, warmup=None, sync=None, epochs=3)
    out = d.resolve(values, 4)
    assert out == dict(batch_size=32, lr=pytest.approx(0.15), momentum=0.5, lr_schedule="cosine", warmup=1, sync="local:5:64", epochs=3)
    assert d.FOLLOWING == ("lr", "lr_schedule", "warmup", "sync")
    assert d.resolve(out, 4) == out  # resolving twice changes nothing
    mine = dict(values, lr=0.05, sync="end", lr_schedule="constant", warmup=0, momentum=0.0)
    assert d.resolve(mine, 16) == mine


# --- the rule as a user meets it: flags, a TOML file, and a real launch ---------------------

from pnn_mpi.training.options import parse_train_args  # noqa: E402


@pytest.mark.parametrize(
    "flags, ranks, expected",
    [
        ([], 1, dict(lr=0.05, lr_schedule="cosine", warmup=0, sync="local:5:64", momentum=0.9)),
        ([], 4, dict(lr=0.15, lr_schedule="cosine", warmup=2, sync="local:5:64", momentum=0.9)),
        ([], 16, dict(lr=0.25, lr_schedule="cosine", warmup=2, sync="local:5:64", momentum=0.9)),
        (["--sync", "grad"], 16, dict(lr=0.8, lr_schedule="cosine", warmup=1, sync="grad", momentum=0.9)),
        (["--batch-size", "1"], 4, dict(lr=0.05 / 32, lr_schedule="cosine", warmup=0, sync="epoch", momentum=0.9)),
        (["--batch-size", "full"], 4, dict(lr=0.3, lr_schedule="constant", warmup=0, sync="epoch", momentum=0.9)),
        (["--batch-size", "8", "--sync", "epoch"], 16, dict(lr=0.0125, lr_schedule="cosine", warmup=0, sync="epoch")),
    ],
)
def test_flags_left_unset_follow_the_mode(flags, ranks, expected):
    cfg = parse_train_args(flags).resolved(ranks)
    for key, value in expected.items():
        assert getattr(cfg, key) == (pytest.approx(value) if isinstance(value, float) else value), key


@pytest.mark.parametrize("batch", ["1", "32", "full"])
def test_values_the_user_sets_win_in_every_mode(batch):
    flags = ["--batch-size", batch, "--lr", "0.007", "--momentum", "0.3", "--lr-schedule", "constant", "--warmup", "2", "--sync", "end"]
    for ranks in (1, 4, 16):
        cfg = parse_train_args(flags).resolved(ranks)
        assert (cfg.lr, cfg.momentum, cfg.lr_schedule, cfg.warmup, cfg.sync) == (0.007, 0.3, "constant", 2, "end")


def test_values_from_a_toml_file_win_and_flags_after_it_win_over_them(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('batch-size = 1\nlr = 0.02\nsync = "steps:5"\nlr-schedule = "constant"\n')
    cfg = parse_train_args(["--config", str(path)]).resolved(4)
    assert (cfg.batch_size, cfg.lr, cfg.sync, cfg.lr_schedule, cfg.warmup, cfg.momentum) == (1, 0.02, "steps:5", "constant", 0, 0.9)
    cfg = parse_train_args(["--config", str(path), "--lr", "0.004"]).resolved(4)
    assert cfg.lr == 0.004 and cfg.sync == "steps:5"


def test_the_help_states_the_rule():
    text = " ".join(__import__("pnn_mpi.training.options", fromlist=["x"]).train_parser().format_help().split())
    assert "a value you set, by flag or in --config, always wins" in text
    assert "lr 0.05 x b/32 on one rank (at most 0.8); on P ranks under local that times 1 + log2 P, at most 0.25" in text
    assert "batch 32: lr 0.05 at 1 rank, 0.15 at 4 ranks, 0.25 at 16 ranks; under grad 0.05, 0.2, 0.8" in text
    assert "local:5:64 for mini-batches" in text and "epoch for batch 1 and full batch" in text
    assert "full batch: lr 0.3, constant rate" in text and "momentum 0.9 in every mode" in text


def test_a_launch_records_the_values_it_used(tmp_path):
    """metrics.json holds the resolved values and the header says which followed the rule."""
    from conftest import run_pnn, write_dataset

    data = write_dataset(tmp_path / "data", train=400, test=50, seed=2)
    out = tmp_path / "out"
    proc = run_pnn(
        "--dataset",
        "custom",
        "--data-dir",
        str(data),
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--lr-schedule",
        "constant",
        "--out",
        str(out),
        ranks=2,
    )
    assert proc.returncode == 0, proc.stderr
    config = __import__("json").loads((out / "metrics.json").read_text())["config"]
    assert (config["lr"], config["sync"], config["lr_schedule"], config["warmup"]) == (
        pytest.approx(0.05 * 40 / 32),
        "local:5:64",
        "constant",
        0,
    )  # 1 epoch: no warm-up
    assert "defaults for batch 20 on 2 ranks under local (40 samples per average): lr, warmup, sync" in proc.stdout
