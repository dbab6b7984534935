"""The study: grid files, point expansion, real launches, resuming, failures, and the report.

The real launches use a tiny ``--dataset custom`` set (6x6 images) at P = 1 and 2,
so the whole file runs in well under a minute; nothing asserts on timings.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, write_dataset
from pnn_mpi import study
from pnn_mpi.common.errors import UserError
from pnn_mpi.study import launch as study_launch
from pnn_mpi.study import machine as study_machine
from pnn_mpi.study.findings import accuracy_findings, oversubscription, speedup_findings
from pnn_mpi.study.grid import SETTINGS, load_study, parse_override, shipped_grid
from pnn_mpi.study.machine import Machine, parse_cpuinfo, parse_lscpu
from pnn_mpi.study.progress import Estimate, cost, duration
from pnn_mpi.study.results import Result, error_line
from pnn_mpi.study.stats import accuracy_table, speedup_table
from pnn_mpi.training.options import parse_train_args

PNG = b"\x89PNG\r\n\x1a\n"
# Figures need matplotlib (the "study" extra); without it the real studies run with --no-plots.
try:
    import matplotlib  # noqa: F401
except ImportError:
    HAVE_MATPLOTLIB = False
else:
    HAVE_MATPLOTLIB = True
PLOTS = [] if HAVE_MATPLOTLIB else ["--no-plots"]


def grid(tmp_path, text: str, overrides: dict | None = None):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return load_study(path, overrides)


# --- grid files and their points -------------------------------------------------------------


def test_shipped_grids_expand_to_the_product_of_their_axes():
    for name in ("default", "quick"):
        s = load_study(shipped_grid(name))
        expected = sum(math.prod(len(v) for v in g.axes.values()) * g.repeats for g in s.grids)
        assert len(s.points) == expected
        assert len({p.id for p in s.points}) == len(s.points)
        assert [p.id for p in load_study(shipped_grid(name)).points] == [p.id for p in s.points]  # stable


def test_the_default_grid_holds_the_four_experiments():
    s = load_study(shipped_grid("default"))
    by_plot = {plot: g for g in s.grids for plot in g.plots}
    assert set(by_plot) == {"accuracy", "speedup", "heatmap", "curves"}
    assert set(by_plot["accuracy"].axes["ranks"]) == {1, 2, 4, 8, 16}
    assert {"end", "epoch", "grad"} <= set(by_plot["accuracy"].axes["sync"])
    assert by_plot["speedup"].repeats > 1 and set(by_plot["speedup"].axes["ranks"]) == {1, 2, 4, 8, 16}
    assert by_plot["heatmap"].varying == ["activation", "init"]
    assert set(by_plot["curves"].axes["batch-size"]) == {1, 32, "full"}


def test_point_flags_give_the_trainer_the_point_settings(tmp_path):
    """Precedence fixed < grid fixed < axes < --set, checked through the trainer's own parser."""
    s = grid(
        tmp_path,
        """
        [fixed]
        epochs = 7
        lr = 0.1
        momentum = 0.5
        [grids.g]
        fixed = { epochs = 2, hidden = [16, 8], shuffle = false }
        axes = { lr = [0.2, 0.3], ranks = [1, 3], batch-size = [4, "full"] }
    """,
        overrides={"momentum": 0.0},
    )
    assert len(s.points) == 8
    for p in s.points:
        cfg = parse_train_args(list(p.flags))
        assert cfg.epochs == 2 and cfg.hidden == (16, 8) and cfg.shuffle is False and cfg.momentum == 0.0
        assert cfg.lr == p.axes["lr"] and cfg.batch_size == p.axes["batch-size"] and p.ranks == p.axes["ranks"]
        assert "--out" not in p.flags
    assert {(p.axes["lr"], p.ranks, p.axes["batch-size"]) for p in s.points} == {(lr, r, b) for lr in (0.2, 0.3) for r in (1, 3) for b in (4, "full")}


def test_ids_do_not_depend_on_the_order_of_the_axes(tmp_path):
    a = grid(tmp_path, '[grids.g]\naxes = { sync = ["end", "steps:5"], ranks = [1, 2], seed = [1, 2] }\n')
    b = grid(tmp_path, '[grids.g]\naxes = { seed = [1, 2], ranks = [1, 2], sync = ["end", "steps:5"] }\n')
    assert sorted(p.id for p in a.points) == sorted(p.id for p in b.points)
    assert "g_P2_sync=steps-5_seed=1" in {p.id for p in a.points}
    assert all(os.sep not in p.id and " " not in p.id for p in a.points)


