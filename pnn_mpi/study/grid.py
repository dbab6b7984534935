"""The study's grid file: TOML in, a checked list of launchable points out.

A grid file names settings by the training flags' own names, so anything a run
can be told on the command line can be held fixed or swept. Every point is
turned into training flags and parsed by the trainer's own parser here, before
anything is launched: a typo in the 40th point fails in a second, not after
half an hour of training.

Format (see pnn_mpi/study/grids/default.toml)::

    [study]                       # optional
    title = "..."                 # heading of report.md
    launcher = "auto"             # auto | mpiexec | srun | any command ("mpirun --bind-to none")
    timeout = 600                 # seconds one launch may take
    compare = "paper"             # optional: add the paper's numbers to the report (paper.py)

    [fixed]                       # settings of every point of every grid
    dataset = "mnist"

    [grids.NAME]                  # one or more named sub-grids, run in file order
    about = "..."                 # a sentence for the report
    plots = ["accuracy"]          # accuracy | speedup | curves | heatmap
    repeats = 1                   # identical launches per point (for timings)
    opt-in = true                 # optional: run this grid only when asked (study --include NAME)
    fixed = { epochs = 3 }        # settings of this grid only
    axes = { ranks = [1, 2, 4], sync = ["end", "epoch"], seed = [1, 2] }

``ranks`` (the P of ``mpiexec -n P``) may be fixed or an axis like any flag.
Precedence: [fixed] < the grid's fixed < the grid's axes < ``--set`` overrides.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..common.errors import UserError
from ..common.structured_files import Anything, Table, parse_toml, read_toml
from ..training.config import TrainConfig
from ..training.options import parse_train_args

RANKS = "ranks"
SEED = "seed"
PLOTS = ("accuracy", "speedup", "curves", "heatmap")
STUDIES = Path(__file__).with_name("grids")

_DEFAULTS = {f.name.replace("_", "-"): f.default for f in fields(TrainConfig)}
SETTINGS = tuple(k for k in _DEFAULTS if k != "out") + (RANKS,)  # --out is the study's to choose
_STUDY_KEYS = ("title", "launcher", "timeout", "compare")
_GRID_KEYS = ("about", "plots", "repeats", "fixed", "axes", "opt-in")
COMPARISONS = ("paper",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Grid:
    name: str
    about: str
    plots: tuple[str, ...]
    axes: dict  # axis name -> tuple of values, in the file's order
    repeats: int

    @property
    def varying(self) -> list[str]:
        """The axes that take several values, seeds excepted (seeds are averaged over)."""
        return varying_axes(self.axes)


def varying_axes(axes: dict) -> list[str]:
    """The axes of ``axes`` that take several values, seeds excepted."""
    return [k for k, values in axes.items() if len(values) > 1 and k != SEED]


@dataclass(frozen=True)
class Point:
    grid: str
    id: str
    ranks: int
    axes: dict  # this point's value of each of its grid's axes
    repeat: int  # 1-based; always 1 without repeats
    flags: tuple[str, ...]  # training flags, --out excepted
    config: dict  # the trainer's configuration for these flags, as metrics.json stores it (out excepted)


@dataclass(frozen=True)
class Study:
    source: str
    title: str
    launcher: object  # None (auto), a command string, or a list of words
    timeout: float
    grids: tuple[Grid, ...]
    points: tuple[Point, ...]
    compare: str | None = None  # "paper": the report sets the paper's numbers beside ours
    left_out: tuple[tuple[str, int], ...] = ()  # opt-in grids not included: (name, points)

    def grid(self, name: str) -> Grid:
        return next(g for g in self.grids if g.name == name)


def shipped_grid(name: str) -> Path | None:
    """The grid file shipped with the package under this name (``default``, ``quick``), if any."""
    path = STUDIES / f"{name}.toml"
    return path if _NAME.match(name) and path.is_file() else None


def load_study(path: str | Path, overrides: dict | None = None, include: tuple[str, ...] = ()) -> Study:
    path = Path(path)
    table = read_toml(path, Table(Anything(), most=256), f"--grid {path}")  # bounded; parse_study checks each key
    return parse_study(table, str(path), overrides or {}, include)


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` from ``--set``; the value is read as TOML (``5``, ``[64, 32]``, ``true``), else kept as text."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("_", "-")
    if not sep or not key:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set epochs=2")
    try:
        value = parse_toml(f"v = {raw.strip()}", f"--set {text}")["v"]
    except UserError:  # not TOML (or nested past reason): kept as text, which the setting's check refuses or takes
        value = raw.strip()
    _check_setting(key, value, f"--set {text}")
    return key, value


def parse_study(table: dict, source: str, overrides: dict, include: tuple[str, ...] = ()) -> Study:
    _only(table, ("study", "fixed", "grids"), source)
    head = _table(table.get("study", {}), f"{source} [study]")
    _only(head, _STUDY_KEYS, f"{source} [study]")
    timeout = head.get("timeout", 1800)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise UserError(f"{source} [study] timeout: expected a positive number of seconds, got {timeout!r}")
    launcher = head.get("launcher")
    if launcher is not None and not (isinstance(launcher, str) or (isinstance(launcher, list) and launcher and all(isinstance(w, str) for w in launcher))):
        raise UserError(f'{source} [study] launcher: expected a command such as "mpiexec" or ["srun", "--mpi=pmix"]')

    compare = head.get("compare")
    if compare is not None and compare not in COMPARISONS:
        raise UserError(f"{source} [study] compare: expected one of {', '.join(COMPARISONS)}, got {compare!r}")

    fixed = _settings(table.get("fixed", {}), f"{source} [fixed]")
    grids_table = _table(table.get("grids"), f"{source} [grids]")
    if not grids_table:
        raise UserError(f"{source}: no [grids.NAME] table: a study needs at least one grid")
    for name in include:
        if name not in grids_table:
            raise UserError(f"--include {name}: {source} has no grid of that name ({', '.join(grids_table)})")
    grids, points, left_out = [], [], []
    for name, spec in grids_table.items():
        grid, grid_points = _parse_grid(name, spec, fixed, overrides, source)
        opt_in = _table(spec, name).get("opt-in", False)
        if not isinstance(opt_in, bool):
            raise UserError(f"{source} [grids.{name}] opt-in: expected true or false, got {opt_in!r}")
        if opt_in and name not in include:
            left_out.append((name, len(grid_points)))
            continue
        grids.append(grid)
        points += grid_points
    seen: dict[str, Point] = {}
    for point in points:
        if point.id in seen:
            raise UserError(f"{source}: two points share the id {point.id!r}: make their axis values differ in more than punctuation")
        seen[point.id] = point
    title = head.get("title", f"pnn_mpi study: {Path(source).stem}")
    if not grids:
        raise UserError(f"{source}: every grid is opt-in: name the ones to run with --include")
    return Study(source, str(title), launcher, float(timeout), tuple(grids), tuple(points), compare, tuple(left_out))


def _parse_grid(name: str, spec, fixed: dict, overrides: dict, source: str) -> tuple[Grid, list[Point]]:
    where = f"{source} [grids.{name}]"
    if not _NAME.match(name):
        raise UserError(f"{where}: a grid name may hold only letters, digits, '-' and '_'")
    spec = _table(spec, where)
    _only(spec, _GRID_KEYS, where)
    own = _settings(spec.get("fixed", {}), f"{where} fixed")
    axes = _axes(spec.get("axes", {}), f"{where} axes")
    for key in own.keys() & axes.keys():
        raise UserError(f"{where}: {key} is both fixed and an axis")
    plots = spec.get("plots", [])
    if not isinstance(plots, list) or any(p not in PLOTS for p in plots):
        raise UserError(f"{where} plots: expected a list drawn from {', '.join(PLOTS)}, got {plots!r}")
    for plot in plots:
        problem = _plot_problem(plot, axes)
        if problem:
            raise UserError(f"{where}: {problem}")
    for key, value in overrides.items():  # --set wins over everything: an axis shrinks to that one value
        if key in axes:
            axes[key] = (value,)
    plots = [p for p in plots if not _plot_problem(p, axes)]  # a plot --set has flattened is left out
    settings = {**fixed, **own, **overrides}
    for key in axes:
        settings.pop(key, None)
    repeats = spec.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"{where} repeats: expected a positive whole number, got {repeats!r}")
    about = spec.get("about", "")
    grid = Grid(name, str(about), tuple(plots), axes, repeats)

    points = []
    names = list(axes)
    for combo in itertools.product(*(axes[k] for k in names)):
        values = dict(zip(names, combo))
        for repeat in range(1, repeats + 1):
            points.append(_point(grid, settings, values, repeat, where))
    return grid, points


def _point(grid: Grid, settings: dict, values: dict, repeat: int, where: str) -> Point:
    merged = {**settings, **values}
    ranks = merged.pop(RANKS, 1)
    if "expect-ranks" in SETTINGS:  # the job fails at once if the launcher starts P one-rank jobs instead of one P-rank job
        merged.setdefault("expect-ranks", ranks)
    flags = flag_tokens(merged)
    pid = point_id(grid, ranks, values, repeat)
    try:
        config = parse_train_args(flags).resolved(ranks).as_dict()  # as the run will record it
    except UserError as exc:
        raise UserError(f"{where}: point {pid}: {exc}") from None
    config.pop("out")
    return Point(grid.name, pid, ranks, values, repeat, tuple(flags), config)


def flag_tokens(settings: dict) -> list[str]:
    """The training flags for these settings, in a stable (sorted) order."""
    tokens: list[str] = []
    for key in sorted(settings):
        value = settings[key]
        if isinstance(value, bool):
            if value != _DEFAULTS.get(key):  # --resume is store_true, --shuffle has --no-shuffle: say only a change
                tokens.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, (list, tuple)):
            tokens += [f"--{key}", *(str(v) for v in value)]
        else:
            tokens += [f"--{key}", str(value)]
    return tokens


def render(value) -> str:
    """A value as it appears in point ids and labels: 128x64, on/off, 0.05, steps:20."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value) or "none"
    return str(value)


