"""``--timeline``: the trace file is valid and complete, its rows line up, its sums are the clock's.

The MPI tests run under ``mpiexec -n P python -m pytest --with-mpi`` (2 and 4 ranks in ``make test``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write_dataset
from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.report.timeline import CLOCKED, NAMES, Timeline, chrome_trace, compute_between_collectives, phase_sums
from pnn_mpi.training.config import TrainConfig


def test_nested_spans_are_charged_like_the_loops_clock():
    """compute [0, 10] holding a check [2, 3] and a sync [5, 7]: compute 8 (the check stays in it), comm 2."""
    spans = [("compute", 0.0, 10.0), ("check", 2.0, 3.0), ("comm", 5.0, 7.0), ("wait", 10.0, 10.5), ("comm", 11.0, 11.25)]
    trace = chrome_trace([{"rank": 0, "host": "h", "offset": 0.0, "spans": spans, "instants": [("signal SIGUSR1", 4.0)]}], {})
    (sums,) = phase_sums(trace)
    assert sums == pytest.approx({"compute": 8.0, "comm": 2.25, "wait": 0.5, "eval": 0.0})
    # the final average after the epoch is not compute's: only collectives inside an epoch's compute come off it
    assert compute_between_collectives(trace) == [pytest.approx([7.0])]
    names = [e["name"] for e in trace["traceEvents"]]
    assert "signal SIGUSR1" in names and names.count("process_name") == 1


def test_offsets_put_every_rank_on_rank_zeros_clock():
    spans = {0: [("compute", 100.0, 101.0)], 1: [("compute", 5.0, 6.0)]}
    trace = chrome_trace([{"rank": r, "host": "h", "offset": 95.0 * r, "spans": s, "instants": []} for r, s in spans.items()], {})
    starts = {e["pid"]: e["ts"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert starts == {0: 0.0, 1: 0.0}


def test_serial_run_writes_a_timeline_whose_sums_are_the_metrics(tmp_path):
    from pnn_mpi.commands.run import run_training

    data = write_dataset(tmp_path / "data", train=200, test=20)
    path = tmp_path / "trace.json"
    cfg = TrainConfig(
        dataset="custom",
        data_dir=str(data),
        hidden=(8,),
        epochs=3,
        batch_size=10,
        sync="steps:7",
        out=str(tmp_path / "run"),
        timeline=str(path),
        checkpoint_every=1,
    )
    record = run_training(cfg, SerialWorld())
    trace = json.loads(path.read_text())
    _check_complete(trace, record, 1)


def test_an_unwritable_timeline_folder_is_one_error_before_training(tmp_path):
    from pnn_mpi.commands.run import run_training
    from pnn_mpi.common.errors import UserError

    data = write_dataset(tmp_path / "data", train=50, test=10)
    cfg = TrainConfig(dataset="custom", data_dir=str(data), out=str(tmp_path / "run"), timeline=str(tmp_path / "no" / "t.json"))
    with pytest.raises(UserError, match="--timeline .*does not exist"):
        run_training(cfg, SerialWorld())


def test_a_timeline_path_that_is_a_folder_is_one_error_before_training(tmp_path):
    from pnn_mpi.commands.run import run_training
    from pnn_mpi.common.errors import UserError

    data = write_dataset(tmp_path / "data", train=50, test=10)
    cfg = TrainConfig(dataset="custom", data_dir=str(data), out=str(tmp_path / "run"), timeline=str(tmp_path))
    with pytest.raises(UserError, match="--timeline .*is a directory"):
        run_training(cfg, SerialWorld())
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_timeline_that_fails_after_training_leaves_the_model_saved(tmp_path, monkeypatch):
    """The side output comes after the model: when writing the timeline fails, model.npz and
    metrics.json are already saved, and the error says where."""
    from pnn_mpi.commands.run import run_training
    from pnn_mpi.common.errors import UserError
    from pnn_mpi.report.timeline import Timeline

    def refuse(self, path, meta):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Timeline, "gather_and_write", refuse)
    data = write_dataset(tmp_path / "data", train=100, test=10)
    out = tmp_path / "run"
    cfg = TrainConfig(dataset="custom", data_dir=str(data), hidden=(4,), epochs=1, batch_size=10, out=str(out), timeline=str(tmp_path / "t.json"))
    with pytest.raises(UserError, match=f"--timeline .*cannot write it .*the model and metrics were saved in {out}"):
        run_training(cfg, SerialWorld())
    assert (out / "model.npz").is_file() and (out / "metrics.json").is_file()


def test_timeline_is_off_by_default():
    from pnn_mpi.commands.run import start_timeline

    assert start_timeline(TrainConfig(), SerialWorld()) is None


def _check_complete(trace: dict, record: dict, ranks: int) -> None:
    """Valid and complete: one row per rank, every phase of every epoch, sums equal to metrics.json's."""
    events = trace["traceEvents"]
    assert {e["ph"] for e in events} <= {"M", "X", "i"}
    rows = sorted(e["pid"] for e in events if e["name"] == "process_name")
    assert rows == list(range(ranks))
    epochs, syncs = record["config"]["epochs"], record["timings"]["syncs"]
    for pid in range(ranks):
        mine = [e for e in events if e["pid"] == pid and e["ph"] == "X"]
        assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in mine)
        count = {name: sum(e["name"] == name for e in mine) for name in NAMES.values()}
        assert count["data load"] == 1
        assert count["compute"] == epochs and count["wait for slower ranks"] == epochs
        assert count["sync allreduce"] == syncs
        assert count["stop/divergence check"] >= epochs
        assert count["scoring"] >= epochs
        if record["config"]["checkpoint_every"]:
            assert count["checkpoint write"] == (epochs - 1) // record["config"]["checkpoint_every"]
    sums = phase_sums(trace)
    metric = {"compute": "compute_seconds", "comm": "communication_seconds", "wait": "wait_seconds", "eval": "evaluation_seconds"}
    for phase in CLOCKED:
        got = [s[phase] for s in sums]
        want = record["timings"][metric[phase]]
        assert min(got) == pytest.approx(want["min"], abs=1e-5)
        assert max(got) == pytest.approx(want["max"], abs=1e-5)
        assert sum(got) / len(got) == pytest.approx(want["mean"], abs=1e-5)
    assert trace["otherData"]["ranks"] == ranks and trace["otherData"]["train_seconds"] == record["train_seconds"]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("sync", ["epoch", "grad"])
