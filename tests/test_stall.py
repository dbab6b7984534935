"""The watchdog's judgement (parallel/stall.py), without MPI: who is silent, who is stuck, and when the silence was its own."""

from __future__ import annotations

import pytest

from pnn_mpi.parallel import stall
from pnn_mpi.parallel.stall import MainProgress, Watchdog


def _watchdog(timeout: float, heard: dict[int, float], done=(0,), awake: float = 0.0) -> Watchdog:
    """A watchdog's state alone (no thread, no communicator), rank 0 of len(heard)."""
    dog = object.__new__(Watchdog)
    dog.timeout, dog.period, dog.heard, dog.done, dog.awake = timeout, timeout / 4, dict(heard), set(done), awake
    dog.rank, dog.reports = 0, {}
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


# (training, waiting in a collective, seconds since it last moved), as beats carry them; rank 0 judges.
LOOP, WAIT, SAVE = (True, False), (True, True), (False, False)


@pytest.mark.parametrize(
    "own, peers, done, named",
    [
        ((*WAIT, 5.0), {1: (*LOOP, 5.0)}, (0,), [1]),  # 2 ranks: the peer loops, this one waits for it
        ((*WAIT, 3.0), {1: (*LOOP, 5.0)}, (0,), []),  # nobody has waited the whole timeout yet
        ((*WAIT, 5.0), {1: (*SAVE, 5.0)}, (0,), []),  # out of the training loop (saving, plotting): silence alone counts there
        ((*WAIT, 5.0), {1: (*WAIT, 5.0)}, (0,), []),  # both wait: nobody is stuck outside MPI
        ((*LOOP, 0.1), {1: (*LOOP, 5.0), 2: (*WAIT, 5.0)}, (0,), [1]),  # another rank's wait is the evidence
        ((*LOOP, 5.0), {1: (*WAIT, 5.0), 2: (*WAIT, 6.0)}, (0,), [0]),  # the judge itself is the stuck one
        ((*WAIT, 5.0), {1: (*LOOP, 5.0)}, (0, 1), []),  # said goodbye: finished, never stuck
        ((*LOOP, 1.0), {1: (*LOOP, 5.0), 2: (*LOOP, 5.0)}, (0,), []),  # nobody waits: long steps, not a stall
    ],
)
def test_a_rank_that_beats_but_stays_outside_mpi_while_another_waits_is_stuck(monkeypatch, own, peers, done, named):
    """An endless loop beats from the watchdog's thread like a healthy rank; the beat's report tells it apart."""
    dog = _watchdog(4.0, {0: 100.0, **dict.fromkeys(peers, 100.0)}, done=done)
    dog.reports = dict(peers)
    progress = MainProgress()
    progress.training, progress.state = own[0], (own[1], 100.0 - own[2])
    monkeypatch.setattr(stall, "PROGRESS", progress)
    assert dog.silent(100.0) == []
    assert dog.stuck(100.0) == named


def test_the_main_thread_reports_waiting_moving_and_phases_aside():
    progress = MainProgress()
    progress.training = True
    progress.state = (False, 0.0)
    assert progress.report(10.0) == (True, False, 10.0)
    with progress:
        assert progress.report(progress.state[1] + 2)[1:] == (True, 2)  # in a collective: waiting, not stuck
    assert progress.report(progress.state[1])[1] is False
    with progress.aside():
        assert progress.training is False  # one rank writes the checkpoint while the others wait
    assert progress.training is True and progress.report(progress.state[1])[2] == 0  # and it counts as a move