def point_id(grid: Grid, ranks: int, values: dict, repeat: int) -> str:
    """A readable, stable id: the grid, P, then the other axes alphabetically, seed and repeat last.

    It depends only on the axis values, not on their order in the file, so
    reordering a grid's axes does not orphan finished runs.
    """
    keys = sorted(k for k in values if k not in (RANKS, SEED))
    parts = [grid.name, f"P{ranks}", *(f"{k}={render(values[k])}" for k in keys)]
    if SEED in values:
        parts.append(f"seed={values[SEED]}")
    if grid.repeats > 1:
        parts.append(f"r{repeat}")
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", "_".join(parts))


def _plot_problem(plot: str, axes: dict) -> str:
    """Why ``plot`` cannot be drawn from a grid with these axes ('' if it can)."""
    varying = varying_axes(axes)
    if plot in ("accuracy", "speedup") and RANKS not in varying:
        return f"plot {plot!r} needs an axis ranks with several values"
    if plot == "heatmap" and len(varying) != 2:
        return f"plot 'heatmap' needs exactly two axes with several values besides seed (found: {', '.join(varying) or 'none'})"
    return ""


def _settings(table, where: str) -> dict:
    table = _table(table, where)
    out = {}
    for key, value in table.items():
        name = _key(key, where)
        _check_setting(name, value, f"{where} {name}")
        out[name] = value
    return out


