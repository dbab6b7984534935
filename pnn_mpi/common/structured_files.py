"""Reading the JSON, TOML and XML files a command is given: bounded, then checked field by field.

A file a user names (a ``--config``, a run's ``metrics.json``, a ``--calibration``,
a ``--platform``) may be anything: ``/dev/zero``, a FIFO, a gigabyte of brackets,
a valid document of the wrong shape. Each is read here the way model files are
read in ``npz_reader``: at most ``limit + 1`` bytes are ever taken from it; its
nesting is measured before the parser sees it (so deep nesting is one line, not
a ``RecursionError``); XML that declares entities is refused before anything is
expanded; and the parsed value is checked against a small declarative schema
(``Number``, ``Text``, ``Items``, ``Record``, ...) before any value is used.
Every problem is one ``UserError`` naming the file and the field::

    metrics.json: field "epochs[3].test_accuracy" should be a number, not "abc"
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any
from xml.parsers import expat

import tomllib

from .errors import UserError
from .wording import os_reason, quote

MiB = 1 << 20
DEPTH = 64  # deeper than any file pnn_mpi writes or reads (metrics.json: 5)
_JSON_SKIP = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)  # strings: their brackets are text
_TOML_SKIP = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DOTTED = re.compile(r"[\w.\- \t]+")  # runs of key characters and dots (a.b.c = 1, [a.b.c]); one class, so linear


# --- the schema ------------------------------------------------------------------------------


class Schema:
    """What a value must be; ``says`` is how an error line describes it."""

    says = "a value"

    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError


class Mismatch(Exception):
    """A value that is not what its schema says: where it is, and the words for the line."""

    def __init__(self, where: str, words: str):
        super().__init__(words)
        self.where, self.words = where, words


def shown(value: Any) -> str:
    """A value as an error line shows it: short, one line, JSON-like."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return '"' + quote(value, 60) + '"'
    if isinstance(value, (int, float)):
        return quote(repr(value), 60)
    return "a list" if isinstance(value, list) else "a table" if isinstance(value, dict) else f"a {type(value).__name__}"


def _wrong(value: Any, where: str, says: str) -> Mismatch:
    return Mismatch(where, f"should be {says}, not {shown(value)}")


@dataclass(frozen=True)
class Anything(Schema):
    """Any value (its size and depth are still bounded by the reader)."""

    says = "a value"

    def check(self, value: Any, where: str) -> None:
        pass


