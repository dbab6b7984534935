"""The watchdog's judgement (parallel/stall.py), without MPI: who is silent, and when the silence was its own."""

from __future__ import annotations

import pytest

from pnn_mpi.parallel.stall import Watchdog


def _watchdog(timeout: float, heard: dict[int, float], done=(0,), awake: float = 0.0) -> Watchdog:
    """A watchdog's state alone (no thread, no communicator), rank 0 of len(heard)."""
    dog = object.__new__(Watchdog)
    dog.timeout, dog.period, dog.heard, dog.done, dog.awake = timeout, timeout / 4, dict(heard), set(done), awake
    return dog


def test_a_peer_silent_for_the_whole_timeout_is_named_and_a_finished_one_never():
    dog = _watchdog(4.0, {0: 0.0, 1: 10.0, 2: 5.0, 3: 5.0}, done=(0, 3))
    assert dog.silent(9.5) == [2]  # 4.5 s without a beat; rank 3 said goodbye


@pytest.mark.parametrize("pause, named", [(0.5, [1]), (1.9, [1]), (2.1, []), (30.0, [])])
def test_a_watchdog_that_was_stopped_itself_forgives_the_silence(pause, named):
    """Stopped (SIGSTOP) and continued, a rank hears nothing for as long as it was stopped: after a pause
    of more than half the timeout it gives every peer a fresh timeout instead of naming them."""
    dog = _watchdog(4.0, {0: 0.0, 1: 0.0}, awake=10.0 - pause)
    dog.woke(10.0)
    assert dog.silent(10.0) == named
