"""The scaling predictions: run programs against the trainer, both engines against hand-priced toy runs, the command."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pnn_mpi.parallel.comm import SerialWorld
from pnn_mpi.parallel.sync import Sync
from pnn_mpi.scaling import calibrate, command, model, platforms, predict, report, simulate, traces
from pnn_mpi.scaling.costs import Calibration, Link, StepCost
from pnn_mpi.scaling.program import CHECK_VALUES, Allreduce, Compute, Run, all_phases, collectives, phases, schedule, second_epoch_share
from pnn_mpi.training.config import TrainConfig
from pnn_mpi.training.train import train

needs_simgrid = pytest.mark.skipif(not simulate.available(), reason="SimGrid (libsimgrid-dev) is not installed")

SHM = Link(10e-6, 1e9)
TCP = Link(50e-6, 0.5e9)


def toy_calibration(per_step=1e-3, per_sample=0.0) -> Calibration:
    cost = StepCost(per_step, per_sample)
    return Calibration("toy", 2, {"4-3-2": {"one": cost, "all": cost}}, {"shm": SHM, "tcp": TCP})


def tiny_data(n: int, seed: int = 0, ranks: int = 1, rank: int = 0):
    """``n`` random samples of 4 features and 2 classes, or rank ``rank``'s slice of them among ``ranks``."""
    from pnn_mpi.data.slicing import slice_bounds, slice_sizes
    from pnn_mpi.training.rank_data import RankData

    rng = np.random.default_rng(seed)
    x = rng.random((n, 4)).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.intp)
    lo, hi = slice_bounds(n, ranks, rank)
    test_images, test_labels = (rng.random((10, 4)) * 255).astype(np.uint8), rng.integers(0, 2, 10)
    t_lo, t_hi = slice_bounds(10, ranks, rank)  # this rank's share of the test set
    return RankData(
        directory=Path("."),
        train_total=n,
        slice_sizes=slice_sizes(n, ranks),
        start=lo,
        x=x[lo:hi],
        y=y[lo:hi],
        test_images=test_images[t_lo:t_hi],
        test_labels=test_labels[t_lo:t_hi],
        test_total=10,
        image_shape=(2, 2),
        classes=2,
        load_seconds=0.0,
    )


def recorded_allreduces(monkeypatch) -> list[tuple]:
    """What the trainer's Allreduces will be, in order: (purpose, bytes, steps taken before it), its scores left out.

    A gradient sum comes inside its step (before the update): its step counts here, as in the program,
    where that step's compute comes before it.
    """
    import pnn_mpi.training.train as loop

    seen: list[tuple] = []
    real = loop.allreduce

    def recording(run, state, purpose, buffer, average=False):
        real(run, state, purpose, buffer, average)
        if purpose != "score":
            seen.append((purpose, buffer.nbytes, state.progress.global_step + (purpose == "gradient")))

    monkeypatch.setattr(loop, "allreduce", recording)
    return seen


def program_allreduces(run: Run) -> list[tuple]:
    """The program's Allreduces in order, as ``recorded_allreduces`` writes the trainer's.

    Rank 0 holds the largest slice, so its steps are every step of the epoch.
    """
    seen, steps = [], 0
    for phase in all_phases(run):
        for e in phase.events:
            if isinstance(e, Compute):
                steps += int(e.steps[0])
            elif isinstance(e, Allreduce):
                seen.append((e.purpose, e.nbytes, steps))
    return seen


def assert_same_allreduces(run: Run, clock, recorded: list[tuple]) -> None:
    """The program's Allreduces are the trainer's: in order, and in the clock's counts and bytes per purpose."""
    assert program_allreduces(run) == recorded
    got = collectives(run)
    for purpose in ("average", "gradient", "check"):
        calls, nbytes = got.get(purpose, (0, 0))
        assert (calls, nbytes) == (getattr(clock, f"{purpose}_allreduces"), getattr(clock, f"{purpose}_bytes")), purpose
    assert clock.syncs == clock.average_allreduces + clock.gradient_allreduces


class FirstOfMany(SerialWorld):
    """Rank 0 of ``size`` ranks whose collectives change nothing: the trainer's own decisions (when it
    averages, checks, sums) at ``size`` ranks without MPI. They hang on steps alone, and every rank
    takes the same steps, so rank 0's are every rank's (the MPI test below checks that too)."""

    def __init__(self, size: int):
        self.size = size

    def allgather(self, obj):
        return [obj] * self.size

    def gather(self, obj, root: int = 0):
        return [obj] * self.size


