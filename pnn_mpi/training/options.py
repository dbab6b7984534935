"""The command-line options: argparse helpers every command shares, and the training flags.

``Parser`` turns argparse's errors into UserErrors (one line, printed once);
``positive_int`` and friends are the argument types; ``train_parser`` holds the
training flags, and ``parse_train_args`` reads flags and a ``--config`` TOML
file (turned into the same flags; a flag on the command line wins wherever it stands) into one
``TrainConfig``, so both go through one parser and one validation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common.errors import STOP_EXIT_CODE, UserError
from ..common.structured_files import Anything, Table, read_toml
from ..common.version import __version__
from ..common.wording import quote
from ..data.datasets import DATASETS
from ..nn.activations import ACTIVATIONS
from ..nn.initializers import INITIALIZERS
from ..nn.losses import OUTPUTS
from ..nn.optim import SCHEDULES
from .config import DTYPES, FULL_BATCH, KERNELS, ON_RANK_FAILURE, TrainConfig
from .defaults import HELP as FOLLOWS
from .defaults import rule_lines

_DEFAULTS = TrainConfig()


MODULE_PROG = "python -m pnn_mpi"


def program_name() -> str:
    """How the user called us: the ``pnn-mpi`` script, or ``python -m pnn_mpi``."""
    return "pnn-mpi" if Path(sys.argv[0]).name == "pnn-mpi" else MODULE_PROG


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors: one line, printed once.

    A ``prog`` of ``python -m pnn_mpi ...`` becomes ``pnn-mpi ...`` when the script was used."""

    def __init__(self, *args, **kwargs):
        prog = kwargs.get("prog")
        if prog and prog.startswith(MODULE_PROG + " ") or prog == MODULE_PROG:
            kwargs["prog"] = program_name() + prog[len(MODULE_PROG) :]
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(message)


def whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a number of at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return whole_number(text, 0)


def batch_size_or_full(text: str) -> int | str:
    return FULL_BATCH if text == FULL_BATCH else positive_int(text)


