"""The bounded, typed reader (structured_files): sizes, nesting, entities and schema errors, each one line."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time

import pytest

from pnn_mpi.common.errors import UserError
from pnn_mpi.common.structured_files import (
    Flag,
    Items,
    Nullable,
    Number,
    Record,
    Table,
    Text,
    check,
    parse_json,
    parse_toml,
    parse_xml,
    read_bounded,
    read_json,
    read_toml,
)

EPOCHS = Record({"epochs": Items(Record({"epoch": Number(integer=True, low=1), "test_accuracy": Nullable(Number())}, frozenset({"epoch"})), fewest=1)})

SCHEMA_CASES = {
    # name: (value, the error line; None: accepted)
    "good": ({"epochs": [{"epoch": 1, "test_accuracy": 0.9}, {"epoch": 2, "test_accuracy": None}]}, None),
    "text-for-number": (
        {"epochs": [{"epoch": 1}] * 3 + [{"epoch": 4, "test_accuracy": "abc"}]},
        'm.json: field "epochs[3].test_accuracy" should be a number, not "abc"',
    ),
    "bool-for-number": ({"epochs": [{"epoch": True}]}, 'm.json: field "epochs[0].epoch" should be an integer at least 1, not true'),
    "float-for-integer": ({"epochs": [{"epoch": 1.5}]}, 'm.json: field "epochs[0].epoch" should be an integer at least 1, not 1.5'),
    "out-of-range": ({"epochs": [{"epoch": 0}]}, 'm.json: field "epochs[0].epoch" should be an integer at least 1, not 0'),
    "nan-where-finite": ({"epochs": [{"epoch": 1, "test_accuracy": float("nan")}]}, 'field "epochs[0].test_accuracy" should be a number (finite), not nan'),
    "missing": ({"epochs": [{}]}, 'm.json: field "epochs[0].epoch" is missing'),
    "empty-list": ({"epochs": []}, 'm.json: field "epochs" should be a list of 1 to 1,048,576 items, not 0'),
    "table-for-list": ({"epochs": {"a": 1}}, 'm.json: field "epochs" should be a list of 1 to 1,048,576 items, not a table'),
    "list-at-the-top": ([1], "m.json: should hold a table, not a list"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_errors_name_the_file_and_the_field(case):
    value, expect = SCHEMA_CASES[case]
    if expect is None:
        assert check(value, EPOCHS, "m.json") is value
        return
    with pytest.raises(UserError) as info:
        check(value, EPOCHS, "m.json")
    assert expect in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "schema, value, words",
    [
        (Number(above=0), 0, "a positive number"),
        (Number(integer=True, low=1, high=8), 9, "an integer from 1 to 8"),
        (Text(4), "abcdef", "text"),
        (Flag(), "yes", "true or false"),
        (Table(Number(), keys=r"\d+", keys_say="a number"), {"x": 1}, "should be named as a number"),
        (Record({"a": Number()}, closed=True), {"b": 1}, "is not one pnn_mpi knows (known: a)"),
    ],
)
def test_each_schema_says_what_it_wants(schema, value, words):
    with pytest.raises(UserError, match=re.escape(words)):
        check(value, schema, "f")


@pytest.mark.parametrize("text", ["k" * 500_000 + " = 1", "a = 1\n" + "b" * 500_000, "[" + "t" * 500_000 + "]"], ids=["key", "bare", "header"])
def test_long_runs_without_dots_are_measured_in_linear_time(text):
    """Counting a dotted key's dots must not backtrack over a long run of key characters (quadratic: minutes)."""
    start = time.monotonic()
    with contextlib.suppress(UserError):
        parse_toml(text, "x")
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    "parse, text",
    [
        (parse_json, "[" * 100_000),
        (parse_json, '{"a": ' * 100_000),
        (parse_toml, "a = " + "[" * 100_000),
        (parse_toml, "a = " + "{b = " * 100_000),
        (parse_toml, "a" + ".a" * 100_000 + " = 1"),  # tomllib: quadratic in the dots (minutes)
        (parse_toml, "[a" + ".a" * 100_000 + "]"),
    ],
    ids=["json-list", "json-object", "toml-array", "toml-inline-table", "toml-dotted-key", "toml-header"],
)
def test_deep_nesting_is_one_line_in_well_under_a_second(parse, text):
    start = time.monotonic()
    with pytest.raises(UserError, match=r"^x: nested more than 64 levels deep"):
        parse(text, "x")
    assert time.monotonic() - start < 2


def test_brackets_inside_strings_and_comments_are_not_nesting():
    assert parse_json('{"a": "' + "[" * 1000 + '"}', "x") == {"a": "[" * 1000}
    assert parse_toml("a = '" + "{" * 1000 + "' # " + "[" * 1000 + '\nb = """' + "[" * 1000 + '"""', "x")["a"] == "{" * 1000


def test_dev_zero_reads_at_most_the_limit_plus_one():
    with pytest.raises(UserError, match=r"^z: more than the 1,024 bytes"):
        read_bounded("/dev/zero", "z", 1024)


def test_a_big_regular_file_is_refused_from_its_size(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(1 << 40)  # sparse: 1 TiB declared, nothing read
    with pytest.raises(UserError, match=r"1,099,511,627,776 bytes, more than the"):
        read_json(path, Number(), "big.json")


def test_a_fifo_without_writer_does_not_block_and_an_endless_one_is_cut(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_bounded(fifo, "f", 100) == b""  # nobody writes: empty, not a hang
    stop = threading.Event()

    def endless():
        try:
            with open(fifo, "wb") as handle:
                while not stop.is_set():
                    handle.write(b"[" * 4096)
        except BrokenPipeError:  # the reader stopped reading: what it should do
            pass

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    try:
        time.sleep(0.2)
        with pytest.raises(UserError, match="more than the 100,000 bytes"):
            read_bounded(fifo, "f", 100_000)
    finally:
        stop.set()


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "No such file or directory"),
        (lambda p: p.write_bytes(b"a = 1\n# caf\xe9\n"), "not valid TOML: 'utf-8' codec"),
        (lambda p: p.write_text("a = [1, 2\n"), "not valid TOML: "),
    ],
    ids=["folder", "missing", "not-utf8", "malformed"],
)
def test_unreadable_files_are_one_line(tmp_path, make, expect):
    path = tmp_path / "c.toml"
    make(path)
    with pytest.raises(UserError) as info:
        read_toml(path, Table(Number()), "--config c.toml")
    assert str(info.value).startswith("--config c.toml: ") and expect in str(info.value), str(info.value)


LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b"]><lolz>&lol9;</lolz>"
)


@pytest.mark.parametrize(
    "data, expect",
    [
        (LAUGHS, "declares the entity lol"),
        (b'<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><p>&x;</p>', "declares the entity x"),
        (b"<a>" * 100 + b"</a>" * 100, "nested more than 64 levels deep"),
        (b"<a><b></a>", "not valid XML"),
    ],
    ids=["billion-laughs", "external-entity", "deep", "malformed"],
)
def test_xml_entities_and_depth_are_refused_before_expansion(data, expect):
    with pytest.raises(UserError, match=re.escape(expect)):
        parse_xml(data, "p.xml")


def test_a_simgrid_doctype_without_entities_is_read():
    root = parse_xml(b'<?xml version="1.0"?><!DOCTYPE platform SYSTEM "https://simgrid.org/simgrid.dtd"><platform version="4.1"/>', "p.xml")
    assert root.tag == "platform"
