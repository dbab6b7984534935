"""A stuck job ends with one line instead of holding its allocation forever.

Under ``--on-rank-failure abort`` (the default) nothing reports a rank that stops
without dying (SIGSTOP, a frozen node, a process swapped out for good): its peers
wait in their next collective for ever. ``Watchdog`` is a thread on every rank
that sends a small heartbeat to every other rank over a communicator of its own
every quarter of ``--stall-timeout``. A thread beats while its main thread
computes or waits in a collective, so only a process that is not running at all
falls silent. When a peer has been silent for the whole timeout, the lowest rank
that still hears the others prints one line naming the silent rank and its host
and aborts the job (``MPI_Abort``): the last checkpoint is left as it was
written (files are replaced whole, never in place). A rank whose thread has said
goodbye (the run ended normally on it) is never counted as silent.

A thread beats also in a process that runs but goes nowhere (an endless loop, a
livelock: its main thread never enters MPI again), so every beat carries what
the main thread is doing (``MainProgress``): whether it waits in a collective and
since when it last moved (began or ended one, or took a training step). A rank
in the training loop that has been outside every collective without moving for
the whole timeout, while another has waited in one as long, is stuck: it is
named and the job ends the same way. Outside the training loop (loading, the
final save and plot, the checkpoint write) only silence counts, so one rank's
slow save is never taken for a stuck one.

It needs ``MPI_THREAD_MULTIPLE`` (mpi4py asks for it by default); without it the
watchdog stays off.
"""

from __future__ import annotations

import atexit
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STALLED_EXIT_CODE = 3  # the job was ended because a rank stopped responding
_BEAT, _BYE = 1, 2  # message tags


class MainProgress:
    """What this rank's main thread is doing, for the beats its watchdog sends (see above)."""

    def __init__(self) -> None:
        self.training = False  # in the training loop, where a rank outside MPI must keep moving
        self.state = (False, time.monotonic())  # (waiting in a collective, since when); one tuple: read whole

    def moved(self) -> None:
        """The main thread took a step (or was forgiven a stop): it is not stuck."""
        self.state = (self.state[0], time.monotonic())

    @contextmanager
    def aside(self) -> Iterator[None]:
        """A phase of the training loop in which one rank works alone while the others wait (the
        checkpoint write): not judged, and it counts as a move when it ends."""
        was, self.training = self.training, False
        try:
            yield
        finally:
            self.training = was
            self.moved()

    def __enter__(self) -> MainProgress:  # a collective begins
        self.state = (True, time.monotonic())
        return self

    def __exit__(self, *exc) -> None:  # it ended (or failed)
        self.state = (False, time.monotonic())

    def report(self, now: float) -> tuple[bool, bool, float]:
        """(training, waiting in a collective, seconds since it last moved): a beat's message."""
        waiting, since = self.state
        return self.training, waiting, now - since


PROGRESS = MainProgress()  # this process's main thread: World's collectives and the training loop mark it