@dataclass(frozen=True)
class Number(Schema):
    """A number (never a boolean): ``integer``, at least ``low``, at most ``high``, above ``above``."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    above: float | None = None  # exclusive: above=0 is "positive"
    finite: bool = True  # False: NaN and infinities pass (metrics.json writes NaN for an unknown value)

    @property
    def says(self) -> str:  # type: ignore[override]
        kind = "an integer" if self.integer else "a number"
        if self.above == 0 and self.low is None and self.high is None:
            return f"a positive {kind.split()[1]}"
        if self.low is not None and self.high is not None:
            return f"{kind} from {self.low:g} to {self.high:g}"
        bounds = [f"above {self.above:g}"] if self.above is not None else []
        bounds += [f"at least {self.low:g}"] if self.low is not None else []
        bounds += [f"at most {self.high:g}"] if self.high is not None else []
        return f"{kind} {' and '.join(bounds)}" if bounds else kind

    def check(self, value: Any, where: str) -> None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (self.integer and not isinstance(value, int)):
            raise _wrong(value, where, self.says)
        if not math.isfinite(value):
            if self.finite:
                raise _wrong(value, where, f"{self.says} (finite)")
            return
        low_ok = (self.low is None or value >= self.low) and (self.above is None or value > self.above)
        if not low_ok or (self.high is not None and value > self.high):
            raise _wrong(value, where, self.says)


@dataclass(frozen=True)
class Text(Schema):
    """A string of at most ``longest`` characters, matching ``pattern`` when one is given."""

    longest: int = 4096
    pattern: str | None = None
    says: str = "text"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str) or len(value) > self.longest or (self.pattern and not re.fullmatch(self.pattern, value)):
            raise _wrong(value, where, self.says)


@dataclass(frozen=True)
class Flag(Schema):
    says = "true or false"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool):
            raise _wrong(value, where, self.says)


@dataclass(frozen=True)
class Nullable(Schema):
    """``of``, or null (JSON's ``null``: a value a run could not measure)."""

    of: Schema

    @property
    def says(self) -> str:  # type: ignore[override]
        return f"{self.of.says} or null"

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.of.check(value, where)


@dataclass(frozen=True)
class Items(Schema):
    """A list of ``of``, with ``fewest`` to ``most`` items."""

    of: Schema
    most: int = 1 << 20
    fewest: int = 0

    @property
    def says(self) -> str:  # type: ignore[override]
        return f"a list of {self.fewest:,} to {self.most:,} items"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise _wrong(value, where, self.says)
        if not self.fewest <= len(value) <= self.most:
            raise Mismatch(where, f"should be {self.says}, not {len(value):,}")
        for i, item in enumerate(value):
            self.of.check(item, f"{where}[{i}]")


@dataclass(frozen=True)
class Table(Schema):
    """A table of up to ``most`` entries whose keys match ``keys`` and whose values are all ``of``."""

    of: Schema
    most: int = 1 << 16
    keys: str = r"[\s\S]*"
    keys_say: str = "a name"

    says = "a table"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict) or len(value) > self.most:
            raise _wrong(value, where, f"a table of at most {self.most:,} entries")
        for key, item in value.items():
            if not re.fullmatch(self.keys, key):
                raise Mismatch(f"{where}.{key}" if where else key, f"should be named as {self.keys_say}")
            self.of.check(item, f"{where}.{key}" if where else key)


@dataclass(frozen=True)
class Record(Schema):
    """A table with named ``fields``; those in ``required`` must be there. ``closed``: no other keys."""

    fields: Mapping[str, Schema]
    required: frozenset[str] = field(default_factory=frozenset)
    closed: bool = False

    says = "a table"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _wrong(value, where, self.says)
        missing = sorted(self.required - value.keys())
        if missing:
            raise Mismatch(_join(where, missing[0]), "is missing")
        for key, item in value.items():
            if key in self.fields:
                self.fields[key].check(item, _join(where, key))
            elif self.closed:
                raise Mismatch(_join(where, key), f"is not one pnn_mpi knows (known: {', '.join(self.fields)})")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check(value: Any, schema: Schema, label: str, where: str = "") -> Any:
    """``value`` if it is what ``schema`` says, else one UserError naming ``label`` and the field."""
    try:
        schema.check(value, where)
    except Mismatch as exc:
        if not exc.where:
            raise UserError(f"{label}: {exc.words.replace('should be', 'should hold', 1)}") from None
        raise UserError(f'{label}: field "{quote(exc.where, 120)}" {exc.words}') from None
    return value


# --- reading, bounded ------------------------------------------------------------------------


