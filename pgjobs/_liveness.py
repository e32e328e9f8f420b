"""A worker's liveness: the heart (heartbeats and LISTEN on a path of their own) and the fence.

The heart is a thread with a database session of its own. It beats every heart_rate seconds and,
between beats, LISTENs for the worker on the same session, which is otherwise idle. Claims,
outcomes, the reaper and the scheduler use other connections, so none of them can hold a beat
up; and a thread keeps beating while the worker's event loop is busy or blocked (a task that
calls time.sleep in an async def, thousands of callbacks after a burst). The worker learns what
each beat and notification said through callbacks run on its event loop.

The fence runs on the event loop: once no beat went through for fence_after seconds, it gives
up every run (the reaper may soon declare the worker dead and hand them to another worker) and
claims stop until a beat goes through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import _database, _sql
from .errors import ConfigurationError

logger = logging.getLogger("pgjobs.worker")

# How long the heart waits at most between looks at its own flags (stop, beat now): the stop
# latency of the thread, and of a beat asked for out of turn.
_SLICE = 0.1

# Channels that say a run was cancelled or the worker was asked to stop. PostgreSQL checks no
# privilege on NOTIFY, so what they carry is never acted on: they make the heart beat at once, and
# the beat's answer (the runs to abort, the worker's status) is what the worker obeys.
_ASK_THE_DATABASE = frozenset({"pgjobs.cancel", "pgjobs.worker"})

# The fence acts this many heart rates before the reaper may declare the worker dead, for the
# beat in flight and the cancellations to land.
FENCE_MARGIN = 0.25


@dataclass(frozen=True)
class Beat:
    """What one heartbeat said: the worker's status, runs to abort, runs no longer the worker's,
    runs the database settled as lost; ``held``: the runs the beat named (id -> attempt)."""

    status: str
    abort: Sequence[int]
    lost: Sequence[int]
    settled: Sequence[int]
    held: Mapping[int, int] = field(default_factory=dict)


class Restarts:
    """Backoff for a service restarted after an unexpected exception: doubling from 0.1 s to
    30 s, back to the start once the service ran a minute without failing."""

    def __init__(self, first: float = 0.1, most: float = 30.0) -> None:
        self.first, self.most = first, most
        self._delay = first
        self._since = time.monotonic()

    def failed(self, name: str, exc: BaseException) -> float:
        """Log exc with its traceback; return the seconds to wait before the restart."""
        if time.monotonic() - self._since > 60:
            self._delay = self.first
        delay, self._delay = self._delay, min(self._delay * 2, self.most)
        logger.error("%s failed unexpectedly; restarting it in %.1f s", name, delay, exc_info=exc)
        self._since = time.monotonic() + delay
        return delay


async def supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a service (``run()`` builds a fresh run) until it returns or is cancelled; an
    unexpected exception is logged with its traceback and the service starts again after a backoff."""
    restarts = Restarts()
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await asyncio.sleep(restarts.failed(name, exc))


