"""Checkpoints in one process: what they hold, what they refuse, and resuming bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import learnable_dataset
from pnn_mpi.common.errors import Interrupted, UserError
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.training import checkpoint
from pnn_mpi.training.checkpoint import Progress, RankState
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.rank_data import check_cover
from pnn_mpi.training.train import Hooks, check_interval, train


def _state(seed: int) -> RankState:
    rng = np.random.default_rng(seed)
    gen = np.random.default_rng([seed, 1])
    gen.random(3)
    return RankState(rng.normal(size=20).astype(np.float32), rng.normal(size=20).astype(np.float32), rng.permutation(9), gen.bit_generator.state, 1.25)


def test_round_trip(tmp_path):
    cfg = TrainConfig(hidden=(4,), momentum=0.5)
    progress = Progress(epoch=2, step=7, global_step=31, in_sync=False, train_seconds=1.5, history=[{"epoch": 1}], clocks=[{"compute": 1.0}] * 2)
    states = [_state(0), _state(1)]
    checkpoint.save(tmp_path / "c.npz", cfg, 2, progress, states)
    got_progress, got = checkpoint.load(tmp_path / "c.npz", cfg, 2)
    assert got_progress == progress
    for a, b in zip(states, got):
        assert a.params.tobytes() == b.params.tobytes() and a.velocity.tobytes() == b.velocity.tobytes()
        assert (a.order == b.order).all() and a.rng == b.rng and a.loss_sum == b.loss_sum
    assert np.load(tmp_path / "c.npz", allow_pickle=False)["params_1"].dtype == np.float32


def test_settings_that_do_not_change_the_computation_may_differ(tmp_path):
    cfg = TrainConfig(out="a", eval_every=1)
    checkpoint.save(tmp_path / "c.npz", cfg, 1, Progress(), [_state(0)])
    checkpoint.load(tmp_path / "c.npz", TrainConfig(out="b", eval_every=0, checkpoint_every=3, resume=True, data_dir="x"), 1)


@pytest.mark.parametrize(
    "other, message",
    [
        (dict(lr=0.1), "--lr 0.05 (now 0.1)"),
        (dict(hidden=(8, 4)), "--hidden [128] (now [8, 4])"),
        (dict(sync="end"), "--sync 'local:5:64' (now 'end')"),  # batch 32's default sync is local
        (dict(seed=2), "--seed 1 (now 2)"),
    ],
)
def test_other_settings_are_refused(tmp_path, other, message):
    """Runs save and compare configurations with the defaults rule applied (run.py resolves them first)."""
    checkpoint.save(tmp_path / "c.npz", TrainConfig().resolved(1), 1, Progress(), [_state(0)])
    with pytest.raises(UserError, match="written with other settings") as caught:
        checkpoint.load(tmp_path / "c.npz", TrainConfig(**other).resolved(1), 1)
    assert message in str(caught.value)


def test_other_rank_count_is_refused(tmp_path):
    checkpoint.save(tmp_path / "c.npz", TrainConfig(), 2, Progress(), [_state(0), _state(1)])
    with pytest.raises(UserError, match="written by a run of 2 ranks, cannot resume with 4; relaunch with -n 2"):
        checkpoint.load(tmp_path / "c.npz", TrainConfig(), 4)


HELD = {"launched_ranks": 3, "train": [[[0, 4], [8, 10]], [[4, 8], [10, 12]]], "test": [[[0, 2]], [[2, 4]]], "val": [[[12, 12]], [[12, 12]]]}


EVENT = {"epoch": 2, "step": 7, "lost": [2], "survivors": [0, 1], "recovery_seconds": 0.5, "resumed_at": {"epoch": 2, "step": 0}}


def test_the_survivors_losses_travel_with_their_holdings(tmp_path):
    """The lost-rank events ride in the holdings: read back as written, for the resumed run to report."""
    held = {**HELD, "rank_failures": [EVENT]}
    checkpoint.save(tmp_path / "c.npz", TrainConfig(), 2, Progress(), [_state(0), _state(1)], lost=[2], held=held)
    assert checkpoint.peek_held(tmp_path / "c.npz", 2) == held


def test_the_survivors_holdings_are_read_before_the_data_and_checked_with_the_rest(tmp_path):
    """Two survivors of a 3-rank run: peek_held hands their holdings over; load wants the same ones."""
    checkpoint.save(tmp_path / "c.npz", TrainConfig(), 2, Progress(), [_state(0), _state(1)], lost=[2], held=HELD)
    assert checkpoint.peek_held(tmp_path / "c.npz", 2) == HELD
    checkpoint.load(tmp_path / "c.npz", TrainConfig(), 2)
    with pytest.raises(UserError, match="lists other holdings"):
        checkpoint.load(tmp_path / "c.npz", TrainConfig(), 2, _expected(held=None))


@pytest.mark.parametrize("ranks", [3, 1])
def test_the_survivors_checkpoint_with_other_ranks_names_theirs(tmp_path, ranks):
    checkpoint.save(tmp_path / "c.npz", TrainConfig(), 2, Progress(), [_state(0), _state(1)], lost=[2], held=HELD)
    for read in (lambda: checkpoint.peek_held(tmp_path / "c.npz", ranks), lambda: checkpoint.load(tmp_path / "c.npz", TrainConfig(), ranks)):
        with pytest.raises(
            UserError, match=f"written by the 2 ranks that survived lost ones of a 3-rank run .*, cannot resume with {ranks}; relaunch with -n 2$"
        ):
            read()


@pytest.mark.parametrize(
    "held",
    [
        [1, 2],
        {**HELD, "launched_ranks": 2},  # not more than survived
        {**HELD, "launched_ranks": True},
        {**HELD, "train": [[[0, 4]]]},  # one rank's entry missing
        {**HELD, "test": [[[2, 0]], [[2, 4]]]},  # a backward range
        {**HELD, "test": [[[0, "2"]], [[2, 4]]]},
        {**HELD, "val": [[[-1, 12]], [[12, 12]]]},
        {k: v for k, v in HELD.items() if k != "val"},
        {**HELD, "rank_failures": {"epoch": 2}},
        {**HELD, "rank_failures": [EVENT] * 4},  # more losses than launched ranks
        {**HELD, "rank_failures": [{**EVENT, "epoch": "2"}]},
        {**HELD, "rank_failures": [{**EVENT, "lost": [3]}]},  # not a launch rank
        {**HELD, "rank_failures": [{k: v for k, v in EVENT.items() if k != "survivors"}]},
    ],
)
def test_malformed_holdings_are_one_error_line(tmp_path, held):
    checkpoint.save(tmp_path / "c.npz", TrainConfig(), 2, Progress(), [_state(0), _state(1)], lost=[2], held=held)
    for read in (lambda: checkpoint.peek_held(tmp_path / "c.npz", 2), lambda: checkpoint.load(tmp_path / "c.npz", TrainConfig(), 2)):
        with pytest.raises(UserError, match="not a usable pnn_mpi checkpoint: its holdings"):
            read()


@pytest.mark.parametrize(
    "split, ranges",
    [("train", [[[0, 4], [8, 10]], [[4, 8], [10, 11]]]), ("train", [[[0, 5], [8, 10]], [[4, 8], [10, 12]]]), ("test", [[[0, 2]], [[3, 4]]])],
)
def test_holdings_that_do_not_cover_the_records_once_are_refused(split, ranges):
    """Short of the end, overlapping, or with a gap: one line, before any record is read."""
    totals = {"train": (0, 12), "test": (0, 4), "val": (12, 12)}
    check_cover(HELD, totals)
    with pytest.raises(UserError, match=f"holdings of the {split} records do not cover"):
        check_cover({**HELD, split: ranges}, totals)


def _expected(held) -> checkpoint.Expected:
    return checkpoint.Expected(parameters=20, slice_sizes=[9, 9], steps=3, data={}, history_fields=(), clock_fields=(), held=held)


@pytest.mark.parametrize("content", [b"", b"not a zip", b"PK\x03\x04garbage"])
def test_damaged_checkpoint_is_a_user_error(tmp_path, content):
    (tmp_path / "c.npz").write_bytes(content)
    with pytest.raises(UserError, match="not a readable pnn_mpi checkpoint"):
        checkpoint.load(tmp_path / "c.npz", TrainConfig(), 1)


@pytest.mark.parametrize("header", [b"[" * 200_000 + b"]" * 200_000, b"{" * 5, b'"format"'])
def test_a_header_not_ours_is_one_error_line(tmp_path, header):
    """A header nested past the JSON parser's stack, broken, or of another shape: refused as not ours, no traceback."""
    from pnn_mpi.training.model_io import npz_bytes

    (tmp_path / "c.npz").write_bytes(npz_bytes({"header": np.array(header.decode())}))
    with pytest.raises(UserError, match="not a (usable )?pnn_mpi checkpoint"):
        checkpoint.load(tmp_path / "c.npz", TrainConfig(), 1)


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, TrainConfig(), 1, Progress(epoch=1), [_state(0)])
    before = path.read_bytes()

    def refuse(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        checkpoint.save(path, TrainConfig(), 1, Progress(epoch=2), [_state(1)])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left


# --- interrupting and resuming the loop --------------------------------------------


@pytest.fixture(scope="module")
def data():
    return learnable_dataset(12, 150, 30)


class Recorder:
    """A checkpoint hook that keeps what it is given, as the collective would write it."""

    def __init__(self):
        self.saved = None

    def __call__(self, progress, state):
        self.saved = (Progress(**vars(progress)), state)


def _stop_at(step: int):
    """A stop request that appears once the loop has taken ``step`` steps overall."""
    seen = {"n": 0}

    def requested():
        seen["n"] += 1
        return "SIGTERM" if seen["n"] >= step else None

    return requested


@pytest.mark.parametrize(
    "settings",
    [
        dict(sync="end", batch_size=4, momentum=0.9),
        dict(sync="epoch", batch_size=1, momentum=0.0),
        dict(sync="steps:3", batch_size=2, momentum=0.5, lr_decay=0.9),
        dict(sync="local:2:5", batch_size=2, momentum=0.9, lr_schedule="cosine"),
        dict(sync="grad", batch_size="full", momentum=0.9),
    ],
)
@pytest.mark.parametrize("interval, checks_before_stop", [(None, 1), (None, 4), (3, 2), (3, 5)])
def test_interrupt_then_resume_is_bit_identical(make_rank_data, data, settings, interval, checks_before_stop, monkeypatch):
    """Stopped at an epoch's end or (checking every 3 steps) in the middle of one, then resumed."""
    if interval:
        monkeypatch.setattr("pnn_mpi.training.train.check_interval", lambda batch: interval)
    images, labels, test_images, test_labels = data
    cfg = TrainConfig(hidden=(10,), epochs=5, lr=0.05, **settings)

    def fresh():
        return make_rank_data(images, labels, test_images, test_labels, "float32")

    whole = train(cfg, SerialWorld(), fresh(), log=lambda *_: None)

    recorder = Recorder()
    with pytest.raises(Interrupted) as stopped:
        train(cfg, SerialWorld(), fresh(), log=lambda *_: None, hooks=Hooks(stop_reason=_stop_at(checks_before_stop), checkpoint=recorder))
    assert stopped.value.reason == "SIGTERM"
    progress, state = recorder.saved
    assert (progress.epoch, progress.step) == (stopped.value.epoch, stopped.value.step)

    resumed = train(cfg, SerialWorld(), fresh(), log=lambda *_: None, hooks=Hooks(resume=(progress, state)))
    assert resumed.net.params.tobytes() == whole.net.params.tobytes()
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in whole.epochs]


