"""The worker: claims due jobs, runs their tasks, records what happened.

Async tasks run on the worker's event loop, sync tasks in a thread pool. Jobs are claimed in
batches sized to the free slots; outcomes are written in batches by one flusher, never before the
task has finished. Connections that break are reopened with backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import random
import secrets
import signal
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from . import _database, _sql, migrations
from .errors import ArgumentError, ConfigurationError
from .job import Job, to_json
from .tasks import Task, registry

logger = logging.getLogger("pgjobs.worker")

AsyncConnection = psycopg.AsyncConnection[_database.Row]


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


class _Link:
    """One connection of the worker's, reopened with backoff and jitter after it breaks."""

    def __init__(self, dsn: str, name: str, setup: Callable[[AsyncConnection], Awaitable[None]] | None = None) -> None:
        self.dsn, self.name, self.setup = dsn, name, setup
        self.conn: AsyncConnection | None = None
        self.failures = 0

    async def get(self, deadline: float | None = None) -> AsyncConnection:
        delay = 0.05
        while self.conn is None or self.conn.closed:
            try:
                conn = await _database.connect_async(self.dsn)
                if self.setup is not None:
                    await self.setup(conn)
                self.conn = conn
                if self.failures:
                    logger.info("%s connection restored", self.name)
                self.failures = 0
            except (ConfigurationError, psycopg.OperationalError) as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    logger.warning("%s connection failed (%s); retrying", self.name, _first_line(exc))
                if deadline is not None and time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
        return self.conn

    async def broken(self, exc: BaseException) -> None:
        logger.warning("%s connection lost: %s", self.name, _first_line(exc))
        await self.close()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def default_worker_id() -> str:
    """A fresh id per process start: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Runs the jobs of some queues with the tasks registered in this process.

    :param dsn: the database (see pgjobs.resolve_dsn).
    :param queues: the queues to take jobs from.
    :param concurrency: how many jobs run at once.
    :param poll_interval: seconds between polls when no notification arrives (a lost NOTIFY
        delays a job by at most this much).
    :param shutdown_grace: seconds running jobs get to finish after stop(); the rest are given back.
    :param tasks: task name to Task; defaults to every task registered in this process.
    :param log_args: log each job's arguments at DEBUG.
    """

    def __init__(
        self,
        dsn: str,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        poll_interval: float = 1.0,
        shutdown_grace: float = 30.0,
        tasks: Mapping[str, Task[..., Any]] | None = None,
        worker_id: str | None = None,
        log_args: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.dsn = dsn
        self.id = worker_id or default_worker_id()
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.tasks = tasks if tasks is not None else registry
        self.log_args = log_args
        self._running: dict[int, asyncio.Task[None]] = {}
        self._outbox: list[_Outcome] = []
        self._stopping = False
        self._closing = False
        self._saturated = False
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._outbox_ready: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="pgjobs-task")
        self._claim_link = _Link(dsn, "claim", self._after_claim_reconnect)
        self._record_link = _Link(dsn, "record")
        self._listen_link = _Link(dsn, "listen", self._listen_setup)

    # -- control --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop claiming, let running jobs finish within the grace period, give the rest back.
        Safe to call from any thread."""
        if self._loop is None:
            self._stopping = True
        elif self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop_now)

    def _stop_now(self) -> None:
        if not self._stopping:
            logger.info("worker %s stopping", self.id)
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("second %s: exiting at once", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)
        logger.info("%s received: finishing running jobs (again to exit at once)", signal.Signals(signum).name)
        self._stop_now()

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping

    @property
    def busy_threads(self) -> bool:
        """Whether sync tasks are still running in threads (they cannot be interrupted)."""
        return any(t.is_alive() for t in getattr(self._executor, "_threads", ()))

    # -- main -------------------------------------------------------------------------------------
    async def run(self, *, handle_signals: bool = False) -> None:
        """Process jobs until stop() (or, with handle_signals, SIGTERM or SIGINT)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        await asyncio.to_thread(self._check_schema)
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
        await self._claim_link.get(deadline=time.monotonic())
        await self._listen_link.get(deadline=time.monotonic())
        listener = asyncio.create_task(self._listen_loop(), name="pgjobs-listen")
        flusher = asyncio.create_task(self._flush_loop(), name="pgjobs-flush")
        logger.info(
            "worker %s started: queues %s, concurrency %d, tasks %s",
            self.id, ",".join(self.queues), self.concurrency, ", ".join(sorted(self.tasks)) or "none",
        )  # fmt: skip
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            self._closing = True
            self._outbox_ready.set()
            try:
                await asyncio.wait_for(flusher, timeout=self.shutdown_grace + 5)
            except (TimeoutError, psycopg.Error, ConfigurationError) as exc:
                ids = [o.job.id for o in self._outbox]
                logger.error("could not record the outcome of jobs %s (%s); the reaper will reset them", ids, exc)
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            for link in (self._claim_link, self._record_link, self._listen_link):
                await link.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            logger.info("worker %s stopped", self.id)

    def _check_schema(self) -> None:
        with _database.connect(self.dsn) as conn:
            migrations.check(conn)

    async def _claim_loop(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            free = self.concurrency - len(self._running)
            if free > 0:
                self._wake.clear()
                jobs = await self._claim(free)
                for job in jobs:
                    self._start(job)
                self._saturated = len(jobs) == free
                if self._saturated:
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _claim(self, n: int) -> list[Job]:
        try:
            conn = await self._claim_link.get()
            rows = await _database.fetch_async(
                conn, _sql.query("job_dequeue"), {"worker_id": self.id, "queues": self.queues, "max_jobs": n}
            )
        except psycopg.OperationalError as exc:
            await self._claim_link.broken(exc)
            return []
        return [Job.from_row(r) for r in rows]

    async def _after_claim_reconnect(self, conn: AsyncConnection) -> None:
        # A claim whose commit we never heard of leaves jobs active under our id: give them back.
        await _database.fetch_async(
            conn, _sql.query("job_release_unknown"), {"worker_id": self.id, "running": list(self._running)}
        )

    async def _drain(self) -> None:
        if not self._running:
            return
        logger.info("waiting up to %.0f s for %d running job(s)", self.shutdown_grace, len(self._running))
        _, pending = await asyncio.wait(list(self._running.values()), timeout=self.shutdown_grace)
        if pending:
            logger.warning("giving %d unfinished job(s) back to the queue", len(pending))
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- notifications ------------------------------------------------------------------------------
    async def _listen_setup(self, conn: AsyncConnection) -> None:
        rows = await _database.fetch_async(conn, _sql.query("queue_channels"), {"queues": self.queues})
        await conn.execute(_database.listen_query([r["channel"] for r in rows]))
        if self._wake is not None:
            self._wake.set()  # notifications sent while we were not listening are lost: look now

    async def _listen_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                conn = await self._listen_link.get()
                async for _ in conn.notifies():
                    self._wake.set()
            except psycopg.OperationalError as exc:
                await self._listen_link.broken(exc)

    # -- running jobs ---------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        assert job.id is not None
        logger.info("job %d %s active (attempt %d of %d)", job.id, job.task, job.attempts, job.max_attempts)
        if self.log_args:
            logger.debug("job %d args: %r", job.id, job.args)
        t = asyncio.create_task(self._execute(job), name=f"pgjobs-job-{job.id}")
        self._running[job.id] = t
        t.add_done_callback(functools.partial(self._finished, job.id))

    def _finished(self, job_id: int, _: asyncio.Task[None]) -> None:
        self._running.pop(job_id, None)
        if self._saturated and self._wake is not None:
            self._wake.set()

    async def _execute(self, job: Job) -> None:
        started = time.perf_counter()
        outcome: _Outcome
        try:
            task = self.tasks.get(job.task)
            if task is None:
                raise _NotRetryable(f"unknown task {job.task!r}: no task of that name is registered in this worker")
            result = await self._invoke(task, job)
            try:
                to_json(result, f"the result of task {job.task!r}")
            except ArgumentError as exc:
                raise _NotRetryable(str(exc)) from None
            outcome = _Outcome("complete", job, time.perf_counter() - started, result=result)
        except asyncio.CancelledError:
            outcome = _Outcome("release", job, time.perf_counter() - started)
        except _NotRetryable as exc:
            outcome = _Outcome("fail", job, time.perf_counter() - started, error=str(exc), retry=False)
        except BaseException as exc:  # a task's SystemExit must not leave its job active
            error = "".join(traceback.format_exception(exc))
            outcome = _Outcome("fail", job, time.perf_counter() - started, error=error)
        self._outbox.append(outcome)
        assert self._outbox_ready is not None
        self._outbox_ready.set()

    async def _invoke(self, task: Task[..., Any], job: Job) -> Any:
        leading = (job,) if task.pass_job else ()
        if isinstance(job.args, list):
            call = functools.partial(task.func, *leading, *job.args)
        else:
            call = functools.partial(task.func, *leading, **job.args)
        if task.is_async:
            return await call()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, contextvars.copy_context().run, call)
        if inspect.isawaitable(result):
            result = await result
        return result

    # -- recording outcomes ---------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        assert self._outbox_ready is not None
        while True:
            if not self._outbox:
                if self._closing:
                    return
                await self._outbox_ready.wait()
                self._outbox_ready.clear()
                continue
            batch = list(self._outbox)
            deadline = time.monotonic() + self.shutdown_grace if self._closing else None
            try:
                conn = await self._record_link.get(deadline)
                await self._record(conn, batch)
            except psycopg.OperationalError as exc:
                await self._record_link.broken(exc)
                continue
            del self._outbox[: len(batch)]

    async def _record(self, conn: AsyncConnection, batch: list[_Outcome]) -> None:
        done = [o for o in batch if o.kind == "complete"]
        if done:
            rows = await _database.fetch_async(
                conn,
                _sql.query("job_complete_many"),
                {
                    "ids": [o.job.id for o in done],
                    "results": [to_json(o.result, "result") for o in done],
                    "attempts": [o.job.attempts for o in done],
                },
            )
            recorded = {r["id"] for r in rows}
            for o in done:
                if o.job.id in recorded:
                    logger.info("job %d %s complete in %.1f ms", o.job.id, o.job.task, o.seconds * 1000)
                else:
                    logger.warning(
                        "job %d %s finished, but it was no longer ours: result dropped", o.job.id, o.job.task
                    )
        for o in batch:
            if o.kind == "fail":
                rows = await _database.fetch_async(
                    conn,
                    _sql.query("job_fail"),
                    {"id": o.job.id, "error": o.error, "attempt": o.job.attempts, "retry": o.retry},
                )
                status = rows[0]["status"]
                summary = (o.error or "").strip().splitlines()[-1:] or [""]
                if status == "queued":
                    logger.info(
                        "job %d %s queued for retry after %.1f ms: %s",
                        o.job.id,
                        o.job.task,
                        o.seconds * 1000,
                        summary[0],
                    )
                elif status is None:
                    logger.warning("job %d %s failed, but it was no longer ours: %s", o.job.id, o.job.task, summary[0])
                else:
                    logger.warning(
                        "job %d %s %s after %.1f ms: %s", o.job.id, o.job.task, status, o.seconds * 1000, summary[0]
                    )
        released = [o for o in batch if o.kind == "release"]
        if released:
            await _database.fetch_async(
                conn, _sql.query("job_release"), {"worker_id": self.id, "ids": [o.job.id for o in released]}
            )
            for o in released:
                logger.info("job %d %s given back to the queue after %.1f ms", o.job.id, o.job.task, o.seconds * 1000)