def train_parser() -> Parser:
    # A declarative table of the training flags, one add_argument each: longer than ~60 lines, and clearer whole.
    p = Parser(
        prog="python -m pnn_mpi",
        description=(
            "Train a parallel neural network: every MPI rank trains the same network on its own\n"
            "slice of the training set, and the ranks' parameters are averaged with one Allreduce.\n"
            "Run under a launcher (mpiexec -n 16 python -m pnn_mpi) or alone as the 1-rank,\n"
            "sequential case."
        ),
        epilog=(
            "other commands (each has --help):\n"
            "  launch     start N ranks with the right mpiexec and settings: launch -n 16 [flags]\n"
            "  download   fetch a dataset from public mirrors and verify its checksums\n"
            "  evaluate   score a saved model on a test set\n"
            "  predict    print or save a saved model's predictions for IDX or .npy images\n"
            "  resume-ranks  print how many ranks a run folder's checkpoint resumes with (for job scripts)\n"
            "  bench      measure samples/s per rank and the cost of a parameter sync\n"
            "  study      run a grid of launches (ranks, sync, activation, ...): results.csv, plots, report.md\n"
            "  plot       draw a run's curves from its metrics.json as a PNG\n"
            "  scaling    calibrate here, then simulate 1 to 1,024 ranks per sync schedule: scaling.csv, plot, report.md\n"
            "\n"
            "defaults that follow the gradient mode (measured: docs/science.md); a value you set,\n"
            "by flag or in --config, always wins:\n" + "\n".join(rule_lines()) + "\n"
            "\n"
            "A TOML file given with --config may set any option, by its flag name\n"
            '(e.g. hidden = [128, 64], lr = 0.1, sync = "epoch"); a flag given on the command line wins,\n'
            "before or after --config."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = _DEFAULTS
    p.add_argument("--version", action="version", version=f"pnn_mpi {__version__}", help="print the version and exit")
    net = p.add_argument_group("network")
    net.add_argument(
        "--hidden",
        type=positive_int,
        nargs="*",
        metavar="N",
        default=list(d.hidden),
        help=f"widths of the hidden layers, e.g. --hidden 128 64; none for a linear model (default: {' '.join(map(str, d.hidden))})",
    )
    net.add_argument("--activation", choices=list(ACTIVATIONS), default=d.activation, help=f"hidden-layer activation (default: {d.activation})")
    net.add_argument(
        "--output",
        choices=list(OUTPUTS),
        default=d.output,
        help=f"output layer and loss: softmax + cross-entropy, or sigmoid + mean squared error (default: {d.output})",
    )
    net.add_argument(
        "--init",
        choices=list(INITIALIZERS),
        default=d.init,
        help=f"weight initialisation; uniform/normal have scale 1/sqrt(fan_in), xavier = Glorot (default: {d.init})",
    )
    net.add_argument("--bias-init", type=float, default=d.bias_init, metavar="B", help=f"initial value of every bias (default: {d.bias_init})")
    net.add_argument("--dtype", choices=DTYPES, default=d.dtype, help=f"floating-point type of parameters and inputs (default: {d.dtype})")
    net.add_argument(
        "--kernel",
        choices=KERNELS,
        default=d.kernel,
        help="how steps run. Batch 1: numba (compiled; needs numba) or numpy kernels, many samples per call; "
        "auto = numba when installed, else numpy; generic = the plain step. Mini-batches: numba runs the steps "
        "between two collectives in one compiled call, about 1.4x as fast (same model to rounding, ~100 MiB more per rank); "
        f"the others take the numpy step (default: {d.kernel})",
    )

    opt = p.add_argument_group("training")
    opt.add_argument(
        "--batch-size",
        type=batch_size_or_full,
        default=d.batch_size,
        metavar="N|full",
        help=f"samples per SGD step on each rank: 1 = stochastic (per-sample updates, the paper's mode), "
        f"N = mini-batch, 'full' = the whole slice (default: {d.batch_size})",
    )
    opt.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default: {FOLLOWS['lr']})")
    opt.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum in [0, 1); 0 = plain SGD (default: {d.momentum}, in every mode)")
    opt.add_argument(
        "--lr-decay", type=float, default=d.lr_decay, metavar="F", help=f"multiply the learning rate by F after every epoch (default: {d.lr_decay}, constant)"
    )
    opt.add_argument(
        "--lr-schedule",
        choices=SCHEDULES,
        default=d.lr_schedule,
        help=f"the rate over the epochs: constant, or cosine (from --lr down towards 0 by the last epoch) (default: {FOLLOWS['lr_schedule']})",
    )
    opt.add_argument(
        "--warmup",
        type=non_negative_int,
        default=d.warmup,
        metavar="E",
        help=f"raise the rate linearly over the first E epochs (epoch e < E runs at (e+1)/(E+1) of it) (default: {FOLLOWS['warmup']})",
    )
    opt.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"passes over each rank's slice (default: {d.epochs})")
    opt.add_argument(
        "--sync",
        default=d.sync,
        metavar="SCHEDULE",
        help="when ranks average: 'end' (train locally, average once at the end: the paper's scheme), "
        "'epoch' (average parameters after every epoch), 'steps:K' (every K steps), "
        "'local:K:L' (every K steps at the peak rate, less often while the rate is lower, at most every L), "
        "'grad' (average gradients every step, as Horovod/DDP); every parameter average carries the momentum too "
        f"(default: {FOLLOWS['sync']})",
    )
    opt.add_argument("--seed", type=non_negative_int, default=d.seed, help=f"seed of the initial weights and of each rank's shuffling (default: {d.seed})")
    opt.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=d.shuffle, help="reshuffle each rank's slice every epoch (default: on)")
    opt.add_argument(
        "--eval-every",
        type=non_negative_int,
        default=d.eval_every,
        metavar="E",
        help=f"score the parallel network on the test set every E epochs; 0 = only at the end (default: {d.eval_every})",
    )

    opt.add_argument(
        "--val-size",
        type=non_negative_int,
        default=d.val_size,
        metavar="N",
        help="hold out N training samples (after the ones trained on), sliced across the ranks like the rest, "
        "and score the parallel network on them every epoch; the test set is then scored only at the end "
        f"(default: {d.val_size}, none)",
    )
    opt.add_argument(
        "--early-stop",
        type=non_negative_int,
        default=d.early_stop,
        metavar="K",
        help=f"stop when the validation accuracy has not improved for K epochs (needs --val-size; recorded in metrics.json) (default: {d.early_stop}, never)",
    )
    opt.add_argument(
        "--progress-every",
        type=float,
        default=d.progress_every,
        metavar="SECONDS",
        help="inside an epoch that lasts longer, rank 0 prints a progress line about every SECONDS "
        f"(plain lines, for logs too); 0 = none (default: {d.progress_every:g})",
    )

    data = p.add_argument_group("data and output")
    data.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default=d.dataset,
        help=f"which dataset; 'custom' = your own IDX files in --data-dir, with no known checksums (default: {d.dataset})",
    )
    data.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the folder holding the four IDX files (raw or .gz), and the only place looked in; if omitted: "
        "$PNN_MPI_DATA/DATASET, $PNN_MPI_DATA, ./data/DATASET, ~/.cache/pnn_mpi/DATASET, /usr/share/datasets/DATASET",
    )
    data.add_argument("--train-size", type=positive_int, metavar="N", help="use only the first N training samples")
    data.add_argument("--test-size", type=positive_int, metavar="N", help="use only the first N test samples")
    data.add_argument("--out", metavar="DIR", help="where rank 0 saves model.npz and metrics.json (default: runs/DATASET-nRANKS-TIME)")
    data.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=d.plot,
        help='also draw OUT/curves.png (loss, accuracy, parallel vs local networks; needs matplotlib: pip install "pnn_mpi[plot]")',
    )
    data.add_argument("--config", metavar="FILE", help="read options from a TOML file; a flag given on the command line wins, before or after --config")
    data.add_argument(
        "--timeline",
        metavar="FILE",
        help="write where every rank's time goes (data load, compute, sync Allreduce, waiting, scoring, "
        "checkpoints, signals) as one Chrome trace-event JSON file: open it in ui.perfetto.dev",
    )

    jobs = p.add_argument_group("long runs and batch jobs")
    jobs.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=d.checkpoint_every,
        metavar="E",
        help="write OUT/checkpoint.npz every E epochs (0 = only when stopped by a signal). SIGINT (Ctrl-C), SIGTERM or SIGUSR1 "
        f"always makes every rank finish its step, write a checkpoint and exit with status {STOP_EXIT_CODE}",
    )
    jobs.add_argument(
        "--resume",
        action="store_true",
        help="continue the run whose checkpoint is in --out (same flags, same number of ranks: after lost ranks, as many as survived); "
        "starts from scratch when there is no checkpoint yet",
    )
    jobs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the finished run in --out (its model.npz, metrics.json, checkpoint, curves.png, timeline); "
        "without it, a --out holding a finished run is refused before training",
    )
    jobs.add_argument(
        "--expect-ranks", type=positive_int, metavar="N", help="fail unless MPI started exactly N ranks (catches a launcher that starts N one-rank jobs)"
    )
    jobs.add_argument(
        "--on-rank-failure",
        choices=ON_RANK_FAILURE,
        default=d.on_rank_failure,
        help="when a rank dies: 'abort' ends the job (resume from the last checkpoint), 'continue' lets the "
        "survivors roll back to their last common state and train on without it (needs Open MPI 5 "
        f"and mpiexec --with-ft ulfm; see docs/rank-failure.md) (default: {d.on_rank_failure})",
    )
    jobs.add_argument(
        "--stall-timeout",
        type=float,
        default=d.stall_timeout,
        metavar="SECONDS",
        help="a rank that gives no sign of life or makes no progress for SECONDS (stopped, frozen node, an endless loop) ends the job "
        "with one line naming it (status 3); "
        "with --on-rank-failure continue it counts as lost instead, is killed if on a survivor's node, and the others go on; "
        f"0 = wait for it (default: {d.stall_timeout:g})",
    )
    return p