SYNCS = ["end", "epoch", "steps:3", "steps:7", "local:2:9", "local", "grad"]


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("batch, momentum", [(1, 0.9), (4, 0.9), (5, 0.0)])
@pytest.mark.parametrize("ranks", [1, 3])
def test_program_makes_the_allreduces_the_trainer_makes(monkeypatch, sync, batch, momentum, ranks):
    """Over several epochs of the default (cosine) schedule, with a check every 4 steps among the averages:
    the same Allreduces in the same order with the same buffers (batch 1 takes the many-step kernel;
    one rank averages nothing, being its own average)."""
    monkeypatch.setattr("pnn_mpi.training.train.check_interval", lambda batch: 4)
    n, epochs = 37 * ranks, 6
    recorded = recorded_allreduces(monkeypatch)
    cfg = TrainConfig(hidden=(3,), batch_size=batch, epochs=epochs, sync=sync, momentum=momentum, eval_every=0)
    result = train(cfg, FirstOfMany(ranks), tiny_data(n, ranks=ranks), log=lambda *_: None)
    run = Run((4, 3, 2), n, ranks, sync, epochs, batch, momentum=momentum)
    assert run.config() == cfg.resolved(ranks) and run.config().lr_schedule == "cosine"
    assert_same_allreduces(run, result.clocks[0], recorded)
    assert (result.clocks[0].average_allreduces > 0) == (ranks > 1 and sync != "grad")
    steps = sum(int(e.steps.max()) * p.repeat for p in phases(run) for e in p.events if isinstance(e, Compute))
    assert steps == result.steps_per_epoch * epochs


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("sync", ["local:2:9", "local", "steps:3", "epoch", "grad"])
def test_program_makes_the_allreduces_the_trainer_makes_across_ranks(monkeypatch, sync):
    """The same under MPI, on slices one sample apart (short ranks take smaller or empty last batches):
    every rank makes the program's Allreduces, with momentum, over several cosine epochs."""
    from pnn_mpi.parallel.comm import World

    world = World()
    monkeypatch.setattr("pnn_mpi.training.train.check_interval", lambda batch: 4)
    n, epochs, batch = 16 * world.size + 1, 5, 3
    recorded = recorded_allreduces(monkeypatch)
    cfg = TrainConfig(hidden=(3,), batch_size=batch, epochs=epochs, sync=sync, eval_every=0)
    result = train(cfg, world, tiny_data(n, ranks=world.size, rank=world.rank), log=lambda *_: None)
    run = Run((4, 3, 2), n, world.size, sync, epochs, batch)
    assert run.config() == cfg.resolved(world.size)
    assert_same_allreduces(run, result.clocks[world.rank], recorded)
    assert world.allgather(recorded) == [recorded] * world.size


def test_an_average_carries_the_momentum_but_the_final_one():
    """With momentum every average inside the run passes twice the parameters (and, inside an epoch, the
    stop check's values after them); the final one, the parameters alone."""
    run = Run((4, 3, 2), 74, 2, "local:2:9", 6, 4)
    params = run.parameters
    averages = [e.count for p in all_phases(run) for e in p.events if isinstance(e, Allreduce) and e.purpose == "average"]
    assert set(averages[:-1]) == {2 * params, 2 * params + CHECK_VALUES} and averages[-1] == params
    plain = Run((4, 3, 2), 74, 2, "local:2:9", 6, 4, momentum=0.0)
    counts = {e.count for p in all_phases(plain) for e in p.events if isinstance(e, Allreduce) and e.purpose == "average"}
    assert counts == {params, params + CHECK_VALUES}


def test_a_stop_check_rides_an_average_inside_an_epoch():
    """local:5:64 at batch 32 on 2 ranks: 938 steps an epoch, a check due every 64 steps, an average at least
    every 64: every check inside an epoch rides an average, and only the epochs' ends check on their own."""
    run = Run((4, 3, 2), 60000, 2, "local:5:64", 10, 32)
    checks = [sum(isinstance(e, Allreduce) and e.purpose == "check" for e in p.events) for p in all_phases(run)]
    assert checks[:10] == [1] * 10
    grad = Run((4, 3, 2), 60000, 2, "grad", 10, 32)  # no average to ride: a check every 64 steps and at the end
    assert [sum(isinstance(e, Allreduce) and e.purpose == "check" for e in p.events) for p in all_phases(grad)][:10] == [15] * 10