class Heart:
    """Beats for a worker from a thread of its own, LISTENing between beats.

    :param worker_id: the worker's id.
    :param heart_rate: seconds between beats.
    :param queues: the worker's queues, whose channels it LISTENs on with pgjobs.cancel and
        pgjobs.worker; None: no LISTEN (behind a transaction pooler without a direct DSN).
    :param direct: ``dsn`` bypasses a transaction pooler (see _database.session_params).
    :param runs: what the worker holds, read in this thread: (whether a claim is in flight, job id
        -> attempt of every run claimed and not yet recorded), the flag read first.
    :param stats: what the worker counts of itself, read in this thread.
    :param register: parameters of worker_register, for a worker the database forgot.
    :param on_beat, on_notify, on_session: run on ``loop`` after each beat that went through,
        for each notification on a queue's channel (channel, payload: a hint to look for work),
        and once a session is (re)established (notifications sent meanwhile were lost).
    """

    def __init__(
        self,
        dsn: str,
        *,
        worker_id: str,
        heart_rate: float,
        queues: Sequence[str] | None,
        direct: bool,
        outage: _database.Outage,
        runs: Callable[[], tuple[bool, dict[int, int]]],
        stats: Callable[[], dict[str, Any]],
        register: Callable[[], dict[str, Any]],
        on_beat: Callable[[Beat], None],
        on_notify: Callable[[str, str], None],
        on_session: Callable[[], None],
    ) -> None:
        self.dsn, self.worker_id, self.heart_rate, self.queues, self.direct = dsn, worker_id, heart_rate, queues, direct
        self.outage = outage
        self._runs, self._stats, self._register = runs, stats, register
        self._on_beat, self._on_notify, self._on_session = on_beat, on_notify, on_session
        self.last_ok = time.monotonic()  # when the last beat that went through was sent
        self.beats = 0
        self.listening = queues is not None
        self._stop = threading.Event()
        self._beat_now = threading.Event()
        self._connected: asyncio.Event | None = None  # set on the loop once its first session is open
        self._go = threading.Event()  # the worker is registered: beat
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._restarts = Restarts()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread: it opens its session at once, and beats from go() on."""
        self._loop = loop
        self._connected = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name=f"pgjobs-heart-{self.worker_id}", daemon=True)
        self._thread.start()

    async def go(self, stopped: asyncio.Event) -> None:
        """Wait for the session opened at start() (unless ``stopped`` is set first), then beat at once
        and at every turn. The worker registers in between: its first beat follows its
        registration without a connection's time between them (seconds, on a loaded host), which
        the reaper would count against it."""
        assert self._connected is not None
        waits = [asyncio.create_task(self._connected.wait()), asyncio.create_task(stopped.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        # A pooler's server sessions cannot LISTEN for us; connecting may have found one.
        self.listening = self.queues is not None and (self.direct or not _database.pooled(self.dsn))
        self.last_ok = time.monotonic()
        self._go.set()

    def beat_now(self) -> None:
        """Beat at once (within a fraction of a second), not at the next turn. Any thread."""
        self._beat_now.set()

    async def stop(self) -> None:
        """Stop the thread and close its session (a beat in flight is waited for, up to 5 s)."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    # -- the thread -------------------------------------------------------------------------------
    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:  # never dies: anything unforeseen is logged, and beating goes on
                self._stop.wait(self._restarts.failed("the heartbeat", exc))

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: the worker is gone
            self._loop.call_soon_threadsafe(callback, *args)

    def _connect(self) -> psycopg.Connection[_database.Row] | None:
        """A session, retried with backoff until it works, LISTENing once the worker is registered;
        None once stopping."""
        name = f"pgjobs heart {self.worker_id}"
        while not self._stop.is_set():
            try:
                conn = _database.connect(self.dsn, name=name, direct=self.direct)
            except ConfigurationError as exc:  # DatabaseUnavailable too: both may mend (a restart, a fixed pg_hba)
                if self._go.is_set():  # before, the worker's registration reports what is wrong
                    self.outage.failed("heartbeat connection", exc)
                self._stop.wait(self.outage.delay)
                continue
            if self._connected is not None:
                self._call(self._connected.set)
            while not self._go.is_set():
                if self._stop.wait(_SLICE):
                    conn.close()
                    return None
            try:
                if self.listening:
                    assert self.queues is not None
                    rows = _database.fetch(conn, _sql.query("queue_channels"), {"queues": list(self.queues)})
                    channels = [r["channel"] for r in rows] + ["pgjobs.cancel", "pgjobs.worker"]
                    conn.execute(_database.listen_query(channels))
            except psycopg.Error as exc:
                conn.close()
                if not _database.transient(exc):
                    raise
                self.outage.failed("listen", exc)
                self._stop.wait(self.outage.delay)
                continue
            return conn
        return None

    def _session(self) -> None:
        conn = self._connect()
        if conn is None:
            return
        try:
            self._call(self._on_session)
            due = 0.0  # a new session beats at once: stop requests and cancels sent meanwhile
            last = -_SLICE
            while not self._stop.is_set():
                now = time.monotonic()
                # A beat asked for (a notification: any login may send a flood) comes a slice after
                # the last one at the soonest: ten a second at most.
                if now >= due or (self._beat_now.is_set() and now - last >= _SLICE):
                    self._beat_now.clear()
                    last = now
                    wait = self._beat(conn)
                    due = time.monotonic() + wait
                    if conn.closed:  # a session the beat found useless (a standby, a dying server)
                        self._stop.wait(wait)
                        return
                    continue
                wait = min(due - now, _SLICE)
                if not self.listening:
                    self._stop.wait(wait)
                else:
                    for note in conn.notifies(timeout=wait):
                        if note.channel in _ASK_THE_DATABASE:
                            self._beat_now.set()  # a hint only: any login may NOTIFY; the beat says what is so
                        else:
                            self._call(self._on_notify, note.channel, note.payload)
        except psycopg.Error as exc:  # the session broke while listening
            if not _database.transient(exc):
                logger.error("listen failed: %s", _database.first_line(exc))
            self.outage.failed("listen", exc)
            self._stop.wait(self.outage.delay)
        finally:
            conn.close()

    def _beat(self, conn: psycopg.Connection[_database.Row]) -> float:
        """One beat; returns the seconds until the next one (sooner after a beat that failed)."""
        began = time.monotonic()
        claiming, held = self._runs()
        params = {
            "id": self.worker_id, "job_ids": list(held), "attempts": list(held.values()),
            "stats": Jsonb(self._stats()), "claiming": claiming,
        }  # fmt: skip
        try:
            (row,) = _database.fetch(conn, _sql.query("worker_heartbeat"), params)
        except psycopg.errors.NoDataFound:
            logger.warning("worker %s was forgotten by the database; registering again", self.worker_id)
            with contextlib.suppress(psycopg.Error):
                _database.fetch(conn, _sql.query("worker_register"), self._register())
            return 0.0
        except psycopg.Error as exc:
            if _database.needs_reconnect(exc):
                conn.close()
            if not _database.transient(exc):
                logger.error("heartbeat failed: %s", _database.first_line(exc))
                return self.heart_rate
            self.outage.failed("heartbeat", exc)
            return min(self.outage.delay, self.heart_rate)
        self.last_ok = began
        self.beats += 1
        self.outage.ok()
        took = time.monotonic() - began
        if took > self.heart_rate:  # the database, not this worker, is slow: say so before a fence does
            logger.warning("a heartbeat took %.2f s, more than the heart rate (%g s): the database was slow to answer",
                           took, self.heart_rate)  # fmt: skip
        self._call(self._on_beat, Beat(row["status"], row["abort"], row["lost"], row["settled"], held))
        return max(0.0, self.heart_rate - (time.monotonic() - began))


class Fence:
    """Gives up a worker's runs once no beat went through for ``after`` seconds, and lets it claim
    again once one does. Runs on the worker's event loop.

    :param give_up: called with the seconds since the last beat that went through.
    :param resume: called when a beat went through again.
    """

    def __init__(
        self, heart: Heart, after: float, *, give_up: Callable[[float], None], resume: Callable[[], None]
    ) -> None:
        self.heart, self.after = heart, after
        self._give_up, self._resume = give_up, resume
        self.fenced = False
        self.fences = 0

    def check(self) -> float:
        """Fence or lift the fence as the last beat says; return the seconds until it may change."""
        silent = time.monotonic() - self.heart.last_ok
        if silent >= self.after and not self.fenced:
            self.fenced = True
            self.fences += 1
            self._give_up(silent)
        elif silent < self.after and self.fenced:
            self.fenced = False
            self._resume()
        return min(max(self.after - silent, 0.0), self.heart.heart_rate) + self.heart.heart_rate / 20

    async def run(self) -> None:
        while True:  # noqa: ASYNC110 - a timer: what it watches is a time, not an event
            await asyncio.sleep(self.check())