class Watchdog:
    """Heartbeats between the ranks of ``comm``; ends the job when one falls silent or is stuck."""

    def __init__(self, comm, mpi, timeout: float, abort=None):
        self.comm = comm.Dup()  # its own communicator: beats never match the run's messages
        self.mpi, self.timeout = mpi, timeout
        self.period = max(0.05, timeout / 4)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.hosts = self.comm.allgather(socket.gethostname())  # also the moment every rank starts listening
        now = time.monotonic()
        self.heard = dict.fromkeys(range(self.size), now)
        self.reports: dict[int, tuple[bool, bool, float]] = {}  # each peer's last MainProgress.report
        self.awake = now  # when this thread last ran (woke)
        self.done: set[int] = {self.rank}
        self.abort = abort or (lambda: self.comm.Abort(STALLED_EXIT_CODE))
        self._stop = threading.Event()
        self._sends: list = []
        self._thread = threading.Thread(target=self._run, name="pnn_mpi-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            self.woke(now)
            if now - last_beat >= self.period:
                self._send_all(_BEAT)
                last_beat = now
            self._receive()
            now = time.monotonic()
            silent = self.silent(now)
            stuck = [r for r in self.stuck(now) if r not in silent]
            if silent or stuck:
                self._end(silent, stuck)
                return
            self._stop.wait(self.period / 2)  # few wake-ups: each takes the GIL and MPI's progress lock

    def _send_all(self, tag: int) -> None:
        self._sends = [r for r in self._sends if not r.Test()]
        for peer in range(self.size):
            if peer != self.rank and peer not in self.done:
                self._sends.append(self.comm.isend(PROGRESS.report(time.monotonic()), dest=peer, tag=tag))

    def _receive(self) -> None:
        status = self.mpi.Status()
        while self.comm.iprobe(source=self.mpi.ANY_SOURCE, tag=self.mpi.ANY_TAG, status=status):
            peer, tag = status.Get_source(), status.Get_tag()
            report = self.comm.recv(source=peer, tag=tag)
            self.heard[peer] = time.monotonic()
            if tag == _BEAT and isinstance(report, tuple):
                self.reports[peer] = report
            if tag == _BYE:
                self.done.add(peer)

    def woke(self, now: float) -> None:
        """Forgive the silence this thread could not have heard: when it did not run for half the
        timeout (its wait is an eighth), this process was the one stopped (SIGSTOP, then SIGCONT
        as a launcher sends before it kills), so every peer gets a fresh timeout instead of
        being named silent by the rank that was."""
        if now - self.awake > self.timeout / 2:
            self.heard = dict.fromkeys(self.heard, now)
            self.reports = {}
            PROGRESS.moved()
        self.awake = now

    def silent(self, now: float) -> list[int]:
        """Ranks not heard from for the whole timeout (and not finished)."""
        return [r for r, t in self.heard.items() if r not in self.done and now - t > self.timeout]

    def stuck(self, now: float) -> list[int]:
        """Ranks that beat but, in the training loop, stayed outside every collective without moving
        for the whole timeout while another rank waited in one as long (and not finished)."""
        reports = {**self.reports, self.rank: PROGRESS.report(now)}
        finished = self.done - {self.rank}  # done holds this rank from the start: it never names itself silent
        late = {r for r, (_, waiting, age) in reports.items() if age > self.timeout and r not in finished}
        waited = {r for r in late if reports[r][1]}
        return sorted(r for r in late if reports[r][0] and not reports[r][1] and waited - {r})

    def _end(self, silent: list[int], stuck: list[int]) -> None:
        alive = [r for r in range(self.size) if r not in silent and r not in stuck]
        if alive and self.rank == alive[0]:
            kinds = ((silent, "stopped, frozen or unreachable"), (stuck, "running, but stuck outside MPI: an endless loop or a livelock"))
            said = "; ".join(
                f"{', '.join(f'rank {r} ({self.hosts[r]})' for r in ranks)} made no progress for {self.timeout:g} s ({why})" for ranks, why in kinds if ranks
            )
            line = f"pnn_mpi: error: {said}: ending the job; the last checkpoint, if any, is as it was written (--stall-timeout sets this limit)"
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        else:  # leave the line to the lowest live rank; abort anyway if it did not (it may be slow or stuck too)
            time.sleep(self.timeout + self.period)
        self.abort()

    def stop(self) -> None:
        """The run ended normally on this rank: say goodbye so nobody counts it as silent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._send_all(_BYE)


def start_watchdog(world, timeout: float) -> Watchdog | None:
    """A watchdog for ``world`` (an MPI ``World`` of 2+ ranks), or None where it cannot run."""
    mpi = getattr(world, "_mpi", None)
    comm = getattr(world, "comm", None)
    if timeout <= 0 or mpi is None or comm is None or world.size < 2:
        return None
    if mpi.Query_thread() < mpi.THREAD_MULTIPLE:
        return None
    watchdog = Watchdog(comm, mpi, timeout)
    atexit.register(watchdog.stop)  # runs before mpi4py finalizes MPI
    return watchdog