def _axes(table, where: str) -> dict:
    table = _table(table, where)
    out = {}
    for key, values in table.items():
        name = _key(key, where)
        if not isinstance(values, list) or not values:
            raise UserError(f"{where} {name}: an axis is a non-empty list of values, got {values!r}")
        for value in values:
            _check_setting(name, value, f"{where} {name}")
        hashable = tuple(tuple(v) if isinstance(v, list) else v for v in values)
        if len(set(map(repr, hashable))) != len(hashable):
            raise UserError(f"{where} {name}: the axis repeats a value: {values!r}")
        out[name] = hashable
    return out


def _key(key: str, where: str) -> str:
    name = key.replace("_", "-")
    if name == "out":
        raise UserError(f"{where}: out is chosen by the study (RESULTS/runs/POINT); leave it out")
    if name not in SETTINGS:
        raise UserError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(SETTINGS))})")
    return name


def _check_setting(key: str, value, where: str) -> None:
    """Type checks the trainer's parser cannot make (a TOML bool or list where a number belongs)."""
    _key(key, where)
    default = _DEFAULTS.get(key, 1)
    if key == RANKS:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        expected = "a positive whole number of ranks"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        expected = "a list of layer widths, e.g. [128, 64]"
    else:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        expected = "a single number or word"
    if not ok:
        raise UserError(f"{where}: expected {expected}, got {value!r}")


def _table(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a table, got {value!r}")
    return value


def _only(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")
