"""The worker: claims due jobs, runs their tasks, records what happened, and proves it is alive.

Async tasks run on the worker's event loop. Sync tasks run each in a thread of its own (a stopped
run gets JobCancelled raised in it, which a blocking call delays), or in a pool of child processes
that a stopped run's child is killed in (pgjobs._executors). One exchange loop talks to the
database for the runs: each round trip records the results of the runs that finished (never
before the task has) and claims jobs for the free slots, in one transaction. A heartbeat keeps
the worker's row and its runs fresh at a steady rate.

Connections: the heart's session (heartbeats, and LISTEN between them; pgjobs._liveness), from a
thread of its own so that no work and no busy event loop holds a beat up, and a pool (one
connection by default) that claims, outcomes, the reaper and the scheduler take in turn. Errors a
later attempt can mend (connection loss, a read-only or full database, no free connection slot…)
are waited out with backoff and jitter; outcomes wait in the outbox meanwhile.

A worker that could not beat for nearly as long as the reaper waits before declaring it dead
fences itself: it stops every run it holds and claims nothing until a beat goes through again,
so that no run of its overlaps the re-run another worker may be given. A claim that returns
while the worker is fenced is given back at once. Each beat names every run the worker holds
(running, or finished and not yet recorded); the database settles any other run under its id
as lost (pgjobs.worker_heartbeat), so that no job stays active under a live worker that forgot it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import getpass
import inspect
import logging
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.rows import tuple_row

from . import _database, _sql, _tracing, migrations
from ._executors import ProcessPool, TaskFailed, run_in_thread
from ._liveness import FENCE_MARGIN, Beat, Fence, Heart, supervised
from .errors import ArgumentError, ConfigurationError, DatabaseUnavailable, JobException
from .job import Job, to_json, without_nul
from .reaper import Reaper, ReaperConfig
from .schedules import Schedule, Scheduler, SchedulerConfig, store
from .schedules import registry as schedule_registry
from .tasks import EXECUTORS, Executor, Task, registry

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

logger = logging.getLogger("pgjobs.worker")

AsyncConnection = psycopg.AsyncConnection[_database.Row]

# Test hook: PGJOBS_FAULT=<point> makes the process SIGKILL itself there, so that tests can crash
# a worker at the exact moments that matter (after_claim, before_record).
_FAULT = os.environ.get("PGJOBS_FAULT")


DEFAULT_REAPER = ReaperConfig()
DEFAULT_SCHEDULER = SchedulerConfig()

# Why a run was stopped: a user's cancel or a reaper kill; no longer ours; given up by the fence.
StopReason = Literal["abort", "lost", "fenced"]
# The same, as pgjobs_worker_kills_total counts it (None: given back at shutdown).
_KILL_LABEL: dict[StopReason | None, str] = {"abort": "aborted", "lost": "lost", "fenced": "fenced", None: "shutdown"}


def _fault(point: str) -> None:
    if point == _FAULT:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _Outcome:
    kind: Literal["complete", "fail", "release"]
    job: Job
    seconds: float
    result: Any = None
    error: str | None = None
    retry: bool = True


class _NotRetryable(Exception):
    """A failure that another attempt cannot mend (unknown task, result JSON cannot carry)."""


def default_worker_id() -> str:
    """A fresh id per process start: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Runs the jobs of some queues with the tasks registered in this process.

    :param dsn: the database; None: ``PGJOBS_DSN``, ``DATABASE_URL``, else the embedded server
        (see pgjobs.resolve_dsn).
    :param queues: the queues to take jobs from.
    :param concurrency: how many jobs run at once.
    :param poll_interval: seconds between polls when no notification arrives (a lost NOTIFY
        delays a job by at most this much).
    :param shutdown_grace: seconds running jobs get to finish after stop(); the rest are given back.
    :param heart_rate: seconds between heartbeats of the worker and its runs.
    :param reaper: how the reaper runs inside this worker; None runs none here.
    :param scheduler: how the scheduler runs inside this worker; None runs none here.
    :param schedules: schedules to store when the worker starts; defaults to those declared with
        @periodic in this process.
    :param tasks: task name to Task; defaults to every task registered in this process.
    :param log_args: log each job's arguments at DEBUG.
    :param connections: connections of the pool shared by claims, outcomes, heartbeats, the reaper
        and the scheduler; the LISTEN session is one more.
    :param startup_timeout: seconds to wait at start for a database that does not answer yet
        (down, starting, out of connection slots); None waits as long as it takes.
    :param metrics: where to count runs and their durations (pgjobs.metrics.WorkerMetrics).
    :param executor: where sync tasks run unless their @task says: ``"thread"`` (a thread each) or
        ``"process"`` (a pool of child processes, up to concurrency, which a stopped run's child
        is killed in).
    :param max_jobs_per_child: the process executor replaces a child after that many jobs.
    :param max_memory_per_child: megabytes of resident memory: the process executor replaces a
        child that a job left above it, and kills one that goes above it during a job (Linux).
    :param kill_grace: seconds a stopped run's child gets between SIGTERM and SIGKILL (and a
        stopped thread to end after JobCancelled is raised in it).
    :param listen_dsn: where the LISTEN session connects, when ``dsn`` leads to a transaction
        pooler (PGJOBS_POOLED): PostgreSQL itself. Behind a pooler without it the worker polls
        every poll_interval and hears cancels and stop requests at its heartbeats.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        poll_interval: float = 1.0,
        shutdown_grace: float = 30.0,
        heart_rate: float = 5.0,
        reaper: ReaperConfig | None = DEFAULT_REAPER,
        scheduler: SchedulerConfig | None = DEFAULT_SCHEDULER,
        schedules: Iterable[Schedule] | None = None,
        tasks: Mapping[str, Task[..., Any]] | None = None,
        worker_id: str | None = None,
        log_args: bool = False,
        connections: int = 1,
        startup_timeout: float | None = None,
        metrics: WorkerMetrics | None = None,
        executor: Executor = "thread",
        max_jobs_per_child: int | None = None,
        max_memory_per_child: float | None = None,
        kill_grace: float = 2.0,
        listen_dsn: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
        if max_jobs_per_child is not None and max_jobs_per_child < 1:
            raise ValueError("max_jobs_per_child must be at least 1")
        if max_memory_per_child is not None and not max_memory_per_child > 0:
            raise ValueError("max_memory_per_child must be a positive number of megabytes")
        if not kill_grace >= 0:
            raise ValueError("kill_grace must be a number of seconds")
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if not heart_rate > 0:
            raise ValueError("heart_rate must be a positive number of seconds")
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.dsn = dsn = _database.resolve_dsn(dsn)
        self.id = worker_id or default_worker_id()
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.heart_rate = heart_rate
        self.tasks = tasks if tasks is not None else registry
        self.log_args = log_args
        self.startup_timeout = startup_timeout
        self.metrics = metrics
        self.executor = executor
        self.max_jobs_per_child = max_jobs_per_child
        self.max_memory_per_child = max_memory_per_child
        self.kill_grace = kill_grace
        self._processes: ProcessPool | None = None
        # What this worker counts of itself, sent with each heartbeat (workers.stats).
        self._stats: collections.Counter[str] = collections.Counter()
        # job id -> how its child process ended, for a run the process executor stopped.
        self._kill_notes: dict[int, str] = {}
        self._outage = _database.Outage(logger)
        self._pool = _database.Pool(dsn, connections, owner=self.id, outage=self._outage)
        # A pooler's server sessions cannot LISTEN for us: a DSN that bypasses it, or no listening.
        listening = listen_dsn is not None or not _database.pooled()
        self._heart = Heart(
            listen_dsn or dsn, worker_id=self.id, heart_rate=heart_rate,
            queues=self.queues if listening else None, direct=listen_dsn is not None, outage=self._outage,
            runs=self._runs, stats=lambda: dict(self._stats), register=self._register_params,
            on_beat=self._on_heartbeat, on_notify=self._on_notify, on_session=self._on_session,
        )  # fmt: skip
        self._reaper = Reaper(dsn, reaper, holder=self.id, pool=self._pool) if reaper is not None else None
        # Seconds without a successful beat after which this worker gives up its runs.
        grace = (reaper or DEFAULT_REAPER).grace_multiplier
        self.fence_after = heart_rate * max(grace - FENCE_MARGIN, 1.0)
        self._fence = Fence(self._heart, self.fence_after, give_up=self._give_up, resume=self._resume)
        self._scheduler = Scheduler(dsn, scheduler, owner=self.id, pool=self._pool) if scheduler is not None else None
        self.schedules = list(schedules) if schedules is not None else list(schedule_registry.values())
        self._running: dict[int, asyncio.Task[None]] = {}
        # job id -> attempt of each run claimed and not yet recorded, for the heartbeat (its thread
        # copies it); a run leaves it once its outcome is recorded, or once it is no longer ours.
        self._held: dict[int, int] = {}
        self._claiming = False  # a claim is in flight: its jobs may be missing from _held
        self._jobs: dict[int, Job] = {}
        self._stop_reason: dict[int, StopReason] = {}
        self._claim_in_doubt = False  # a claim failed with the connection: did it commit?
        self._outbox: list[_Outcome] = []
        self._stopping = False
        self._closing = False
        self._saturated = False  # the last claim filled every free slot: more jobs may be due
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when the exchange loop has something to do: a notification, an outcome, a free slot.
        self._wake: asyncio.Event | None = None
        self._stop_event: asyncio.Event | None = None
        # Set by the exchange loop once it has seen stop(): no claim is in flight any more.
        self._claims_over: asyncio.Event | None = None
        # Embedding: runs that failed for good, and how start() learns the worker is up (or not).
        self._failures: list[tuple[int, str, str | None]] = []
        self._started = threading.Event()
        self._ready: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._outcome: BaseException | None = None

    # -- control --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming, let running jobs finish within the grace period, give the rest back.
        Safe to call from any thread."""
        if self._loop is None:
            self._stopping = True
        elif self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop_now)

    # -- embedding ------------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> None:
        """Run the worker in a background thread of its own; return once it has registered (or
        raise what stopped it from starting)."""
        if self._thread is not None or self._task is not None:
            raise RuntimeError("this worker was started already")

        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:  # kept for wait_until_done(); start() raises it too
                self._outcome = exc
            finally:
                self._started.set()

        self._thread = threading.Thread(target=main, name=f"pgjobs-worker-{self.id}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"worker {self.id} did not start within {timeout} s")
        if self._outcome is not None:
            raise self._outcome

    async def start_async(self) -> None:
        """Run the worker as a task of the running event loop; return once it has registered."""
        if self._thread is not None or self._task is not None:
            raise RuntimeError("this worker was started already")
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self.run(), name=f"pgjobs-worker-{self.id}")
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._task.done():
            self._task.result()

    def request_stop(self) -> None:
        """Ask the worker to finish: no new claims; running jobs get shutdown_grace to end."""
        self.stop()

    def wait_until_done(self, timeout: float | None = None) -> None:
        """Wait until the worker started with start() has stopped and every job it took has
        finished; raise JobException if some of them failed for good."""
        if self._thread is None:
            raise RuntimeError("wait_until_done() is for a worker started with start()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"worker {self.id} still running after {timeout} s (call request_stop() first)")
        self._raise_outcome()

    async def wait_until_done_async(self, timeout: float | None = None) -> None:
        """wait_until_done() for a worker started with start_async()."""
        if self._task is None:
            raise RuntimeError("wait_until_done_async() is for a worker started with start_async()")
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if not done:
            raise TimeoutError(f"worker {self.id} still running after {timeout} s (call request_stop() first)")
        if self._task.exception() is not None:
            self._outcome = self._task.exception()
        self._raise_outcome()

    def _raise_outcome(self) -> None:
        if self._outcome is not None:
            raise self._outcome
        if self._failures:
            raise JobException(list(self._failures))

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping

    def _stop_now(self, why: str = "") -> None:
        if not self._stopping:
            logger.info("worker %s stopping%s", self.id, why)
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._stop_event is not None:
            self._stop_event.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("second %s: exiting at once", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)
        logger.info("%s received: finishing running jobs (again to exit at once)", signal.Signals(signum).name)
        self._stop_now()

    # -- main -------------------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = False) -> None:
        """Process jobs until stop() (or, with handle_signals, SIGTERM or SIGINT)."""
        self._loop = asyncio.get_running_loop()
        _tracing.refresh()  # a tracer provider set since the last look is used from the first job
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._claims_over = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
        self._heart.start(self._loop)  # its session opens while the worker registers
        assert self._stop_event is not None
        try:
            await self._start_processes()
            await self._register_at_start()
            await self._heart.go(self._stop_event)
        except BaseException:
            await self._heart.stop()
            await self._close_processes()
            self._remove_signal_handlers(handle_signals)
            raise
        self._started.set()
        if self._ready is not None:
            self._ready.set()
        if self._stopping:
            await self._heart.stop()
            await self._close_processes()
            self._remove_signal_handlers(handle_signals)
            logger.info("worker %s stopped before it started", self.id)
            return
        services: dict[str, Callable[[], Awaitable[None]]] = {"the fence": self._fence.run}
        if self._reaper is not None:
            services["the reaper"] = self._reaper.run
        if self._scheduler is not None:
            services["the scheduler"] = self._scheduler.run
        helpers = [
            asyncio.create_task(supervised(name, run), name=f"pgjobs-{name[4:]}") for name, run in services.items()
        ]
        exchange = asyncio.create_task(self._exchange_loop(), name="pgjobs-exchange")
        logger.info(
            "worker %s started: queues %s, concurrency %d, %s executor, %s event loop, tasks %s",
            self.id, ",".join(self.queues), self.concurrency, self.executor,
            type(asyncio.get_running_loop()).__module__.partition(".")[0],
            ", ".join(sorted(self.tasks)) or "none",
        )  # fmt: skip
        if not self._heart.listening:
            logger.info(
                "behind a transaction pooler without a listen DSN: polling every %g s, cancels heard at heartbeats",
                self.poll_interval,
            )
        try:
            await self._until_stopping(exchange)
            await self._drain(exchange)
        finally:
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(exchange, timeout=self.shutdown_grace + 5)
            except (TimeoutError, psycopg.Error, ConfigurationError) as exc:
                ids = [o.job.id for o in self._outbox]
                if ids:
                    logger.error("could not record the outcome of jobs %s (%s); the reaper will reset them", ids, exc)
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._heart.stop()
            await self._close_processes()
            try:
                await asyncio.wait_for(self._record_exit(), timeout=5)
            except (TimeoutError, psycopg.Error) as exc:
                logger.warning("could not record this worker's exit (%s); the reaper will mark it dead", exc)
            await self._pool.close()
            self._remove_signal_handlers(handle_signals)
            logger.info("worker %s stopped", self.id)

    def _remove_signal_handlers(self, handled: bool) -> None:
        if handled and self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)

    def _executor_of(self, task: Task[..., Any]) -> Literal["async", "thread", "process"]:
        return "async" if task.is_async else task.executor or self.executor

    async def _start_processes(self) -> None:
        """Start the process pool when some task runs in it: its first child imports the task
        modules, so that a module that cannot be imported stops the worker here."""
        chosen = [t for t in self.tasks.values() if self._executor_of(t) == "process"]
        if not chosen:
            return
        for t in chosen:
            if t.func.__module__ == "__main__":
                raise ConfigurationError(
                    f"task {t.name!r} is defined in __main__: the process executor's children import task "
                    "modules by name, so define it in a module"
                )
        modules = list(dict.fromkeys(t.func.__module__ for t in chosen))
        self._processes = ProcessPool(
            modules, max_jobs_per_child=self.max_jobs_per_child,
            max_memory_mb=self.max_memory_per_child, kill_grace=self.kill_grace,
            on_restart=self._child_restarted,
        )  # fmt: skip
        await self._processes.start()

    async def _close_processes(self) -> None:
        if self._processes is not None:
            await self._processes.close()

    def _register(self) -> None:
        with _database.connect(self.dsn, name=f"pgjobs register {self.id}") as conn:
            migrations.check(conn)
            _database.fetch(conn, _sql.query("worker_register"), self._register_params())
            store(conn, self.schedules)

    def _register_params(self) -> dict[str, Any]:
        return {
            "id": self.id, "hostname": socket.gethostname(), "pid": os.getpid(), "os_user": getpass.getuser(),
            "queues": self.queues, "concurrency": self.concurrency, "heart_rate": self.heart_rate,
        }  # fmt: skip

    async def _register_at_start(self) -> None:
        """Register, waiting for a database that does not answer yet (a restart, a failover, no free
        connection slot) up to startup_timeout or stop(); a wrong configuration fails at once."""
        deadline = None if self.startup_timeout is None else time.monotonic() + self.startup_timeout
        assert self._wake is not None
        while not self._stopping:
            try:
                await asyncio.to_thread(self._register)
            except (DatabaseUnavailable, psycopg.Error) as exc:
                if not _database.transient(exc):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise DatabaseUnavailable(
                        f"the database did not answer within --startup-timeout {self.startup_timeout:g} s: "
                        f"{_database.first_line(exc)}"
                    ) from None
                self._outage.failed("start-up, waiting", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._outage.delay)  # stop() sets it
                continue
            self._outage.ok()
            return

    async def _record_exit(self) -> None:
        async with self._pool.connection("exit") as conn:
            await _database.fetch_async(conn, _sql.query("worker_stopped"), {"id": self.id})

    async def _until_stopping(self, exchange: asyncio.Task[None]) -> None:
        """Return once stop() was called; raise what ended the exchange loop if it ended first."""
        assert self._stop_event is not None
        stopped = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait({exchange, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if exchange.done():
            exchange.result()

    async def _exchange_loop(self) -> None:
        """Record outcomes and claim jobs, one round trip at a time, until the worker closes and
        every outcome is recorded. A claim is tried when a slot is free and jobs may be due: after
        a notification, an outcome or a claim that filled every slot, and every poll_interval."""
        assert self._wake is not None and self._claims_over is not None
        poll_due = True
        while True:
            if self._stopping:
                self._claims_over.set()
            claiming = not self._stopping and not self._fence.fenced
            free = self.concurrency - len(self._running) if claiming else 0
            claim = free > 0 and (poll_due or self._saturated or self._wake.is_set())
            if not self._outbox and not claim:
                if self._closing:
                    return
                if self._wake.is_set():
                    # Woken while no claim can be made (no free slot, stopping, fenced): keep that
                    # jobs may be due for when a slot frees, and wait for what changes things (an
                    # outcome, a free slot, the fence lifting, closing) instead of spinning on the
                    # set event, which on Python 3.12 (wait_for returns without yielding) froze the loop.
                    self._wake.clear()
                    self._saturated = True
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except TimeoutError:
                    poll_due = True
                continue
            self._wake.clear()
            poll_due = False
            self._claiming = claim
            try:
                jobs = await self._exchange(free if claim else 0)
                if claim:
                    self._saturated = len(jobs) == free
                _fault("after_claim") if jobs else None
                for i, job in enumerate(jobs):
                    if self._fence.fenced:
                        # The fence began while the claim was in flight: these runs may not start.
                        self._give_back(jobs[i:], "the worker is fenced: it cannot prove it is alive")
                        break
                    self._start(job)
            finally:
                self._claiming = False

    async def _exchange(self, n: int) -> list[Job]:
        """One round trip: record the outbox's outcomes and claim up to n jobs. On an error a later
        attempt can mend, the outcomes go back to the outbox (still under their fence) and no job
        is claimed."""
        assert self._claims_over is not None
        batch, self._outbox = self._outbox, []
        recorded: list[_Outcome] = []
        try:
            async with self._pool.connection("exchange") as conn:
                if self._claim_in_doubt:
                    # A claim whose commit we never heard of leaves jobs active under our id: give
                    # them back (exchanges take turns, so none is in flight now; the outcomes in
                    # hand are runs of ours that finished).
                    given_back = {"worker_id": self.id, "running": list(self._held)}
                    await _database.fetch_async(conn, _sql.query("job_release_unknown"), given_back)
                    self._claim_in_doubt = False
                await self._record(conn, [o for o in batch if o.kind != "complete"], recorded)
                done = [o for o in batch if o.kind == "complete"]
                params: dict[str, Any] = {
                    "worker_id": self.id,
                    "queues": self.queues,
                    "max_jobs": n,
                    "ids": _database.int_array(o.job.id for o in done),
                    # Encoded and checked when each task returned; a task that returns None leaves
                    # the result NULL, and a batch of those sends no array at all.
                    "results": None if all(o.result is None for o in done) else [o.result for o in done],
                    "attempts": _database.int_array(o.job.attempts for o in done),
                }
                query = _sql.query("job_complete_and_dequeue")
                rows = await _database.fetch_async(conn, query, params, row_factory=tuple_row, binary=True)
                recorded.extend(done)
        except psycopg.Error as exc:
            if n:
                self._claim_in_doubt = self._claim_in_doubt or _database.needs_reconnect(exc)
            for o in recorded:
                self._forget(o.job)
            gone = {id(o) for o in recorded}
            self._outbox[:0] = [o for o in batch if id(o) not in gone]
            if not _database.transient(exc):
                raise
            if self._stopping:
                self._claims_over.set()  # this exchange claimed nothing; do not hold the drain up
            await self._outage.backoff()
            return []
        self._outage.ok()
        for o in recorded:
            self._forget(o.job)
        stale = {r[0] for r in rows if not r[1]}
        for o in done:
            if o.job.id in stale:
                logger.warning(
                    "job %d %s finished, but the run was no longer ours: result dropped", o.job.id, o.job.task
                )
                self._count(o, "dropped")
            else:
                logger.info("job %d %s complete in %.1f ms", o.job.id, o.job.task, o.seconds * 1000)
                self._count(o, "complete")
        return [Job._claimed(r, self.id) for r in rows if r[1]]

    async def _drain(self, exchange: asyncio.Task[None]) -> None:
        # A claim in flight when stop() came starts its jobs when it returns: they are ours to run.
        assert self._claims_over is not None
        over = asyncio.create_task(self._claims_over.wait())
        try:
            await asyncio.wait({exchange, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        if not self._running:
            return
        logger.info("waiting up to %.0f s for %d running job(s)", self.shutdown_grace, len(self._running))
        _, pending = await asyncio.wait(list(self._running.values()), timeout=self.shutdown_grace)
        if pending:
            logger.warning("giving %d unfinished job(s) back to the queue", len(pending))
            for job_id, t in list(self._running.items()):
                job = self._jobs.get(job_id)
                if t in pending and job is not None and job._stopped is None:
                    job._stopped = "given back to the queue: the worker is stopping"
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- liveness (pgjobs._liveness calls these on the loop) -------------------------------------
    def _runs(self) -> tuple[bool, dict[int, int]]:
        """For the heart's thread: whether a claim is in flight, then the runs held (a copy, which
        the GIL makes whole)."""
        return self._claiming, self._held.copy()

    def _on_heartbeat(self, beat: Beat) -> None:
        if beat.status == "stopping" and not self._stopping:
            self._stop_now(" (asked through the database)")
        # Stop what the beat was about: the attempts it named, not a later claim of the same job.
        for job_id in beat.abort:
            self._stop_run(job_id, "abort", beat.held.get(job_id))
        for job_id in beat.lost:
            self._stop_run(job_id, "lost", beat.held.get(job_id))
            if job_id not in self._running and self._held.get(job_id) == beat.held.get(job_id):
                self._held.pop(job_id, None)  # finished, its outcome not recorded: that will change nothing
        if beat.settled:
            self._stats["settled"] += len(beat.settled)
            logger.warning(
                "the database settled %d run(s) claimed under this worker's id that it did not hold: jobs %s "
                "(each a failed attempt, retried while attempts remain)",
                len(beat.settled), ", ".join(map(str, beat.settled)),
            )  # fmt: skip

    def _on_notify(self, channel: str, payload: str) -> None:
        # A queue's channel: jobs may be due, which the next claim finds out.
        assert self._wake is not None
        self._wake.set()

    def _on_session(self) -> None:
        # Notifications sent while the heart had no session are lost: look for work.
        if self._wake is not None:
            self._wake.set()

    def _stop_run(self, job_id: int, reason: StopReason, attempt: int | None = None) -> None:
        task, job = self._running.get(job_id), self._jobs.get(job_id)
        if task is None or job is None or job._stopped is not None:
            return
        if attempt is not None and job.attempts != attempt:
            return
        job._stopped = {
            "abort": "cancelled while running",
            "lost": "the run is no longer this worker's",
            "fenced": "given up: this worker could not reach the database to prove it is alive",
        }[reason]
        self._stop_reason[job_id] = reason
        task.cancel()

    def _give_up(self, silent: float) -> None:
        logger.warning(
            "worker %s: no heartbeat went through for %.1f s; giving up %d run(s) before the reaper "
            "may give them to another worker, and claiming nothing until a heartbeat goes through",
            self.id, silent, len(self._running),
        )  # fmt: skip
        self._stats["fences"] += 1
        for job_id in list(self._running):
            self._stop_run(job_id, "fenced")

    def _resume(self) -> None:
        logger.warning("worker %s: heartbeats go through again; claiming jobs", self.id)
        assert self._wake is not None
        self._wake.set()

    # -- running jobs ---------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        assert job.id is not None and self._loop is not None
        logger.info("job %d %s active (attempt %d of %d)", job.id, job.task, job.attempts, job.max_attempts)
        if self.log_args:
            logger.debug("job %d args: %r", job.id, job.args)
        job._bind(self._loop, functools.partial(self._touch, job))
        # The loop's own create_task: asyncio.create_task looks the loop up, a getpid() system call
        # on Python 3.11 (6% of a busy worker's CPU under py-spy).
        t = self._loop.create_task(self._execute(job), name=f"pgjobs-job-{job.id}")
        self._running[job.id] = t
        self._jobs[job.id] = job
        self._held[job.id] = job.attempts
        t.add_done_callback(functools.partial(self._finished, job))

    def _finished(self, job: Job, t: asyncio.Task[None]) -> None:
        assert job.id is not None
        if t.cancelled():
            # Stopped before its coroutine began (a fence or a cancel as its claim returned): no
            # code of _execute ran, so its outcome is decided here, or the job would stay active.
            self._to_record(self._stopped(job, 0.0, self.tasks.get(job.task)), job)
        if self._running.get(job.id) is t:
            del self._running[job.id], self._jobs[job.id]
            self._stop_reason.pop(job.id, None)
            self._kill_notes.pop(job.id, None)
        if self._saturated and self._wake is not None:
            self._wake.set()  # a slot is free and more jobs may be due

    def _to_record(self, outcome: _Outcome | None, job: Job | None = None) -> None:
        """Queue an outcome to record; None: the run is no longer ours, nothing to record."""
        if outcome is None:
            assert job is not None
            self._forget(job)
            return
        self._outbox.append(outcome)
        assert self._wake is not None
        self._wake.set()

    def _forget(self, job: Job) -> None:
        """The run is recorded, or no longer ours: the heartbeat stops naming it."""
        if job.id is not None and self._held.get(job.id) == job.attempts:
            del self._held[job.id]

    def _give_back(self, jobs: Iterable[Job], why: str) -> None:
        """Release claimed jobs without running them (the attempt is not counted)."""
        for job in jobs:
            assert job.id is not None
            logger.warning("job %d %s given back without running: %s", job.id, job.task, why)
            self._held[job.id] = job.attempts
            self._to_record(_Outcome("release", job, 0.0))

    def _stopped(self, job: Job, elapsed: float, task: Task[..., Any] | None) -> _Outcome | None:
        """The outcome of a run the worker stopped (see _stop_run), or of one given back at shutdown."""
        assert job.id is not None
        reason = self._stop_reason.get(job.id)
        self._count_kill(task, _KILL_LABEL[reason])
        note = self._kill_notes.get(job.id)
        if note is not None:
            logger.info("job %d %s stopped: %s", job.id, job.task, note)
        if reason == "lost":
            logger.warning("job %d %s stopped: it is no longer this worker's run", job.id, job.task)
            return None
        if reason == "fenced":
            logger.warning(
                "job %d %s given up after %.1f s: this worker cannot prove it is alive, so the reaper may "
                "give the job to another worker; no result of this run is recorded",
                job.id, job.task, elapsed,
            )  # fmt: skip
            # A failed attempt, fenced like any: once writes go through it queues the job again,
            # unless the reaper reset the run meanwhile (then it changes nothing).
            error = f"given up by worker {self.id}: it could not reach the database to prove it is alive"
            return _Outcome("fail", job, elapsed, error=error)
        if reason == "abort":
            # A reaper kill keeps its reason (timeout, heartbeat) as the error instead.
            error = "cancelled while running" + (f"; {note}" if note else "")
            return _Outcome("fail", job, elapsed, error=error)
        job._stopped = "given back to the queue: the worker is stopping"
        return _Outcome("release", job, elapsed)

    async def _execute(self, job: Job) -> None:
        started = time.perf_counter()
        traced = _tracing.process(job, self.id)  # None unless tracing is on
        outcome: _Outcome | None
        try:
            task = self.tasks.get(job.task)
            for what, value in (("arguments", job.args), ("meta", job.meta)):
                if isinstance(value, _database.Undecodable):  # no attempt can mend it: it fails alone
                    raise _NotRetryable(f"the job's {what} {value}")
            if task is None:
                raise _NotRetryable(f"unknown task {job.task!r}: no task of that name is registered in this worker")
            result, had_nul = without_nul(await self._invoke(task, job))
            if had_nul:
                logger.warning("job %s %s: NUL characters in its result were replaced by U+FFFD", job.id, job.task)
            try:
                encoded = None if result is None else to_json(result, f"the result of task {job.task!r}")
            except ArgumentError as exc:
                raise _NotRetryable(str(exc)) from None
            _fault("before_record")
            outcome = _Outcome("complete", job, time.perf_counter() - started, result=encoded)
        except asyncio.CancelledError:
            outcome = self._stopped(job, time.perf_counter() - started, task)
        except _NotRetryable as exc:
            outcome = _Outcome("fail", job, time.perf_counter() - started, error=str(exc), retry=False)
        except TaskFailed as exc:  # raised in a child process, or the child died
            if exc.killed is not None:
                self._count_kill(task, exc.killed)
            outcome = _Outcome("fail", job, time.perf_counter() - started, error=exc.error, retry=exc.retry)
        except BaseException as exc:  # a task's SystemExit must not leave its job active
            _tracing.failed(traced, exc)
            error = "".join(traceback.format_exception(exc)).replace("\x00", "\\x00")  # text cannot hold NUL
            outcome = _Outcome("fail", job, time.perf_counter() - started, error=error)
        if traced is not None:
            _tracing.processed(traced, outcome, self._stop_reason)
        self._to_record(outcome, job)

    async def _invoke(self, task: Task[..., Any], job: Job) -> Any:
        executor = self._executor_of(task)
        if executor == "process":
            assert self._processes is not None and job.id is not None
            touch, on_stop = (
                functools.partial(self._touch, job),
                functools.partial(self._kill_notes.__setitem__, job.id),
            )
            return await self._processes.run(job, task.name, task.pass_job, touch, on_stop)
        leading = (job,) if task.pass_job else ()
        if isinstance(job.args, list):
            call = functools.partial(task.func, *leading, *job.args)
        else:
            call = functools.partial(task.func, *leading, **job.args)
        if executor == "async":
            return await call()
        why = functools.partial(self._why_stopped, job)
        result = await run_in_thread(call, f"pgjobs-job-{job.id}", why, self.kill_grace)
        if inspect.isawaitable(result):
            result = await result
        return result

    @staticmethod
    def _why_stopped(job: Job) -> str:
        return f"job {job.id}: {job._stopped or 'stopped by the worker'}"

    async def _touch(self, job: Job, progress: float | None, meta: Mapping[str, Any] | None) -> bool:
        params = {
            "id": job.id,
            "attempt": job.attempts,
            "progress": progress,
            "meta": to_json(dict(meta), "meta") if meta is not None else None,
        }
        try:
            async with self._pool.connection("touch") as conn:
                rows = await _database.fetch_async(conn, _sql.query("job_touch"), params)
        except psycopg.Error as exc:
            if _database.transient(exc):
                return True  # not recorded this time; the run is ours as far as we know (the fence watches)
            raise
        return bool(rows[0]["touched"])

    # -- recording outcomes ---------------------------------------------------------------------
    async def _record(self, conn: AsyncConnection, batch: list[_Outcome], recorded: list[_Outcome]) -> None:
        """Record failed and given-back runs (completions go with the next claim), adding each
        outcome to ``recorded`` once its statement went through."""
        for o in batch:
            if o.kind == "fail":
                rows = await _database.fetch_async(
                    conn,
                    _sql.query("job_fail"),
                    {"id": o.job.id, "error": o.error, "attempt": o.job.attempts, "retry": o.retry},
                )
                recorded.append(o)
                self._log_failure(o, rows[0]["status"])
                status = rows[0]["status"]
                self._count(o, "dropped" if status is None else "retried" if status == "queued" else "failed")
                if rows[0]["status"] == "failed" and o.job.id is not None:
                    self._failures.append((o.job.id, o.job.task, o.error))
        released = [o for o in batch if o.kind == "release"]
        if released:
            await _database.fetch_async(
                conn, _sql.query("job_release"), {"worker_id": self.id, "ids": [o.job.id for o in released]}
            )
            recorded.extend(released)
            for o in released:
                logger.info("job %d %s given back to the queue after %.1f ms", o.job.id, o.job.task, o.seconds * 1000)
                self._count(o, "released")

    def _count(self, o: _Outcome, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.observe(o.job.queue, o.job.task, outcome, o.seconds)

    def _count_kill(self, task: Task[..., Any] | None, reason: str) -> None:
        self._stats["kills"] += 1
        if self.metrics is not None and task is not None:
            self.metrics.killed(self._executor_of(task), reason)

    def _child_restarted(self, reason: str) -> None:
        self._stats["child_restarts"] += 1
        if self.metrics is not None:
            self.metrics.restarted(reason)

    @staticmethod
    def _log_failure(o: _Outcome, status: str | None) -> None:
        summary = ((o.error or "").strip().splitlines() or [""])[-1]
        ms = o.seconds * 1000
        if status == "queued":
            logger.info("job %d %s queued for retry after %.1f ms: %s", o.job.id, o.job.task, ms, summary)
        elif status is None:
            logger.warning("job %d %s failed, but the run was no longer ours: %s", o.job.id, o.job.task, summary)
        else:
            logger.warning("job %d %s %s after %.1f ms: %s", o.job.id, o.job.task, status, ms, summary)