# A config's settings: each key and value is checked against its flag below; the reader bounds the rest.
CONFIG_SCHEMA = Table(Anything(), most=256)


def config_tokens(parser: Parser, path: str) -> list[str]:
    """The flags equivalent to a TOML config file."""
    table = read_toml(path, CONFIG_SCHEMA, f"--config {quote(path)}")  # bounded: /dev/zero or deep nesting is one line
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config", "version")}
    tokens: list[str] = []
    for key, value in table.items():
        action = actions.get(key.replace("-", "_"))
        if action is None:
            known = ", ".join(sorted(k.replace("_", "-") for k in actions))
            raise UserError(f"--config {quote(path)}: unknown setting {quote(repr(key))} (known: {known})")
        flag = action.option_strings[0]
        if action.nargs == 0:  # a switch (--resume, --shuffle/--no-shuffle, ...): true or false, as on the command line
            if not isinstance(value, bool):
                raise UserError(f"--config {quote(path)}: {quote(key)} must be true or false, not {quote(value)}")
            if isinstance(action, argparse.BooleanOptionalAction):
                tokens.append(flag if value else f"--no-{flag[2:]}")
            elif value == action.const:
                tokens.append(flag)
            elif value != action.default:
                raise UserError(f"--config {quote(path)}: {quote(key)} can only be {str(action.const).lower()}")
        elif isinstance(value, list):
            if action.nargs not in ("*", "+"):
                raise UserError(f"--config {quote(path)}: {quote(key)} takes one value, not a list")
            tokens += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            raise UserError(f"--config {quote(path)}: {quote(key)} must be a value, not a table")
        else:
            tokens += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return tokens


def parse_train_args(argv: list[str]) -> TrainConfig:
    parser = train_parser()
    pre = Parser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    tokens = config_tokens(parser, known.config) if known.config else []
    if tokens:  # check the file's values on their own, so an error names the file
        try:
            alone = vars(parser.parse_args(tokens))
            alone.pop("config")
            TrainConfig(**alone)
        except UserError as exc:
            raise UserError(f"--config {quote(known.config)}: {exc}") from None
    args = parser.parse_args(tokens + list(argv))
    values = vars(args)
    values.pop("config")
    return TrainConfig(**values)
