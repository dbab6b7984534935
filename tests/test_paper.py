"""The paper's experiments: grids/paper.toml lists them, paper.py sets the paper's numbers beside ours."""

from __future__ import annotations

import math

import pytest

from pnn_mpi import study
from pnn_mpi.common.errors import UserError
from pnn_mpi.study import paper
from pnn_mpi.study.grid import load_study, shipped_grid
from pnn_mpi.study.results import Result


def test_the_paper_grid_holds_the_papers_configurations():
    """784-256-10 softmax, batch 1, the parallel network scored every epoch; each figure's runs, long training opt-in."""
    s = load_study(shipped_grid("paper"))
    assert s.compare == "paper" and s.left_out == (("long", 3),)
    for p in s.points:
        assert p.config["hidden"] == [256] and p.config["output"] == "softmax-xent" and p.config["batch_size"] == 1
        assert p.config["eval_every"] == 1 and p.config["lr_schedule"] == "constant"
    by_grid = {g.name: [p for p in s.points if p.grid == g.name] for g in s.grids}
    acts = {(p.config["activation"], p.ranks, p.config["sync"]) for p in by_grid["activations-1"] + by_grid["activations-10"]}
    assert acts == {(a, 1, "epoch") for a in paper.ACTIVATION_ORDER} | {(a, 10, s) for a in paper.ACTIVATION_ORDER for s in ("end", "epoch")}
    speed = {(p.ranks, p.config["sync"], p.config["epochs"]) for p in by_grid["learning-speed"]}
    assert speed == {(n, s, 20) for n in (2, 10, 20, 30) for s in ("end", "epoch")}
    long = load_study(shipped_grid("paper"), include=("long",))
    assert {(p.ranks, p.config["epochs"], p.config["sync"]) for p in long.points if p.grid == "long"} == {(n, 300, "end") for n in (2, 10, 20)}


def test_the_dry_run_lists_every_launch_and_names_the_opt_in_grid(tmp_path, capsys):
    assert study.main(["--grid", "paper", "--results", str(tmp_path / "never"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[20/20] learning-speed P=30 sync=epoch" in out and "-n 30" in out and "--hidden 256" in out
    assert "[1/20] activations-1 P=1 activation=tanh" in out
    assert "opt-in grid long (3 points) left out: add --include long to run it" in out
    assert study.main(["--grid", "paper", "--include", "long", "--results", str(tmp_path / "never"), "--dry-run"]) == 0
    assert "[23/23] long P=20" in capsys.readouterr().out and not (tmp_path / "never").exists()
    with pytest.raises(UserError, match="--include nope: .* has no grid of that name"):
        study.main(["--grid", "paper", "--include", "nope", "--dry-run"])


def _result(point, final, per_epoch=()):
    epochs = [{"epoch": e, "test_accuracy": a, "test_confidence": a - 0.01, "train_loss": 0.1} for e, a in per_epoch]
    epochs.append({"epoch": len(epochs) + 1, "test_accuracy": final, "test_confidence": final - 0.01, "train_loss": 0.1})
    return Result(point, "ok", {"test_accuracy": final, "test_confidence": final - 0.01, "epochs": epochs}, 10.0)


def test_the_report_sets_the_papers_values_beside_ours():
    s = load_study(shipped_grid("paper"))
    results = []
    for p in s.points:
        if p.grid.startswith("activations"):
            results.append(_result(p, 0.975 if p.ranks == 1 else 0.943))
        elif p.grid == "learning-speed":
            results.append(_result(p, 0.97, [(e, 0.90 + e / 1000) for e in range(1, 20)]))
    text = "\n".join(paper.report_lines(results, ["paper-activations.png"]))
    assert "## Beside the paper" in text and "![paper-activations.png](paper-activations.png)" in text
    assert "| tanh | 97.5\u201397.8% | 97.50% (96.5) | 94.0\u201394.5% | 94.30% (93.3) | 94.30% (93.3) |" in text
    assert "1 network: 2 of 4 activations land within 0.5 points of the paper's bar (tanh, relu)." in text
    assert "| 2 | `end` | 94.5% / 90.10% (89.1) | 97.2% / 90.50% (89.5) | 97.6% / 91.00% (90.0) | 97.9% / 97.00% (96.0) |" in text
    assert "more networks give lower or equal accuracy at every step" in text


def test_distance_to_a_range():
    assert paper._distance(97.6, (97.5, 97.8)) == 0 and math.isclose(paper._distance(97.0, (97.5, 97.8)), 0.5)