def test_local_averages_less_often_while_the_rate_is_low():
    """local:8:64 over ten cosine epochs, as the trainer computes its periods: two ranks of batch 32 get
    the defaults' two warm-up epochs (rate at 1/3 and 2/3 of its peak), then the cosine decay; a constant
    rate keeps K once warmed up."""
    run = Run((4, 3, 2), 12800, 2, "local:8:64", 10, 32)  # 200 steps an epoch
    periods = [24, 12, 9, 10, 12, 16, 23, 39, 64, 64]
    assert schedule(run).periods == periods
    assert schedule(replace(run, lr_schedule="constant")).periods == [24, 12, 8, 8, 8, 8, 8, 8, 8, 8]
    epochs = [p for p in all_phases(run)]
    in_epoch = [sum(isinstance(e, Allreduce) and e.purpose == "average" for e in p.events) for p in epochs]
    expected, since = [], 0  # steps since the last average, counted across epoch ends
    for epoch, k in enumerate(periods):
        count = 0
        for s in range(200):
            since += 1
            if since >= k and not (epoch == 9 and s == 199):
                count, since = count + 1, 0
        expected.append(count)
    assert in_epoch == expected + [1]  # and the final average


def test_the_calibration_takes_the_second_epochs_share_of_the_communication():
    """Two epochs of 8 steps a rank: local:2:9 averages 4 times in the first (every 2 steps, the last at its
    end, the others with the stop check riding along) and once in the second (every 4 steps: the cosine rate is at half), then the final average
    of the parameters alone; grad sums as often in both; epoch and end average nowhere in the second."""

    def share(sync: str, ranks: int = 2) -> float:
        return second_epoch_share(Run((4, 3, 2), 32 * ranks, ranks, sync, 2, 4))

    p, ride = Run((4, 3, 2), 64, 2, "local:2:9", 2, 4).parameters, CHECK_VALUES  # averages inside an epoch carry the stop check
    assert share("local:2:9") == pytest.approx((2 * p + ride) / (3 * (2 * p + ride) + 2 * p + (2 * p + ride) + p))
    assert share("grad") == pytest.approx(0.5)
    assert share("epoch") == share("end") == share("local:2:9", ranks=1) == 0.0


def test_the_sweeps_price_local_as_the_trainer_spells_it():
    """Each swept schedule reads back as itself, and both sweeps hold the local schedule with its K and L."""
    for syncs in (predict.SYNCS, predict.QUICK_SYNCS):
        assert [str(Sync.parse(s)) for s in syncs] == list(syncs)
        assert predict.local_schedule() in syncs
    assert Sync.parse(predict.local_schedule()).kind == "local"
    for sync in predict.SYNCS:
        assert report.schedule_words(sync)


def test_phases_repeat_identical_epochs_and_cover_every_sample():
    run = Run((784, 128, 10), 60000, 16, "epoch", 10)
    got = phases(run)
    assert sum(p.repeat for p in got if p.name.startswith("epoch")) == 10
    samples = sum(int(e.samples.sum()) * p.repeat for p in got for e in p.events if isinstance(e, Compute))
    assert samples == 60000 * 10
    assert got[-1].name == "final average"


def hand_priced_toy(plat_link: Link, ranks: int) -> float:
    """The toy run priced by hand: 2 ranks, 8 samples each, batch 8 (one step an epoch), 2 epochs, sync epoch.

    Epoch 1: step, check, parameter average; epoch 2: step, check; then the final average (the epoch's
    last check is where the ranks meet: no barrier follows it).
    Every collective of 2 ranks on one host: a check is one exchange (latency);
    Rabenseifner's average of n bytes is two exchanges of n/2 bytes. The epoch's average carries
    the momentum too (2n bytes of n bytes of parameters), the final one the parameters alone.
    """
    assert ranks == 2
    n = Run((4, 3, 2), 16, 2).parameters * 4
    step, lat, bw = 1e-3, plat_link.latency, plat_link.bandwidth

    def average(nbytes: float) -> float:
        return 2 * (lat + nbytes / 2 / bw)

    return (step + lat + average(2 * n)) + (step + lat) + average(n)


def toy_platform():
    return platforms.built_in("thisvm", toy_calibration())


