"""Synchronisation schedules: parsing, printing, when to average, and the errors for bad values."""

from __future__ import annotations

import pytest

from pnn_mpi.errors import UserError
from pnn_mpi.sync import Sync


@pytest.mark.parametrize(
    "text, kind, every",
    [("end", "end", 0), ("epoch", "epoch", 0), ("grad", "grad", 0), ("steps:1", "steps", 1), ("steps:10", "steps", 10), ("steps:250", "steps", 250)],
)
def test_parse_and_round_trip(text, kind, every):
    """Each schedule parses into its kind and step count, and str() gives the text back."""
    sync = Sync.parse(text)
    assert (sync.kind, sync.every) == (kind, every)
    assert str(sync) == text
    assert Sync.parse(str(sync)) == sync


def test_flags_by_kind():
    """Only 'grad' averages gradients and only 'epoch' averages after an epoch."""
    flags = {t: (Sync.parse(t).averages_gradients, Sync.parse(t).averages_after_epoch) for t in ("end", "epoch", "grad", "steps:3")}
    assert flags == {"end": (False, False), "epoch": (False, True), "grad": (True, False), "steps:3": (False, False)}


def test_averages_after_step():
    """steps:K averages after global steps K, 2K, 3K... (1-based) and no other kind ever does."""
    sync = Sync.parse("steps:3")
    assert [s for s in range(1, 13) if sync.averages_after_step(s)] == [3, 6, 9, 12]
    assert all(Sync.parse("steps:1").averages_after_step(s) for s in range(1, 6))
    for text in ("end", "epoch", "grad"):
        assert not any(Sync.parse(text).averages_after_step(s) for s in range(1, 20))


@pytest.mark.parametrize("text", ["steps", "steps:0", "steps:x", "steps:-2", "epochs", "end:3", "", "bogus", "grad:1", "STEPS:5"])
def test_bad_values_raise_user_error_naming_value(text):
    """Every malformed schedule is a UserError whose message quotes the value given."""
    with pytest.raises(UserError) as info:
        Sync.parse(text)
    assert repr(text) in str(info.value)
    assert "--sync" in str(info.value)