def test_periodic_checkpoints_resume_bit_identically(make_rank_data, data):
    images, labels, test_images, test_labels = data
    cfg = TrainConfig(hidden=(10,), epochs=4, batch_size=5, checkpoint_every=1)
    saved = []
    whole = train(
        cfg,
        SerialWorld(),
        make_rank_data(images, labels, test_images, test_labels),
        log=lambda *_: None,
        hooks=Hooks(checkpoint=lambda p, s: saved.append((Progress(**vars(p)), s))),
    )
    assert [p.epoch for p, _ in saved] == [1, 2, 3]  # none after the last epoch: the model is saved then
    for progress, state in saved:
        again = train(cfg, SerialWorld(), make_rank_data(images, labels, test_images, test_labels), log=lambda *_: None, hooks=Hooks(resume=(progress, state)))
        assert again.net.params.tobytes() == whole.net.params.tobytes()


def test_stop_checks_come_about_every_2048_samples():
    assert [check_interval(b) for b in (1, 32, 2048, 5000)] == [2048, 64, 1, 1]


def test_resume_ranks_names_the_ranks_that_wrote_the_checkpoint(tmp_path, capsys):
    """What a job script launches after a requeue: the checkpoint's ranks (the survivors' after a loss),
    nothing for a folder without a usable checkpoint (the run then says what is wrong)."""
    from pnn_mpi.commands.cli import main

    plain, survivors, damaged, empty = (tmp_path / name for name in ("plain", "survivors", "damaged", "empty"))
    for folder in (plain, survivors, damaged, empty):
        folder.mkdir()
    checkpoint.save(plain / checkpoint.FILE, TrainConfig(), 3, Progress(), [_state(0), _state(1), _state(2)])
    checkpoint.save(survivors / checkpoint.FILE, TrainConfig(), 2, Progress(), [_state(0), _state(1)], lost=[2], held=HELD)
    (damaged / checkpoint.FILE).write_bytes(b"PK\x03\x04 not really")
    assert checkpoint.resume_ranks(plain / checkpoint.FILE) == 3 and checkpoint.resume_ranks(survivors / checkpoint.FILE) == 2
    printed = []
    for folder in (plain, survivors, damaged, empty, tmp_path / "missing"):
        assert main(["resume-ranks", str(folder)]) == 0
        printed.append(capsys.readouterr().out)
    assert printed == ["3\n", "2\n", "", "", ""]