def test_analytic_model_reproduces_the_hand_priced_toy_run():
    cal = toy_calibration()
    run = Run((4, 3, 2), 16, 2, "epoch", 2, 8)
    got = model.predict(run, toy_platform(), cal)
    assert got.total == pytest.approx(hand_priced_toy(SHM, 2), rel=1e-9)
    assert got.compute == pytest.approx(2e-3)


@needs_simgrid
def test_simgrid_reproduces_the_hand_priced_toy_run():
    cal = toy_calibration()
    run = Run((4, 3, 2), 16, 2, "epoch", 2, 8)
    with simulate.Simulator(toy_platform(), cal) as sim:
        got = sim.predict(run)
    assert got == pytest.approx(hand_priced_toy(SHM, 2), rel=0.01)


@needs_simgrid
@pytest.mark.parametrize("plat_name", ["node", "cluster-25g"])
@pytest.mark.parametrize("sync", ["epoch", "grad"])
@pytest.mark.parametrize("ranks", [4, 32, 64])
def test_simgrid_and_the_analytic_model_agree(plat_name, sync, ranks):
    """Two independent pricings of the same run on the same platform file (the cross-check)."""
    cal = Calibration("toy", 2, {"784-128-10": {"one": StepCost(20e-6, 5e-6), "all": StepCost(20e-6, 5e-6)}}, {"shm": SHM, "tcp": TCP})
    plat = platforms.built_in(plat_name, cal)
    run = Run((784, 128, 10), 4096, ranks, sync, 1)
    with simulate.Simulator(plat, cal) as sim:
        simulated = sim.predict(run)
    assert model.predict(run, plat, cal).total == pytest.approx(simulated, rel=0.05)


def test_each_platform_names_the_rate_its_ranks_compute_at():
    cal = toy_calibration()
    thisvm, twonodes, cluster = (platforms.built_in(n, cal) for n in ("thisvm", "twonodes", "cluster-25g"))
    assert [thisvm.rate(p) for p in (1, 2, 3)] == ["one", "all", "over"]
    assert [twonodes.rate(p) for p in (1, 2, 4)] == ["one", "all", "over"]
    assert [cluster.rate(p) for p in (1, 16, 1024)] == ["all", "all", "all"]


def test_two_ranks_to_a_core_compute_at_the_rate_measured_so():
    """With an "over" cost the oversubscribed run takes it (shared by two), without it the loaded rate (shared by two)."""
    slow, fast = StepCost(3e-3, 0.0), StepCost(1e-3, 0.0)
    run = Run((4, 3, 2), 64, 4, "end", 1, 8)  # 2 steps a rank
    without = Calibration("toy", 2, {"4-3-2": {"one": fast, "all": fast}}, {"shm": SHM, "tcp": TCP})
    with_over = Calibration("toy", 2, {"4-3-2": {"one": fast, "all": fast, "over": slow}}, {"shm": SHM, "tcp": TCP})
    plat = platforms.built_in("twonodes", without)
    assert model.predict(run, plat, without).compute == pytest.approx(2 * 2 * 1e-3)
    assert model.predict(run, plat, with_over).compute == pytest.approx(2 * 2 * 3e-3)


def _with_in_loop(cal: Calibration, key: str, label: str, seconds: float) -> Calibration:
    return Calibration(cal.machine, cal.cores, cal.compute, cal.links, cal.measured, {key: {label: seconds}})


@pytest.mark.parametrize("engine", ["analytic", pytest.param("simgrid", marks=needs_simgrid)])
def test_an_allreduce_measured_between_steps_adds_its_excess_to_every_sync(engine):
    cal = toy_calibration()
    plat = platforms.built_in("twonodes", cal)
    run = Run((4, 3, 2), 64, 2, "grad", 1, 8)  # 4 gradient Allreduces
    price = model.allreduce(plat, 2, run.parameters * 4).total
    measured = _with_in_loop(cal, "twonodes:2", "4-3-2", price + 2e-3)

    def seconds(c: Calibration) -> float:
        if engine == "analytic":
            return model.predict(run, plat, c).total
        with simulate.Simulator(plat, c) as sim:
            return sim.predict(run)

    assert model.in_loop_excess(run, plat, measured) == pytest.approx(2e-3)
    assert seconds(measured) - seconds(cal) == pytest.approx(4 * 2e-3, rel=0.01)
    assert model.in_loop_excess(run.with_ranks(4), plat, measured) == 0.0  # measured at 2 ranks only
    assert model.in_loop_excess(run, platforms.built_in("thisvm", cal), measured) == 0.0  # and on the other platform
    cheaper = _with_in_loop(cal, "twonodes:2", "4-3-2", price / 2)
    assert model.in_loop_excess(run, plat, cheaper) == 0.0  # never a discount on the Allreduce's price


