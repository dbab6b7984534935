"""Training across real MPI ranks: run under ``mpiexec -n P python -m pytest --with-mpi``.

Each test compares P ranks with one: the P-rank result must equal what a
single process computes for the same samples (``World(COMM_SELF)`` gives each
rank a private one-rank world to compute that reference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from conftest import learnable_dataset, write_dataset
from pnn_mpi.common.errors import UserError
from pnn_mpi.data.slicing import slice_bounds, slice_sizes
from pnn_mpi.nn.evaluate import evaluate
from pnn_mpi.parallel.comm import SerialWorld, World, fail_together
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.rank_data import load_rank_data
from pnn_mpi.training.train import build_network, train

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def world() -> World:
    return World()


def _quiet(*_):
    pass


def _shared_tmp(world: World, tmp_path_factory) -> Path:
    """A folder all ranks see: rank 0 makes it and broadcasts its path."""
    path = tmp_path_factory.mktemp("shared") if world.rank == 0 else None
    return Path(world.bcast(str(path)))


def test_initial_parameters_identical_on_all_ranks(world):
    cfg = TrainConfig(hidden=(64, 32), init="xavier-normal", seed=7)
    params = build_network(cfg, 784, 10).params
    for other in world.allgather(params):
        assert other.tobytes() == params.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_average_equals_mean_of_gathered(world, dtype):
    buf = np.random.default_rng(100 + world.rank).normal(size=1001).astype(dtype)
    gathered = np.array(world.allgather(buf.copy()))
    world.average_(buf)
    np.testing.assert_allclose(buf, gathered.astype(float).mean(axis=0), rtol=1e-6, atol=1e-6 if dtype == "float32" else 1e-15)
    for other in world.allgather(buf):
        assert other.tobytes() == buf.tobytes()  # every rank holds the same average


def _interleaved(slices: list[np.ndarray], batch: int) -> np.ndarray:
    """The samples in the order one process sees them with a P-times larger batch."""
    steps = max(-(-len(s) // batch) for s in slices)
    return np.concatenate([s[i * batch : (i + 1) * batch] for i in range(steps) for s in slices])


@pytest.mark.parametrize("n, batch, momentum", [(48, 3, 0.0), (50, 4, 0.9), (47, 1, 0.5)])
def test_grad_sync_equals_one_rank_with_p_times_the_batch(make_rank_data, world, n, batch, momentum):
    """`grad` with P ranks and batch b takes the steps of one rank with batch P*b on the same samples.

    (50 and 47 samples split unevenly, so short ranks take smaller last batches.)
    """
    images, labels, test_images, test_labels = learnable_dataset(21, n, 30)
    sizes = slice_sizes(n, world.size)
    lo, hi = slice_bounds(n, world.size, world.rank)
    common = dict(hidden=(9,), epochs=3, lr=0.2, momentum=momentum, dtype="float64", shuffle=False, eval_every=0)

    mine = make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels, sizes=sizes, start=lo)
    parallel = train(TrainConfig(**common, batch_size=batch, sync="grad"), world, mine, log=_quiet)

    bounds = [slice_bounds(n, world.size, r) for r in range(world.size)]
    order = _interleaved([np.arange(a, b) for a, b in bounds], batch)
    alone = make_rank_data(images[order], labels[order], test_images, test_labels)
    single = train(TrainConfig(**common, batch_size=batch * world.size, sync="end"), World(MPI.COMM_SELF), alone, log=_quiet)

    np.testing.assert_allclose(parallel.net.params, single.net.params, rtol=1e-10, atol=1e-13)
    assert parallel.test_accuracy == single.test_accuracy or world.rank != 0


@pytest.mark.parametrize("sync", ["end", "epoch", "steps:2"])
def test_parameter_averaging_equals_mean_of_local_networks(make_rank_data, world, sync):
    """The parallel network is the mean of the local networks trained alone on each slice.

    With `end` this is literal: each rank's network trained by itself, then averaged.
    With `epoch`/`steps` every rank also ends equal to every other rank.
    """
    n = 40 * world.size + 1
    images, labels, test_images, test_labels = learnable_dataset(3, n, 25)
    sizes = slice_sizes(n, world.size)
    lo, hi = slice_bounds(n, world.size, world.rank)
    cfg = TrainConfig(hidden=(8,), epochs=2, batch_size=5, lr=0.1, dtype="float64", sync=sync, shuffle=False)
    result = train(cfg, world, make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels, sizes=sizes, start=lo), log=_quiet)
    for other in world.allgather(result.net.params):
        assert other.tobytes() == result.net.params.tobytes()
    if sync == "end":
        mine = make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels)
        alone = train(cfg, SerialWorld(), mine, log=_quiet).net.params
        mean = np.mean(world.allgather(alone), axis=0)
        np.testing.assert_allclose(result.net.params, mean, rtol=1e-10, atol=1e-13)


def test_local_accuracies_are_gathered_from_every_rank(make_rank_data, world):
    n = 30 * world.size
    images, labels, test_images, test_labels = learnable_dataset(4, n, 25)
    lo, hi = slice_bounds(n, world.size, world.rank)
    cfg = TrainConfig(hidden=(8,), epochs=2, batch_size=5, sync="end", shuffle=False)
    result = train(cfg, world, make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels, "float32", sizes=[30] * world.size, start=lo), log=_quiet)
    assert len(result.local_accuracies) == world.size == len(result.clocks)
    assert world.allgather(result.local_accuracies) == [result.local_accuracies] * world.size
    # With sync "end" and no shuffling a rank's local network is what one process trains on its slice alone:
    # entry r of the gathered list must be rank r's own score of it.
    alone = train(cfg, SerialWorld(), make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels, "float32"), log=_quiet)
    own = evaluate(alone.net, test_images.reshape(len(test_images), -1), test_labels.astype(np.intp))[0]
    assert result.local_accuracies[world.rank] == own


def test_each_rank_loads_exactly_its_slice(world, tmp_path_factory):
    folder = _shared_tmp(world, tmp_path_factory) / "data"
    if world.rank == 0:
        write_dataset(folder, train=103, test=11, gz=True)
    world.barrier()
    cfg = TrainConfig(dataset="custom", data_dir=str(folder))
    data = load_rank_data(cfg, world)
    from pnn_mpi.data.idx import read_records

    everything = read_records(folder / "train-images-idx3-ubyte.gz", expect="images")
    lo, hi = slice_bounds(103, world.size, world.rank)
    assert (data.start, len(data.y)) == (lo, hi - lo)
    np.testing.assert_allclose(data.x, everything[lo:hi] / 255.0, rtol=1e-6)
    assert sum(world.allgather(len(data.y))) == 103 == data.train_total


def test_a_fault_seen_by_one_rank_fails_every_rank_alike(world, tmp_path_factory):
    """A label out of range at the very end is read by the last rank only; all ranks report it."""
    folder = _shared_tmp(world, tmp_path_factory) / "bad"
    if world.rank == 0:
        write_dataset(folder, train=40, test=10)
        path = folder / "train-labels-idx1-ubyte"
        raw = bytearray(path.read_bytes())
        raw[-1] = 42
        path.write_bytes(bytes(raw))
    world.barrier()
    with pytest.raises(UserError) as caught:
        load_rank_data(TrainConfig(dataset="custom", data_dir=str(folder)), world)
    messages = world.allgather(str(caught.value))
    assert len(set(messages)) == 1 and "42" in messages[0]


def test_fail_together_passes_results_through(world):
    assert fail_together(world, lambda: world.rank * 2) == world.rank * 2


def test_fail_together_when_only_the_last_rank_fails(world):
    """A UserError on the last rank alone is raised on every rank, with its message; the others' results are dropped."""

    def action():
        if world.rank == world.size - 1:
            raise UserError(f"bad slice on rank {world.rank}")
        return "fine"

    with pytest.raises(UserError) as info:
        fail_together(world, action)
    assert str(info.value) == f"bad slice on rank {world.size - 1}"
    assert world.allgather(str(info.value)) == [str(info.value)] * world.size