def read_bounded(path: str | os.PathLike, label: str, limit: int) -> bytes:
    """The bytes of ``path``, reading at most ``limit + 1`` of them (``/dev/zero``, a FIFO, a huge file:
    refused after that). A FIFO nobody writes to reads as empty instead of blocking the open."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UserError(f"{label}: {os_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UserError(f"{label}: is a directory, not a file")
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise UserError(f"{label}: {info.st_size:,} bytes, more than the {limit:,} pnn_mpi reads from such a file")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(MiB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise UserError(f"{label}: {os_reason(exc)}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise UserError(f"{label}: more than the {limit:,} bytes pnn_mpi reads from such a file")
    return b"".join(chunks)


def _text(data: bytes, label: str, kind: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{label}: not valid {kind}: {exc}") from None


def nesting(text: str, skip: re.Pattern[str], dotted: bool = False) -> int:
    """How deep brackets nest in ``text``, strings (and comments) left out: measured without recursion.

    ``dotted`` (TOML): also how many dots a dotted key holds, since tomllib takes
    time quadratic in that count (20,000 dots: 6 s)."""
    bare = skip.sub("", text)
    skeleton = _NOT_BRACKET.sub("", bare)
    deepest = max(accumulate(1 if c in "[{" else -1 for c in skeleton), default=0)
    if dotted:
        deepest = max([deepest, *(m.group().count(".") for m in _DOTTED.finditer(bare))])
    return deepest


def value_depth(value: Any) -> int:
    """How deep lists and tables nest in a parsed value (TOML's dotted keys nest without brackets)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(label: str, depth: int) -> UserError:
    return UserError(f"{label}: nested more than {depth} levels deep, deeper than any file pnn_mpi reads")


def parse_json(text: str, label: str, depth: int = DEPTH) -> Any:
    """JSON text parsed after its nesting was measured (NaN and Infinity accepted: metrics.json writes them)."""
    if nesting(text, _JSON_SKIP) > depth:
        raise _too_deep(label, depth)
    try:
        return json.loads(text)
    except RecursionError:
        raise _too_deep(label, depth) from None
    except ValueError as exc:
        raise UserError(f"{label}: not valid JSON ({exc})") from None


def parse_toml(text: str, label: str, depth: int = DEPTH) -> dict:
    """TOML text parsed after its nesting was measured, and measured again parsed (dotted keys)."""
    if nesting(text, _TOML_SKIP, dotted=True) > depth:
        raise _too_deep(label, depth)
    try:
        table = tomllib.loads(text)
    except RecursionError:
        raise _too_deep(label, depth) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{label}: not valid TOML: {exc}") from None
    if value_depth(table) > depth:
        raise _too_deep(label, depth)
    return table


def read_json(path: str | os.PathLike, schema: Schema, label: str | None = None, limit: int = 16 * MiB, depth: int = DEPTH) -> Any:
    """The JSON file at ``path``, bounded and checked against ``schema``."""
    label = label or quote(Path(path))
    value = parse_json(_text(read_bounded(path, label, limit), label, "JSON"), label, depth)
    return check(value, schema, label)


def read_toml(path: str | os.PathLike, schema: Schema, label: str | None = None, limit: int = MiB, depth: int = DEPTH) -> dict:
    """The TOML file at ``path``, bounded and checked against ``schema``."""
    label = label or quote(Path(path))
    return check(parse_toml(_text(read_bounded(path, label, limit), label, "TOML"), label, depth), schema, label)


class _Refused(Exception):
    pass


def parse_xml(data: bytes, label: str, depth: int = DEPTH) -> ET.Element:
    """XML parsed only after a first pass found no entity declaration (no "billion laughs", no
    external entities) and no element nested deeper than ``depth``."""
    scan = expat.ParserCreate()
    level = [0]

    def refuse_entity(name, *_):
        raise _Refused(f"declares the entity {quote(name, 40)}: entities are refused here, never expanded")

    def start(*_):
        level[0] += 1
        if level[0] > depth:
            raise _Refused(f"nested more than {depth} levels deep")

    def end(*_):
        level[0] -= 1

    scan.EntityDeclHandler = refuse_entity
    scan.UnparsedEntityDeclHandler = refuse_entity
    scan.StartElementHandler, scan.EndElementHandler = start, end
    try:
        scan.Parse(data, True)
        return ET.fromstring(data)
    except _Refused as exc:
        raise UserError(f"{label}: {exc}") from None
    except (expat.ExpatError, ET.ParseError) as exc:
        raise UserError(f"{label}: not valid XML ({exc})") from None


def read_xml(path: str | os.PathLike, label: str | None = None, limit: int = 16 * MiB, depth: int = DEPTH) -> tuple[str, ET.Element]:
    """The XML file at ``path``, bounded and refused if it declares entities: its text and its root."""
    label = label or quote(Path(path))
    data = read_bounded(path, label, limit)
    root = parse_xml(data, label, depth)
    return _text(data, label, "XML"), root