def test_traces_are_complete_for_every_rank(tmp_path):
    run = Run((784, 128, 10), 1000, 3, "steps:5", 2)
    cal = Calibration("toy", 2, {"784-128-10": {"one": StepCost(1e-5, 1e-6), "all": StepCost(1e-5, 1e-6)}}, {"shm": SHM})
    for i, phase in enumerate(phases(run)):
        listing = traces.write(tmp_path / str(i), phase, 3, cal.step_cost(run.sizes, "all"))
        files = listing.read_text().split()
        assert len(files) == 3
        bodies = [Path(f).read_text().splitlines() for f in files]
        for r, lines in enumerate(bodies):
            assert lines[0] == f"{r} init" and lines[-1] == f"{r} finalize"
            assert all(line.split()[0] == str(r) for line in lines)
        collective = [[line.split(" ", 1)[1] for line in b if "compute" not in line] for b in bodies]
        assert collective[0] == collective[1] == collective[2]  # every rank meets every collective
        wanted = sum(isinstance(e, Allreduce) for e in phase.events)
        assert len(collective[0]) == wanted + 2


def test_platform_units_and_clusters():
    assert platforms.parse_bandwidth("25Gbps") == 25e9 / 8
    assert platforms.parse_bandwidth("1.5GBps") == 1.5e9
    assert platforms.parse_latency("10us") == pytest.approx(1e-5)
    plat = platforms.built_in("cluster-100g", toy_calibration())
    assert plat.cores == 16 and len(plat.hosts) == 64
    assert plat.host_link_bandwidth == 100e9 / 8
    assert plat.route.latency == pytest.approx(TCP.latency)
    assert plat.hostfile(20).splitlines() == ["node0"] * 16 + ["node1"] * 4


def test_a_platform_without_clusters_is_refused(tmp_path):
    bad = tmp_path / "p.xml"
    bad.write_text("<platform version='4.1'><zone id='z' routing='Full'><host id='a' speed='1Gf'/></zone></platform>")
    with pytest.raises(Exception, match="no <cluster>"):
        platforms.load(bad)


def test_fit_recovers_a_known_link():
    """Timings made by the model from a known link give that link back."""
    unit_link = Link(42e-6, 2.5e9)
    plat = platforms.from_xml(
        "pair",
        platforms._fill(
            "<platform version='4.1'><zone id='z' routing='Full'><cluster id='c' prefix='h' suffix='' radical='0-0' core='2' "
            "speed='1Gf' bw='{bw}Bps' lat='0s' loopback_bw='{bw}Bps' loopback_lat='{lat}s'/></zone></platform>",
            {"bw": unit_link.bandwidth, "lat": unit_link.latency},
        ),
    )
    timings = {}
    for count in calibrate.COUNTS:
        nbytes = count * 4
        cost = model.barrier(plat, 2) if nbytes < model.SMALL_MESSAGE else model.allreduce(plat, 2, nbytes)
        timings[str(count)] = cost.total
    from pnn_mpi.scaling.measure import _analytic_coefficients

    got = calibrate.fit_link(timings, _analytic_coefficients(True))
    assert got.latency == pytest.approx(unit_link.latency, rel=1e-6)
    assert got.bandwidth == pytest.approx(unit_link.bandwidth, rel=1e-6)


def test_step_cost_line():
    cost = calibrate.step_cost({"8": 1e-3 + 8e-5, "32": 1e-3 + 32e-5})
    assert cost.per_step == pytest.approx(1e-3) and cost.per_sample == pytest.approx(1e-5)


def test_bounds_name_what_stops_scaling():
    rows = []
    for p, (c, lat, bw) in {1: (8.0, 0, 0), 2: (4.0, 0.01, 0.2), 4: (2.0, 0.01, 2.0)}.items():
        rows.append(
            {
                "ranks": p,
                "sync": "grad",
                "model": "m",
                "platform": "x",
                "predicted_seconds": c + lat + bw,
                "compute_seconds": c,
                "latency_seconds": lat,
                "bandwidth_seconds": bw,
            }
        )
    report.add_speedups(rows)
    ((best, why),) = report.bound(rows).values()
    assert best == 2 and why.startswith("bandwidth")