def test_repeats_make_distinct_points_with_the_same_settings(tmp_path):
    s = grid(tmp_path, "[grids.t]\nrepeats = 3\naxes = { ranks = [1, 2] }\n")
    assert len(s.points) == 6 and len({p.id for p in s.points}) == 6
    assert len({(p.flags, p.ranks) for p in s.points}) == 2


@pytest.mark.parametrize(
    "text, named",
    [
        ("[grids.g\naxes = 1", "not valid TOML"),
        ("[grids.g]\naxes = { lrr = [0.1] }", "'lrr'"),
        ("[grids.g]\naxes = { ranks = [0, 2] }", "ranks"),
        ("[grids.g]\naxes = { ranks = 2 }", "ranks"),
        ("[grids.g]\naxes = { lr = [] }", "lr"),
        ("[grids.g]\naxes = { lr = [0.1, 0.1] }", "repeats a value"),
        ('[grids.g]\naxes = { activation = ["relu", "rellu"] }', "rellu"),
        ("[grids.g]\naxes = { lr = [0.1, -1] }", "--lr -1"),
        ('[grids.g]\naxes = { sync = ["steps:0"] }', "steps:0"),
        ('[grids.g]\naxes = { shuffle = ["yes"] }', "shuffle"),
        ("[grids.g]\naxes = { hidden = [128] }", "hidden"),
        ('[grids.g]\nfixed = { out = "x" }', "out"),
        ("[grids.g]\nfixed = { lr = 0.1 }\naxes = { lr = [0.2] }", "both fixed and an axis"),
        ('[grids.g]\nplots = ["pie"]', "plots"),
        ('[grids.g]\nplots = ["accuracy"]\naxes = { sync = ["end", "epoch"] }', "ranks"),
        ('[grids.g]\nplots = ["heatmap"]\naxes = { ranks = [1, 2], lr = [0.1, 0.2], sync = ["end", "epoch"] }', "heatmap"),
        ("[grids.g]\nrepeat = 3", "'repeat'"),
        ("[grids.g]\nrepeats = 0", "repeats"),
        ("[study]\ntimeout = -1\n[grids.g]", "timeout"),
        ("[fixed]\nepochs = 2", "no [grids.NAME]"),
        ('[grids."a b"]', "grid name"),
        ("[setup]\n[grids.g]", "'setup'"),
    ],
)
def test_bad_grids_are_one_user_error_naming_the_problem(tmp_path, text, named):
    with pytest.raises(UserError, match=None) as caught:
        grid(tmp_path, text)
    message = str(caught.value)
    assert named in message and "\n" not in message


def test_a_bad_point_is_named_before_anything_runs(tmp_path):
    with pytest.raises(UserError) as caught:
        grid(tmp_path, "[grids.g]\naxes = { ranks = [1, 2], lr = [0.1, -1] }\n")
    assert "g_P1_lr=-1" in str(caught.value)


def test_overrides_are_read_as_toml_values():
    assert parse_override("epochs=3") == ("epochs", 3)
    assert parse_override("hidden=[64, 32]") == ("hidden", [64, 32])
    assert parse_override("data_dir=/tmp/some dir") == ("data-dir", "/tmp/some dir")
    assert parse_override("shuffle=false") == ("shuffle", False)
    for bad in ("epochs", "=3", "lrr=1", "shuffle=1"):
        with pytest.raises(UserError):
            parse_override(bad)


def test_every_training_setting_is_known_to_the_grid():
    assert {"hidden", "activation", "init", "batch-size", "lr", "sync", "seed", "epochs", "train-size", "ranks"} <= set(SETTINGS)
    assert "out" not in SETTINGS


# --- the machine, the launcher, the clock ------------------------------------------------------