def test_every_rank_is_in_the_trace_and_the_rows_line_up(tmp_path_factory, sync):
    from pnn_mpi.commands.run import run_training
    from pnn_mpi.parallel.comm import World

    world = World()
    folder = Path(world.bcast(str(tmp_path_factory.mktemp("timeline")) if world.rank == 0 else None))
    if world.rank == 0:
        write_dataset(folder / "data", train=40 * world.size, test=20)
    world.barrier()
    path = folder / "trace.json"
    cfg = TrainConfig(
        dataset="custom", data_dir=str(folder / "data"), hidden=(8,), epochs=3, batch_size=8, sync=sync, out=str(folder / "run"), timeline=str(path)
    )
    record = run_training(cfg, world)
    world.barrier()
    if world.rank == 0:
        trace = json.loads(path.read_text())
        _check_complete(trace, record, world.size)
        # Every epoch ends at a barrier: on the common clock the ranks leave it together.
        ends = {}
        for e in trace["traceEvents"]:
            if e["name"] == "wait for slower ranks":
                ends.setdefault(e["args"]["epoch"], []).append(e["ts"] + e["dur"])
        for epoch, times in ends.items():
            assert len(times) == world.size
            assert max(times) - min(times) < 50_000, f"epoch {epoch}: barrier exits {times} µs apart"


def test_timeline_recorder_listens_without_touching_the_clock():
    rec = Timeline(SerialWorld())
    assert rec.offset == 0.0
    rec.listener("compute", 1.0, 2.0)
    assert rec.spans == [("compute", 1.0, 2.0)]


def test_a_signal_and_the_checkpoint_it_causes_are_in_the_trace(tmp_path, monkeypatch):
    """SIGUSR1 in epoch 1: the trace still gets written, with the signal's marker and the checkpoint write."""
    import os
    import signal

    import pnn_mpi.training.train as trainer
    from pnn_mpi.commands.run import run_training
    from pnn_mpi.common.errors import Interrupted

    scored = trainer.score_epoch

    def score_then_signal(run, state, epoch, lr):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        return scored(run, state, epoch, lr)

    monkeypatch.setattr(trainer, "score_epoch", score_then_signal)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    data = write_dataset(tmp_path / "data", train=200, test=20)
    path = tmp_path / "trace.json"
    cfg = TrainConfig(dataset="custom", data_dir=str(data), hidden=(8,), epochs=3, batch_size=10, out=str(tmp_path / "run"), timeline=str(path))
    try:
        with pytest.raises(Interrupted):
            run_training(cfg, SerialWorld())
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    events = json.loads(path.read_text())["traceEvents"]
    names = [e["name"] for e in events]
    assert "signal SIGUSR1" in names and names.count("checkpoint write") == 1
    (marker,) = [e for e in events if e["name"] == "signal SIGUSR1"]
    (write,) = [e for e in events if e["name"] == "checkpoint write"]
    assert marker["ts"] <= write["ts"]
