"""``python -m pnn_mpi plot RUN_DIR``: one run's curves from its ``metrics.json``, as a PNG.

Three panels a user can read at a glance: the training loss per epoch; the
parallel network's test accuracy per epoch (and the validation accuracy when
the run held out a validation set); and the final parallel network against
the spread of the local networks it was averaged from -- the paper's point,
that the average beats the networks it is made of. matplotlib is optional:
imported only here, and its absence is one line saying what to install.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

from ..common.errors import UserError
from ..common.files import write_atomically
from ..common.structured_files import Anything, Items, MiB, Nullable, Number, Record, Table, Text, read_json

INSTALL_HINT = 'plots need matplotlib: pip install "pnn_mpi[plot]"'
FILE = "curves.png"


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend (no display needed), or one UserError naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return plt


_MEASURE = Nullable(Number(finite=False))  # NaN or null: not measured; drawn as a gap
_EPOCH = Record({"epoch": Number(integer=True, low=1), "train_loss": _MEASURE, "test_accuracy": _MEASURE, "val_accuracy": _MEASURE}, frozenset({"epoch"}))
# What draw() reads from metrics.json; the rest of the record is not used here.
METRICS = Record(
    {
        "epochs": Items(_EPOCH, most=1 << 20, fewest=1),
        "early_stop": Nullable(Record({"best_epoch": Nullable(Number(integer=True, low=0))})),
        "local_test_accuracy": Nullable(Record({"per_rank": Items(_MEASURE)})),
        "test_accuracy": _MEASURE,
        "config": Table(Anything(), most=1024),
        "dataset": Record({"name": Text(200)}),
        "ranks": Number(integer=True, low=1),
        "mpi_library": Text(1000),
    },
    frozenset({"epochs"}),
)


def read_metrics(run: Path) -> dict:
    """A run's metrics.json, read bounded and checked field by field before anything is drawn."""
    path = run / "metrics.json" if run.is_dir() else run
    if not path.exists():
        raise UserError(f"{path}: no such file (give the folder of a finished run: it holds metrics.json)")
    return read_json(path, METRICS, limit=256 * MiB)


def _points(epochs: list[dict], key: str) -> tuple[list[int], list[float]]:
    found = [(e["epoch"], e[key]) for e in epochs if isinstance(e.get(key), (int, float)) and math.isfinite(e[key])]
    return [x for x, _ in found], [y for _, y in found]


def draw(record: dict, out: Path, title: str = "") -> Path:
    """Draw ``record``'s three panels into ``out`` (PNG); returns ``out``."""
    plt = require_matplotlib()
    epochs = record["epochs"]
    fig, (loss_ax, acc_ax, net_ax) = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 1, 0.8]})

    x, y = _points(epochs, "train_loss")
    loss_ax.plot(x, y, marker="o", color="tab:blue")
    loss_ax.set(title="training loss (mean over all ranks)", xlabel="epoch", ylabel="loss")

    x, y = _points(epochs, "test_accuracy")
    acc_ax.plot(x, [100 * v for v in y], marker="o", color="tab:green", label="test (parallel network)")
    x, y = _points(epochs, "val_accuracy")
    if x:
        acc_ax.plot(x, [100 * v for v in y], marker="s", color="tab:orange", label="validation (parallel network)")
    stopped = record.get("early_stop", {}) or {}
    if stopped.get("best_epoch"):
        acc_ax.axvline(stopped["best_epoch"], color="grey", linestyle=":", label=f"best epoch {stopped['best_epoch']}")
    acc_ax.set(title="accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
    acc_ax.legend(loc="lower right", fontsize="small")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)

    local = record.get("local_test_accuracy") or {}
    per_rank = [100 * v for v in local.get("per_rank", []) if isinstance(v, (int, float)) and math.isfinite(v)]
    final = record.get("test_accuracy")
    if per_rank:
        net_ax.scatter(range(len(per_rank)), per_rank, color="tab:grey", zorder=3, label="local networks (before the average)")
        net_ax.axhspan(min(per_rank), max(per_rank), color="tab:grey", alpha=0.15)
        net_ax.axhline(sum(per_rank) / len(per_rank), color="tab:grey", linestyle="--", label="their mean")
    if isinstance(final, (int, float)) and math.isfinite(final):
        net_ax.axhline(100 * final, color="tab:red", linewidth=2, label=f"parallel network {final:.2%}")
    net_ax.set(title="parallel vs local networks (test)", xlabel="rank", ylabel="accuracy (%)")
    if per_rank:
        net_ax.set_xticks(range(len(per_rank)))
    net_ax.legend(loc="best", fontsize="small")
    net_ax.grid(alpha=0.3)

    config = record.get("config", {})
    fig.suptitle(
        title
        or (
            f"{record.get('dataset', {}).get('name', '')}: {record.get('ranks', '?')} rank{'s' * (record.get('ranks') != 1)}, sync {config.get('sync', '?')}, "
            f"hidden {config.get('hidden', '?')}, batch {config.get('batch_size', '?')}, {record.get('mpi_library', '')}"
        )
    )
    fig.tight_layout()
    try:
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        write_atomically(out, png.getvalue())  # whole, and never through a link planted where it goes
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the plot ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out


def plot_run(run: Path, out: Path | None = None) -> Path:
    """The PNG of the run in folder ``run`` (default ``run/curves.png``)."""
    record = read_metrics(Path(run))
    target = Path(out) if out else (Path(run) if Path(run).is_dir() else Path(run).parent) / FILE
    return draw(record, target, title="")


def main(argv: list[str]) -> int:
    from ..training.options import Parser

    p = Parser(
        prog="python -m pnn_mpi plot",
        description="Draw a run's curves from its metrics.json as a PNG: training loss and "
        "accuracy per epoch, and the parallel network against the spread of the local networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"needs matplotlib: {INSTALL_HINT.split(': ', 1)[1]}",
    )
    p.add_argument("run", metavar="RUN_DIR", help="the --out folder of a run (or its metrics.json)")
    p.add_argument("--out", metavar="PNG", help=f"where to write the figure (default: RUN_DIR/{FILE})")
    args = p.parse_args(argv)
    print(f"wrote {plot_run(Path(args.run), Path(args.out) if args.out else None)}")
    return 0