def test_physical_cores_come_from_distinct_core_ids():
    blocks = [f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\n" for cpu in range(4)]  # 2 cores x 2 threads
    topology = parse_cpuinfo("\n".join(blocks))
    assert len(topology) == 4 and len(set(topology.values())) == 2
    lscpu = "# CPU,Core,Socket\n0,0,0\n1,1,0\n2,0,1\n3,1,1\n"  # two sockets: core ids repeat
    assert len(set(parse_lscpu(lscpu).values())) == 4
    detected = study_machine.detect()
    assert 1 <= detected.physical <= detected.logical


def test_quota_caps_the_cores():
    assert Machine(logical=8, physical=4, quota=2.0).cores == 2
    assert Machine(logical=8, physical=4).cores == 4


def test_launch_env_adds_open_mpi_settings_without_overriding_the_user():
    env = study_launch.launch_env({"OMPI_MCA_btl": "self,tcp", "MPIEXEC_TIMEOUT": "7", "PMIX_RANK": "3", "PATH": "/bin"}, 600)
    assert env["OMPI_MCA_btl"] == "self,tcp" and env["MPIEXEC_TIMEOUT"] == "7"
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and env["OMPI_MCA_mpi_yield_when_idle"] == "1" and env["OMP_NUM_THREADS"] == "1"
    assert "PMIX_RANK" not in env
    assert study_launch.launch_env({}, 99)["MPIEXEC_TIMEOUT"] == "99"


def test_launcher_prefers_mpiexec_and_falls_back_to_srun_inside_slurm(tmp_path, monkeypatch):
    """mpiexec reads a SLURM allocation itself; a bare srun with the wrong --mpi plugin would start one-rank jobs."""
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    inside = {"SLURM_JOB_ID": "42", "PATH": str(tmp_path)}
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(beside):
        assert study_launch.resolve_launcher("auto", inside) == [beside]
        assert study_launch.resolve_launcher(None, {"PATH": str(tmp_path)}) == [beside]
        assert study_launch.resolve_launcher("mpiexec --bind-to none", {}) == [beside, "--bind-to", "none"]
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no mpiexec beside it, none on PATH
    assert study_launch.resolve_launcher("auto", inside) == [str(srun)]
    assert study_launch.resolve_launcher(None, inside) == [str(srun)]
    with pytest.raises(UserError, match="'mpiexec' not found"):
        study_launch.resolve_launcher("auto", {"PATH": str(tmp_path)})
    with pytest.raises(UserError, match="no-such-launcher"):
        study_launch.resolve_launcher("no-such-launcher -x", {"PATH": str(tmp_path)})


def test_no_oversubscribing_map_inside_slurm():
    """Inside an allocation Open MPI 5's oversubscribe policy would put every rank on the first node."""
    outside = study_launch.launch_env({}, 10)
    inside = study_launch.launch_env({"SLURM_JOB_ID": "7"}, 10)
    assert outside["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"
    assert "PRTE_MCA_rmaps_default_mapping_policy" not in inside
    assert inside["OMPI_MCA_rmaps_base_oversubscribe"] == "1"


def test_a_stop_request_is_passed_to_the_launch(tmp_path):
    """The launch gets SIGUSR1 when the study is asked to stop, and its exit status comes back."""
    child = "import signal, sys, time; signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75)); time.sleep(60)"
    began = time.monotonic()
    asked = lambda: "SIGUSR1" if time.monotonic() - began > 0.5 else None  # noqa: E731
    outcome = study_launch.run_command([sys.executable, "-c", child], dict(os.environ), 120, tmp_path / "out", tmp_path / "err", asked)
    assert outcome.returncode == 75 and not outcome.timed_out
    assert time.monotonic() - began < 30


def test_a_launch_that_outlives_its_timeout_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(study_launch, "GRACE_SECONDS", 0)
    began = time.monotonic()
    outcome = study_launch.run_command([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), 0.5, tmp_path / "out", tmp_path / "err")
    assert outcome.timed_out and outcome.returncode != 0
    assert time.monotonic() - began < 30


def test_the_estimate_is_calibrated_by_the_launches_made(tmp_path):
    s = grid(tmp_path, "[grids.g]\naxes = { ranks = [1, 16], batch-size = [1, 64] }\n")
    small, *rest = s.points
    estimate = Estimate()
    estimate.record(small, 3 * cost(small))
    assert estimate.seconds_left(rest) == pytest.approx(3 * sum(cost(p) for p in rest))
    by = {(p.ranks, p.axes["batch-size"]): cost(p) for p in s.points}
    assert by[16, 64] > by[1, 64]  # 16 ranks cost more to start than 1
    assert by[1, 1] > by[1, 64]  # per-sample steps cost more than batches
    assert duration(40) == "40 s" and duration(600) == "10 min" and duration(3900) == "1 h 5 min"


def test_the_error_line_skips_open_mpi_boxes():
    stderr = (
        "pnn_mpi: error: --batch-size 400 is larger than a rank's slice\n"
        + "-" * 40
        + "\nprterun detected that one or more processes exited with non-zero status\n"
        + "-" * 40
        + "\n"
    )
    assert error_line(stderr).startswith("pnn_mpi: error: --batch-size 400")
    assert error_line("Traceback\nValueError: boom\n") == "ValueError: boom"


def test_without_matplotlib_plots_say_how_to_install_it(monkeypatch):
    from pnn_mpi.study import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError) as caught:
        plots.require()
    # the installed package's extra (issue 11: ".[study]" only works inside a checkout)
    assert str(caught.value).startswith('plots need matplotlib: pip install "pnn_mpi[study]"')


# --- findings are computed from the numbers ----------------------------------------------------


def fake_result(point, accuracy, local, train, wall=5.0):
    timing = {"mean": 0.1, "min": 0.1, "max": 0.2}
    metrics = {
        "test_accuracy": accuracy,
        "test_loss": 0.3,
        "train_seconds": train,
        "samples_per_second": 1000.0,
        "samples_per_second_per_rank": 500.0,
        "local_test_accuracy": {"mean": local, "min": local, "max": local},
        "timings": {
            "load_seconds": timing,
            "compute_seconds": timing,
            "communication_seconds": timing,
            "wait_seconds": timing,
            "evaluation_seconds": timing,
            "syncs": 3,
            "seconds_per_sync": 0.01,
        },
        "epochs": [{"epoch": 1, "test_accuracy": accuracy}],
        "dataset": {"train_samples": 600},
        "config": {"epochs": 1},
    }
    return Result(point, "ok", metrics, wall)


def test_accuracy_findings_state_the_measured_numbers(tmp_path):
    s = grid(tmp_path, '[grids.a]\nplots = ["accuracy"]\naxes = { ranks = [1, 16], sync = ["end", "epoch"], seed = [1, 2] }\n')
    made = {("end", 16): (0.930, 0.901), ("epoch", 16): (0.963, 0.95)}
    results = []
    for p in s.points:
        acc, local = made.get((p.axes["sync"], p.ranks), (0.97, 0.97))
        shift = 0.002 if p.axes["seed"] == 2 else 0.0
        results.append(fake_result(p, acc + shift, local + shift, 1.0))
    text = " ".join(accuracy_findings(accuracy_table(s.grids[0], results)))
    assert "At P=16, one-shot averaging (`end`) reached 93.1% (\u00b1 0.1 over 2 runs) while its local networks averaged 90.2%" in text
    assert "per-epoch averaging (`epoch`) reached 96.4%" in text
    assert "the best was per-epoch averaging (`epoch`)" in text


def test_speedup_is_the_median_train_time_ratio(tmp_path):
    s = grid(tmp_path, '[grids.s]\nplots = ["speedup"]\nrepeats = 3\naxes = { ranks = [1, 2, 4] }\n')
    times = {1: [4.0, 4.2, 30.0], 2: [2.0, 2.1, 1.9], 4: [1.5, 1.5, 1.7]}
    results = [fake_result(p, 0.9, 0.9, times[p.ranks][p.repeat - 1]) for p in s.points]
    rows = speedup_table(s.grids[0], results)[()]
    assert [r.train for r in rows] == [4.2, 2.0, 1.5]
    assert rows[1].speedup == pytest.approx(2.1) and rows[1].efficiency == pytest.approx(1.05)
    text = " ".join(speedup_findings({(): rows}, Machine(logical=2, physical=2), "600 samples"))
    assert "2.10\u00d7 at P=2" in text and "2.80\u00d7 at P=4 (70% efficiency)" in text
    assert "At P=4 it is oversubscribed" in text and "speed-up beyond 2\u00d7 is not expected" in text


def test_the_oversubscription_sentence_only_when_ranks_outnumber_cores():
    assert "oversubscribed" not in oversubscription([1, 2, 4], Machine(logical=8, physical=4))
    said = oversubscription([1, 2, 4, 8], Machine(logical=8, physical=4))
    assert "oversubscribed" in said and "P=8" in said and "P=4," not in said
    assert "At P=4, P=8 and P=16 it is oversubscribed" in oversubscription([1, 2, 4, 8, 16], Machine(logical=2, physical=2))


# --- real studies ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny"), train=800, test=100, seed=3)


def quick_args(results, data):
    return [
        "--grid",
        "quick",
        "--results",
        str(results),
        "--set",
        "dataset=custom",
        "--set",
        f"data-dir={data}",
        "--set",
        "train-size=600",
        "--set",
        "test-size=100",
        "--set",
        "hidden=[16]",
    ]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory, tiny_data):
    """The shipped quick grid on tiny data, on a machine said to have one core (so P=2 oversubscribes it)."""
    results = tmp_path_factory.mktemp("quick")
    patch = pytest.MonkeyPatch()
    patch.setattr(study_machine, "detect", lambda: Machine(logical=1, physical=1, model="test CPU"))
    try:
        code = study.main(quick_args(results, tiny_data) + PLOTS)
    finally:
        patch.undo()
    return code, results


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_quick_study_writes_complete_rows_figures_and_report(quick_study):
    code, results = quick_study
    assert code == 0
    rows = read_rows(results / "results.csv")
    expected = load_study(shipped_grid("quick"), {"dataset": "custom"}).points
    assert [r["point"] for r in rows] == [p.id for p in expected]
    for r in rows:
        assert r["status"] == "ok"
        for column in (
            "ranks",
            "sync",
            "activation",
            "init",
            "epochs",
            "train_size",
            "test_accuracy",
            "local_accuracy_mean",
            "local_accuracy_min",
            "local_accuracy_max",
            "test_loss",
            "train_seconds",
            "communication_seconds",
            "load_seconds",
            "wall_seconds",
            "startup_seconds",
            "samples_per_second",
        ):
            assert r[column] != "", (r["point"], column)
        assert 0 <= float(r["test_accuracy"]) <= 1 and float(r["train_seconds"]) > 0 and r["train_size"] == "600"
        metrics = (results / "runs" / r["point"] / "metrics.json").read_text()
        assert f'"test_accuracy": {r["test_accuracy"]}' in metrics
    assert {r["ranks"] for r in rows} == {"1", "2"}

    figures = sorted(results.glob("*.png"))
    if HAVE_MATPLOTLIB:
        assert {f.name for f in figures} == {"ranks-accuracy.png", "ranks-speedup.png", "ranks-curves.png", "heat-heatmap.png"}
    else:
        assert figures == []
    assert all(f.read_bytes().startswith(PNG) for f in figures)
    report = (results / "report.md").read_text()
    for f in figures:
        assert f"]({f.name})" in report
    assert "1 physical core (1 logical)" in report and "At P=2 it is oversubscribed" in report
    assert "Open MPI" in report or "MPICH" in report
    best = max(rows[4:], key=lambda r: float(r["test_accuracy"]))
    assert f"The best combination was activation={best['activation']} with init={best['init']}: {float(best['test_accuracy']):.1%}" in report