def test_fail_together_reports_the_lowest_failing_rank(world):
    """When several ranks fail, all ranks raise the message of the lowest of them; other exceptions are not caught."""

    def every_rank_fails():
        raise UserError(f"rank {world.rank} failed")

    with pytest.raises(UserError, match="^rank 0 failed$"):
        fail_together(world, every_rank_fails)
    with pytest.raises(ZeroDivisionError):
        fail_together(SerialWorld(), lambda: 1 / 0)


def test_more_ranks_than_samples_is_a_user_error(world, tmp_path_factory):
    folder = _shared_tmp(world, tmp_path_factory) / "few"
    if world.rank == 0:
        write_dataset(folder, train=world.size - 1, test=3)
    world.barrier()
    with pytest.raises(UserError, match=f"{world.size} ranks but only {world.size - 1} training samples"):
        load_rank_data(TrainConfig(dataset="custom", data_dir=str(folder)), world)


@pytest.mark.parametrize(
    "sync, stop_after, every, at",
    [("end", 5, 4, None), ("local:3:7", 5, 4, None), ("local:3:7", 11, 4, None), ("steps:5", 7, 4, None), ("local:3:3", 1, 1000, 3), ("steps:4", 2, 1000, 8)],
)
def test_a_stop_seen_by_one_rank_checkpoints_all_and_resumes_bit_identically(make_rank_data, world, tmp_path_factory, monkeypatch, sync, stop_after, every, at):
    """Rank 1 alone is signalled; every rank stops at the same step, rank 0 writes every
    rank's state, and the resumed run ends with the parameters of an uninterrupted one
    (under local and steps:K: it averages where the uninterrupted run did, mid-period).
    With no stop check of its own due inside the epoch (``every`` 1000), the check rides
    the averages: the stop comes at the average after the request (step ``at``)."""
    from pnn_mpi.commands.run import checkpoint_writer, resume_point
    from pnn_mpi.common.errors import Interrupted
    from pnn_mpi.training.train import Hooks

    monkeypatch.setattr("pnn_mpi.training.train.check_interval", lambda batch: every)
    out = _shared_tmp(world, tmp_path_factory) / "run"
    out.mkdir(exist_ok=True)
    n = 50 * world.size + 3
    images, labels, test_images, test_labels = learnable_dataset(8, n, 20)
    sizes = slice_sizes(n, world.size)
    lo, hi = slice_bounds(n, world.size, world.rank)
    cfg = TrainConfig(hidden=(8,), epochs=3, batch_size=3, momentum=0.9, sync=sync, out=str(out))

    def mine():
        return make_rank_data(images[lo:hi], labels[lo:hi], test_images, test_labels, "float32", sizes=sizes, start=lo)

    whole = train(cfg, world, mine(), log=_quiet)
    checks = {"n": 0}

    def only_rank_one():
        checks["n"] += 1
        return "SIGTERM" if world.rank == 1 and checks["n"] >= stop_after else None

    with pytest.raises(Interrupted) as stopped:
        train(cfg, world, mine(), log=_quiet, hooks=Hooks(stop_reason=only_rank_one, checkpoint=checkpoint_writer(cfg, world, out)))
    assert len(set(world.allgather((stopped.value.epoch, stopped.value.step)))) == 1
    assert at is None or (stopped.value.epoch, stopped.value.step) == (0, at)
    resume = resume_point(cfg, world, out)
    assert resume is not None and resume[0].step == stopped.value.step
    again = train(cfg, world, mine(), log=_quiet, hooks=Hooks(resume=resume))
    assert again.net.params.tobytes() == whole.net.params.tobytes()
