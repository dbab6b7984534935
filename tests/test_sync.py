"""Synchronisation schedules: parsing, printing, when to average, and the errors for bad values."""

from __future__ import annotations

import math

import pytest

from pnn_mpi.common.errors import UserError
from pnn_mpi.parallel.sync import Sync


@pytest.mark.parametrize(
    "text, kind, every",
    [
        ("end", "end", 0),
        ("epoch", "epoch", 0),
        ("grad", "grad", 0),
        ("steps:1", "steps", 1),
        ("steps:10", "steps", 10),
        ("steps:250", "steps", 250),
        ("local:8:64", "local", 8),
        ("local:1:1", "local", 1),
    ],
)
def test_parse_and_round_trip(text, kind, every):
    """Each schedule parses into its kind and step count, and str() gives the text back."""
    sync = Sync.parse(text)
    assert (sync.kind, sync.every) == (kind, every)
    assert str(sync) == text
    assert Sync.parse(str(sync)) == sync


def test_flags_by_kind():
    """Only 'grad' averages gradients and only 'epoch' averages at every epoch's end (local counts its
    steps across epoch ends: tiny epochs of many ranks would otherwise average after every few steps)."""
    flags = {t: (Sync.parse(t).averages_gradients, Sync.parse(t).averages_after_epoch) for t in ("end", "epoch", "grad", "steps:3", "local")}
    assert flags == {"end": (False, False), "epoch": (False, True), "grad": (True, False), "steps:3": (False, False), "local": (False, False)}


@pytest.mark.parametrize("text, shown", [("local", "local:5:64"), ("local:4", "local:4:64"), ("local:100", "local:100:100"), ("local:4:32", "local:4:32")])
def test_local_fills_in_its_periods(text, shown):
    """local alone is local:5:64; a first period alone keeps the largest at 64 (or at the first, if above)."""
    assert str(Sync.parse(text)) == shown


def test_period_of_each_kind():
    """steps:K averages every K steps whatever the rate; end, epoch and grad never inside an epoch."""
    for decayed in (1.0, 0.5, 0.01):
        assert Sync.parse("steps:3").period(decayed) == 3
        assert [Sync.parse(t).period(decayed) for t in ("end", "epoch", "grad")] == [0, 0, 0]


def test_local_period_follows_the_rate():
    """K / (the rate's fraction of its peak), rounded, between K and L: over a 10-epoch cosine schedule
    local:8:64 averages every 8, 8, 9, 10, 12, 16, 23, 39, 64, 64 steps; with a 2-epoch warm-up the
    default local:5:64 also averages less often while the rate climbs."""
    cosine = [0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(10)]
    assert [Sync.parse("local:8:64").period(c) for c in cosine] == [8, 8, 9, 10, 12, 16, 23, 39, 64, 64]
    assert [Sync.parse("local:4:16").period(c) for c in cosine] == [4, 4, 4, 5, 6, 8, 12, 16, 16, 16]
    warm = [c * ((e + 1) / 3 if e < 2 else 1.0) for e, c in enumerate(cosine)]
    assert [Sync.parse("local").period(f) for f in warm] == [15, 8, 6, 6, 8, 10, 14, 24, 52, 64]
    assert Sync.parse("local:8:64").period(0.0) == 64  # a rate decayed to nothing: the largest period


@pytest.mark.parametrize(
    "text",
    [
        "steps",
        "steps:0",
        "steps:x",
        "steps:-2",
        "epochs",
        "end:3",
        "",
        "bogus",
        "grad:1",
        "STEPS:5",
        "local:0",
        "local:x",
        "local:8:4",
        "local:1:2:3",
        "local:",
    ],
)
def test_bad_values_raise_user_error_naming_value(text):
    """Every malformed schedule is a UserError whose message quotes the value given."""
    with pytest.raises(UserError) as info:
        Sync.parse(text)
    assert repr(text) in str(info.value)
    assert "--sync" in str(info.value)