def test_rerun_skips_finished_points_and_launches_nothing(quick_study, tiny_data, monkeypatch, capsys):
    code, results = quick_study
    before = (results / "results.csv").read_text()

    def no_launch(*args, **kwargs):
        raise AssertionError("a finished point was launched again")

    monkeypatch.setattr(study_launch, "run_command", no_launch)
    assert study.main(quick_args(results, tiny_data) + ["--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "8 already done, 0 to launch" in out and out.count("(skipped)") == 8
    rows, old = read_rows(results / "results.csv"), list(csv.DictReader(before.splitlines()))
    assert [(r["point"], r["test_accuracy"], r["wall_seconds"]) for r in rows] == [(r["point"], r["test_accuracy"], r["wall_seconds"]) for r in old]

    # A changed setting is a different experiment: the same folders no longer count as done.
    assert study.main(quick_args(results, tiny_data) + ["--set", "epochs=1", "--dry-run"]) == 0
    assert "would be skipped" not in capsys.readouterr().out


def test_a_failing_point_is_recorded_and_the_others_run(tmp_path, tiny_data):
    """Batch 400 fits P=1's 600-sample slice but not P=2's 300: only that launch fails."""
    path = tmp_path / "fail.toml"
    path.write_text(f"""
        [fixed]
        dataset = "custom"
        data-dir = "{tiny_data}"
        train-size = 600
        test-size = 100
        hidden = [8]
        epochs = 1
        batch-size = 400
        [grids.f]
        plots = ["accuracy"]
        axes = {{ ranks = [2, 1] }}
    """)
    results = tmp_path / "out"
    assert study.main(["--grid", str(path), "--results", str(results)] + PLOTS) == 1
    rows = {r["point"]: r for r in read_rows(results / "results.csv")}
    assert rows["f_P1"]["status"] == "ok" and rows["f_P1"]["test_accuracy"]
    assert rows["f_P2"]["status"] == "failed" and rows["f_P2"]["test_accuracy"] == ""
    assert "--batch-size 400" in rows["f_P2"]["error"]
    assert "--batch-size 400" in (results / "runs" / "f_P2" / "stderr.txt").read_text()
    report = (results / "report.md").read_text()
    assert "## Failed points" in report and "`f_P2` (failed)" in report
    assert "```\n  pnn_mpi: error: --batch-size 400" in report  # the tail of its stderr


def test_dry_run_launches_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "never"
    assert study.main(["--grid", "default", "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not results.exists()
    total = len(load_study(shipped_grid("default")).points)
    assert f"[{total}/{total}]" in out and "-n 16" in out and "--out" in out


def test_unknown_grid_is_a_user_error():
    with pytest.raises(UserError, match="no such file"):
        study.main(["--grid", "nonexistent-grid"])


def test_a_signalled_study_stops_its_point_and_the_rerun_resumes_it(tmp_path, tiny_data):
    """SIGUSR1 to the study (a batch system's warning): the running point checkpoints, the study
    exits 75 without starting the next point, and running it again resumes that point."""
    import signal
    import subprocess

    from conftest import REPO, clean_env

    path = tmp_path / "grid.toml"
    path.write_text(
        f'[fixed]\ndataset = "custom"\ndata-dir = "{tiny_data}"\nhidden = [16]\nbatch-size = 1\nkernel = "generic"\n'
        'epochs = 40\nsync = "end"\n\n[grids.g]\naxes = { ranks = [2], seed = [1, 2] }\n'
    )
    results = tmp_path / "results"
    command = [sys.executable, "-m", "pnn_mpi", "study", "--grid", str(path), "--results", str(results), "--no-plots"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO)
    first = load_study(path).points[0]
    log = results / "runs" / first.id / "stdout.txt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "epoch  2/40" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "stopped by a signal" in err
    folder = results / "runs" / first.id
    assert json.loads((folder / "launch.json").read_text())["status"] == "stopped"
    assert (folder / "checkpoint.npz").exists()
    assert not (results / "runs" / load_study(path).points[1].id).exists()

    again = subprocess.run(command, capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in (folder / "stdout.txt").read_text()
    assert [r["status"] for r in read_rows(results / "results.csv")] == ["ok", "ok"]


def test_dry_run_commands_work_as_printed_with_nothing_exported(tmp_path, tiny_data, monkeypatch):
    """Issue 11: pasted as printed (the export line, then a command) into a shell whose
    environment has no Open MPI setting, a 2-rank launch runs, as root too."""
    for key in [k for k in os.environ if k.startswith(("OMPI_", "PRTE_", "MPIEXEC_TIMEOUT"))]:
        monkeypatch.delenv(key)
    proc = subprocess.run(
        [sys.executable, "-m", "pnn_mpi", "study", *quick_args(tmp_path / "r", tiny_data), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    exports = next(line.strip() for line in lines if line.strip().startswith("export "))
    command = next(line.strip() for line in lines if " -n 2 " in line)
    ran = subprocess.run(["bash", "-c", f"{exports}; {command}"], capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "parallel network: test accuracy" in ran.stdout


def test_a_report_names_only_the_settings_a_grid_chose(tmp_path):
    """The rate, schedule, warm-up and sync a grid leaves to the defaults rule differ point by point
    once resolved: the report's "Other settings" must not name the first point's (lr 0.025 at batch 16
    on one rank), but must name them when the grid sets them."""
    from pnn_mpi.study.report import _other_settings

    path = tmp_path / "g.toml"
    path.write_text(
        '[study]\ntitle = "t"\n[fixed]\nepochs = 1\n'
        "[grids.ruled]\naxes = { batch-size = [16, 32], ranks = [1, 4] }\n"
        "[grids.set]\nfixed = { lr = 0.2, warmup = 1 }\naxes = { ranks = [1, 4] }\n"
    )
    s = load_study(path)
    results = [fake_result(p, 0.9, 0.9, 1.0) for p in s.points]
    ruled = _other_settings(s.grid("ruled"), results)
    assert "lr=" not in ruled and "warmup=" not in ruled and "sync=" not in ruled and "epochs=1" in ruled
    chosen = _other_settings(s.grid("set"), results)
    assert "`lr=0.2`" in chosen and "`warmup=1`" in chosen and "sync=" not in chosen