def test_scaling_works_without_simgrid(tmp_path, monkeypatch, capsys):
    """No SimGrid: the analytic model alone, said in one line; the CSV and report are still written."""
    cal = toy_calibration(20e-6, 5e-6)
    cal.compute["784-128-10"] = cal.compute.pop("4-3-2")
    (tmp_path / "cal.json").write_text(cal.to_json())
    monkeypatch.setattr(simulate, "tools", lambda: None)
    assert command.main(["--calibration", str(tmp_path / "cal.json"), "--out", str(tmp_path / "out"), "--quick"]) == 0
    said = capsys.readouterr().out
    assert said.count("analytic alpha-beta model only") == 1
    rows = (tmp_path / "out" / "scaling.csv").read_text().splitlines()
    assert rows[0].startswith("ranks,sync,model,platform,predicted_seconds,speedup,efficiency,measured_seconds")
    assert all(",analytic," in r for r in rows[1:])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "analytic alpha-beta model only" in text and "largest P with at least 80% efficiency" in text
    assert {r.split(",")[1] for r in rows[1:]} == set(predict.QUICK_SYNCS)
    assert all(f"- {s}: {report.schedule_words(s)}" in text for s in predict.QUICK_SYNCS)
    one = [r.split(",") for r in rows[1:] if r.startswith("1,")]
    assert all(math.isclose(float(r[5]), 1.0) for r in one)  # speed-up 1 at one rank


@pytest.mark.slow
def test_validation_figures_come_from_the_runs_the_command_made(tmp_path):
    """``scaling --validate``: every measured figure is the train_seconds of a run it launched and kept."""
    out = tmp_path / "out"
    assert command.main(["--validate", "--quick", "--rounds", "1", "--no-tcp", "--out", str(out)]) == 0
    rows = json.loads((out / "validation.json").read_text())
    assert {(r["platform"], r["ranks"]) for r in rows} == {("thisvm", 1), ("thisvm", 2)}
    for r in rows:
        (run,) = r["runs"]
        metrics = json.loads((Path(run) / "run" / "metrics.json").read_text())
        assert metrics["train_seconds"] == r["train_seconds"]
        assert metrics["ranks"] == r["ranks"] and metrics["config"]["sync"] == r["sync"]
        assert Path(run, "command.txt").read_text().split()[-1] == str(Path(run) / "run")
    csv = (out / "scaling.csv").read_text()
    assert all(f"{r['train_seconds']:.6g}" in csv for r in rows)
    # The validation's calibration measured what only this machine's runs meet, and the 2-rank row used it.
    (folder,) = (out / "validation-runs").glob("round1-*-epoch-calibration")
    cal = Calibration.load(folder / "calibration.json")
    assert set(cal.in_loop) == {"thisvm:2"} and cal.in_loop["thisvm:2"]["784-128-10"] > 0
    assert all("over" in per_rate for per_rate in cal.compute.values())
    two = next(r for r in rows if r["ranks"] == 2 and r["sync"] == "grad")
    assert "in_loop_excess_seconds" in two


def test_a_timeline_is_a_source_of_the_simulated_compute(tmp_path):
    """A real (serial) run's trace gives the step cost; priced back, it reproduces the run's compute."""
    from conftest import write_dataset
    from pnn_mpi.commands.run import run_training
    from pnn_mpi.scaling.from_timeline import apply

    data = write_dataset(tmp_path / "data", train=600, test=20)
    cfg = TrainConfig(
        dataset="custom", data_dir=str(data), hidden=(8,), epochs=2, batch_size=10, sync="epoch", out=str(tmp_path / "run"), timeline=str(tmp_path / "t.json")
    )
    record = run_training(cfg, SerialWorld())
    cal, note = apply(toy_calibration(), tmp_path / "t.json")
    assert "36-8-10" in note
    run = Run((36, 8, 10), 600, 1, "epoch", 2, 10)
    predicted = model.predict(run, platforms.built_in("thisvm", cal), cal)
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    computing = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "compute"]
    # the checks inside an epoch are charged to its compute; the epoch's last one is waiting, outside it
    check_seconds = sum(e["dur"] for e in events if e.get("cat") == "check" and any(a <= e["ts"] < b for a, b in computing)) / 1e6
    assert predicted.compute == pytest.approx(record["timings"]["compute_seconds"]["max"] - check_seconds, rel=1e-6)
