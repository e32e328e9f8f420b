"""Enqueueing and looking up jobs from Python, sync and async.

Each public function builds one ``_Call`` (query, parameters, how to read the rows); ``_run`` and
``_run_async`` are the only sync- and async-specific code. Without ``conn=`` a process-wide pool
on the configured DSN is used; with it, the statement joins the caller's transaction.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import math
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import _database, _sql, migrations
from .errors import ArgumentError
from .job import Job, JobStatus, check_arguments, to_json
from .reaper import ReapCounts
from .tasks import Task

T = TypeVar("T")

OPTION_NAMES = frozenset(
    {"queue", "priority", "scheduled", "delay", "group_key", "key", "retries", "timeout",
     "heartbeat", "retry_delay", "retry_backoff", "ttl", "meta"}
)  # fmt: skip

Connection = psycopg.Connection[Any]
AsyncConnection = psycopg.AsyncConnection[Any]


# ------------------------------------------------------------------------------------------------
# Requests: what enqueue and enqueue_many send
# ------------------------------------------------------------------------------------------------
def _seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ArgumentError(f"{name} must be a number of seconds or a timedelta, got {value!r}")


def _int(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ArgumentError(f"{name} must be an integer, got {value!r}")


@dataclass(frozen=True)
class JobRequest:
    """A job to enqueue: built by ``pgjobs.job()`` or ``Task.job()``, sent by enqueue_many()."""

    task: str
    args: list[Any] | dict[str, Any]
    options: Mapping[str, Any]

    def params(self) -> dict[str, Any]:
        """Parameters of the ``job_enqueue`` query."""
        o = self.options
        return {
            "task": self.task,
            "args": to_json(self.args, f"the arguments of task {self.task!r}"),
            "meta": to_json(o["meta"], "meta") if o.get("meta") is not None else None,
            **{k: o.get(k) for k in _COLUMNS},
        }

    def document(self) -> dict[str, Any]:
        """This job as one element of the JSON array that ``pgjobs.enqueue_many`` takes."""
        doc: dict[str, Any] = {"task": self.task, "args": self.args}
        for k in (*_COLUMNS, "meta"):
            v = self.options.get(k)
            if isinstance(v, dt.datetime):
                v = v.isoformat()
            elif isinstance(v, float) and math.isinf(v):
                v = "Infinity"
            if v is not None:
                doc[k] = v
        return doc


_COLUMNS = ("queue", "priority", "scheduled_at", "delay", "group_key", "key", "max_attempts",
            "timeout", "heartbeat", "retry_delay", "retry_backoff", "ttl")  # fmt: skip


def job(
    task: str | Task[..., Any],
    /,
    *task_args: Any,
    args: Sequence[Any] | Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    scheduled: dt.datetime | None = None,
    delay: float | dt.timedelta | None = None,
    group_key: str | None = None,
    key: str | None = None,
    retries: int | None = None,
    timeout: float | dt.timedelta | None = None,
    heartbeat: float | dt.timedelta | None = None,
    retry_delay: float | dt.timedelta | None = None,
    retry_backoff: bool | float | None = None,
    ttl: int | dt.timedelta | None = None,
    meta: Mapping[str, Any] | None = None,
    **task_kwargs: Any,
) -> JobRequest:
    """Describe a job to enqueue; see enqueue() for the parameters. Nothing is sent."""
    explicit = {
        "queue": queue, "priority": priority, "scheduled": scheduled, "delay": delay,
        "group_key": group_key, "key": key, "retries": retries, "timeout": timeout,
        "heartbeat": heartbeat, "retry_delay": retry_delay, "retry_backoff": retry_backoff,
        "ttl": ttl, "meta": meta,
    }  # fmt: skip
    if isinstance(task, Task):
        name, defaults = task.name, task.options
    elif isinstance(task, str):
        name, defaults = task, {}
    else:
        raise ArgumentError(f"task must be a task name or a @task function, got {task!r}")
    o = {**defaults, **{k: v for k, v in explicit.items() if v is not None}}

    if args is not None and (task_args or task_kwargs):
        raise ArgumentError("pass the task's arguments either in args= or directly, not both")
    if task_args and task_kwargs:
        raise ArgumentError("pass positional or keyword arguments, not both: a job stores one JSON array or object")
    if args is None:
        args = list(task_args) if task_args else dict(task_kwargs)
    elif isinstance(args, Mapping):
        args = dict(args)
    elif isinstance(args, Sequence) and not isinstance(args, str | bytes):
        args = list(args)
    else:
        raise ArgumentError(f"args must be a list or a dict, got {type(args).__name__}")
    check_arguments(name, args)

    scheduled_at = o.get("scheduled")
    if scheduled_at is not None:
        if not isinstance(scheduled_at, dt.datetime):
            raise ArgumentError(f"scheduled must be a datetime, got {scheduled_at!r}")
        if scheduled_at.tzinfo is None:
            raise ArgumentError("scheduled must be timezone-aware (for example datetime.now(UTC))")
        if o.get("delay") is not None:
            raise ArgumentError("give scheduled or delay, not both")
    retries_ = _int("retries", o.get("retries"))
    if retries_ is not None and retries_ < 0:
        raise ArgumentError(f"retries must be >= 0, got {retries_}")
    backoff = o.get("retry_backoff")
    if isinstance(backoff, bool):
        backoff = math.inf if backoff else 0.0
    elif backoff is not None:
        if not isinstance(backoff, int | float) or not backoff >= 0:
            raise ArgumentError(f"retry_backoff must be a bool or a number of seconds, got {backoff!r}")
        backoff = float(backoff)
    ttl_ = o.get("ttl")
    if isinstance(ttl_, dt.timedelta):
        ttl_ = int(ttl_.total_seconds())
    m = o.get("meta")
    if m is not None and not isinstance(m, Mapping):
        raise ArgumentError(f"meta must be a dict, got {type(m).__name__}")
    options = {
        "queue": o.get("queue"),
        "priority": _int("priority", o.get("priority")),
        "scheduled_at": scheduled_at,
        "delay": _seconds("delay", o.get("delay")),
        "group_key": o.get("group_key"),
        "key": o.get("key"),
        "max_attempts": None if retries_ is None else retries_ + 1,
        "timeout": _seconds("timeout", o.get("timeout")),
        "heartbeat": _seconds("heartbeat", o.get("heartbeat")),
        "retry_delay": _seconds("retry_delay", o.get("retry_delay")),
        "retry_backoff": backoff,
        "ttl": _int("ttl", ttl_),
        "meta": dict(m) if m is not None else None,
    }
    return JobRequest(task=name, args=args, options=options)


# ------------------------------------------------------------------------------------------------
# Running calls: the only sync- and async-specific code
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Call(Generic[T]):
    query: sql.SQL | sql.Composed
    params: Mapping[str, Any]
    parse: Callable[[list[_database.Row]], T]


# wait(): seconds before the first re-read of jobs nobody announced, doubling up to the last.
_RECHECK_FIRST = 0.5
_RECHECK_MAX = 30.0

_lock = threading.Lock()
_pool: ConnectionPool[Any] | None = None
_async_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] = (
    weakref.WeakKeyDictionary()
)


def _ready_dsn() -> str:
    """The configured DSN, checked to answer and to hold the schema (created on the embedded server)."""
    dsn = migrations.prepare()
    with _database.connect(dsn) as conn:  # one clear line for a wrong DSN, not a pool timeout
        migrations.check(conn)
    return dsn


def _default_pool() -> ConnectionPool[Any]:
    global _pool
    with _lock:
        if _pool is None:
            dsn = _ready_dsn()
            _pool = ConnectionPool(
                dsn, min_size=1, max_size=8, kwargs={"autocommit": True, **_database.session_params(dsn)},
                open=True, name="pgjobs",
            )  # fmt: skip
            atexit.register(_pool.close)
        return _pool


async def _default_async_pool() -> AsyncConnectionPool[Any]:
    loop = asyncio.get_running_loop()
    pool = _async_pools.get(loop)
    if pool is None:
        dsn = await asyncio.to_thread(_ready_dsn)
        kwargs = {"autocommit": True, **_database.session_params(dsn)}
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=8, kwargs=kwargs, open=False)
        await pool.open()
        _async_pools[loop] = pool
    return pool


def close() -> None:
    """Close the default connection pool (it reopens on the next call)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None


async def close_async() -> None:
    """Close the default async pool of the running event loop."""
    pool = _async_pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


def _run(call: _Call[T], conn: Connection | None) -> T:
    if conn is not None:
        return call.parse(_database.fetch(conn, call.query, call.params))
    with _default_pool().connection() as c:
        return call.parse(_database.fetch(c, call.query, call.params))


async def _run_async(call: _Call[T], conn: AsyncConnection | None) -> T:
    if conn is not None:
        return call.parse(await _database.fetch_async(conn, call.query, call.params))
    async with (await _default_async_pool()).connection() as c:
        return call.parse(await _database.fetch_async(c, call.query, call.params))


# ------------------------------------------------------------------------------------------------
# The calls
# ------------------------------------------------------------------------------------------------
def _one_job(rows: list[_database.Row]) -> Job:
    return Job.from_row(rows[0])


def _maybe_job(rows: list[_database.Row]) -> Job | None:
    return Job.from_row(rows[0]) if rows else None


def _enqueue_call(request: JobRequest) -> _Call[Job]:
    return _Call(_sql.query("job_enqueue"), request.params(), _one_job)


def _enqueue_many_call(requests: Iterable[JobRequest]) -> _Call[list[int]]:
    docs = [r.document() for r in requests]
    return _Call(_sql.query("job_enqueue_many"), {"jobs": Jsonb(docs)}, lambda rows: [r["id"] for r in rows])


def _get_call(job_id: int) -> _Call[Job | None]:
    return _Call(_sql.query("job_get"), {"id": job_id}, _maybe_job)


def _cancel_call(job_id: int) -> _Call[JobStatus | None]:
    def parse(rows: list[_database.Row]) -> JobStatus | None:
        status = rows[0]["status"]
        return JobStatus(status) if status is not None else None

    return _Call(_sql.query("job_cancel"), {"id": job_id}, parse)


def enqueue(task: str | Task[..., Any], /, *args: Any, conn: Connection | None = None, **kwargs: Any) -> Job:
    """Enqueue a job and return it as stored.

    Positional and keyword arguments other than the options below go to the task (one kind or
    the other: a job stores one JSON array or object); ``args=`` gives them explicitly instead.

    :param conn: a connection of the caller's: the job joins its transaction.
    :param queue: the queue (default ``"default"``).
    :param priority: lower runs first (default 0; negatives allowed).
    :param scheduled: a timezone-aware time to run at; or ``delay`` seconds from now (database clock).
    :param group_key: jobs sharing it never run at the same time.
    :param key: while an unfinished job with this key exists, that job is returned instead.
    :param retries: how many times a failed run is tried again (default 2).
    :param timeout: seconds a run may take (0: no limit); ``heartbeat``: seconds it may go untouched.
    :param retry_delay: seconds before a retry; ``retry_backoff``: True to double it per attempt
        with jitter, or a number to cap the doubling at that many seconds.
    :param ttl: seconds a finished job is kept (0: forever, -1: not kept).
    :param meta: a dict stored with the job.
    """
    return _run(_enqueue_call(job(task, *args, **kwargs)), conn)


async def enqueue_async(
    task: str | Task[..., Any], /, *args: Any, conn: AsyncConnection | None = None, **kwargs: Any
) -> Job:
    """The async twin of enqueue()."""
    return await _run_async(_enqueue_call(job(task, *args, **kwargs)), conn)


def enqueue_many(jobs: Iterable[JobRequest], *, conn: Connection | None = None) -> list[int]:
    """Enqueue many jobs (built with ``pgjobs.job()``) in one round trip; returns their ids in order."""
    return _run(_enqueue_many_call(jobs), conn)


async def enqueue_many_async(jobs: Iterable[JobRequest], *, conn: AsyncConnection | None = None) -> list[int]:
    """The async twin of enqueue_many()."""
    return await _run_async(_enqueue_many_call(jobs), conn)


def get_job(job_id: int, *, conn: Connection | None = None) -> Job | None:
    """The job with that id, or None."""
    return _run(_get_call(job_id), conn)


async def get_job_async(job_id: int, *, conn: AsyncConnection | None = None) -> Job | None:
    """The async twin of get_job()."""
    return await _run_async(_get_call(job_id), conn)


def cancel(job_id: int, *, conn: Connection | None = None) -> JobStatus | None:
    """Cancel a job: a queued one is aborted, an active one is asked to stop (``aborting``).

    Returns the job's status afterwards, or None for an unknown id.
    """
    return _run(_cancel_call(job_id), conn)


async def cancel_async(job_id: int, *, conn: AsyncConnection | None = None) -> JobStatus | None:
    """The async twin of cancel()."""
    return await _run_async(_cancel_call(job_id), conn)


async def wait_async(job_ids: Iterable[int], timeout: float | None = None, *, dsn: str | None = None) -> list[Job]:
    """Wait until every job is finished (or the timeout passes) and return them as they are then.

    Listens on the completion channel (through pgjobs.listen), and reads the jobs again only when
    one of them is announced, or now and then in case an announcement came too early for it.
    """
    wanted = set(job_ids)
    if not wanted:
        return []
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    target = await asyncio.to_thread(migrations.prepare, dsn)
    conn = await _database.connect_async(target)
    try:
        # A client kept off the channels finds its jobs finished by the re-reads below.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            await _database.fetch_async(conn, _sql.query("listen"), {"channel": "pgjobs.done"})
        query, ids = _sql.query("job_get_many"), list(wanted)
        recheck = _RECHECK_FIRST
        while True:
            rows = await _database.fetch_async(conn, query, {"ids": ids})
            jobs = [Job.from_row(r) for r in rows]
            pending = {j.id for j in jobs if not j.finished}
            remaining = None if deadline is None else deadline - loop.time()
            if not pending or (remaining is not None and remaining <= 0):
                return sorted(jobs, key=lambda j: ids.index(j.id) if j.id in wanted else 0)
            # A job that finished while this session was starting to listen may have checked for
            # listeners just before it could see us: look again now and then, ever more rarely.
            timeout = recheck if remaining is None else min(recheck, remaining)
            recheck = min(recheck * 2, _RECHECK_MAX)
            async for note in conn.notifies(timeout=timeout):
                if pending.intersection(int(i) for i in note.payload.split(",") if i):
                    break
    finally:
        await conn.close()


def wait(job_ids: Iterable[int], timeout: float | None = None, *, dsn: str | None = None) -> list[Job]:
    """The sync twin of wait_async() (it runs the async one; call it where no event loop runs)."""
    return asyncio.run(wait_async(job_ids, timeout, dsn=dsn))


# ------------------------------------------------------------------------------------------------
# Workers, the reaper, events
# ------------------------------------------------------------------------------------------------
def _stop_worker_call(worker_id: str) -> _Call[str | None]:
    return _Call(_sql.query("worker_stop"), {"id": worker_id}, lambda rows: rows[0]["status"])


def _is_alive_call(worker_id: str, grace_multiplier: float) -> _Call[bool]:
    return _Call(
        _sql.query("worker_is_alive"),
        {"id": worker_id, "grace": grace_multiplier},
        lambda rows: bool(rows[0]["alive"]),
    )


def _reap_call(batch_size: int, grace_multiplier: float) -> _Call[ReapCounts]:
    return _Call(
        _sql.query("reap"),
        {"batch_size": batch_size, "grace": grace_multiplier},
        lambda rows: ReapCounts(**rows[0]),
    )


def stop_worker(worker_id: str, *, conn: Connection | None = None) -> str | None:
    """Ask a worker to stop gracefully, wherever it runs; returns its status (None: unknown id)."""
    return _run(_stop_worker_call(worker_id), conn)


async def stop_worker_async(worker_id: str, *, conn: AsyncConnection | None = None) -> str | None:
    """The async twin of stop_worker()."""
    return await _run_async(_stop_worker_call(worker_id), conn)


def is_alive(worker_id: str, grace_multiplier: float = 2.1, *, conn: Connection | None = None) -> bool:
    """Whether a worker is running and beat within grace_multiplier heart rates (database clock)."""
    return _run(_is_alive_call(worker_id, grace_multiplier), conn)


async def is_alive_async(worker_id: str, grace_multiplier: float = 2.1, *, conn: AsyncConnection | None = None) -> bool:
    """The async twin of is_alive()."""
    return await _run_async(_is_alive_call(worker_id, grace_multiplier), conn)


def reap(*, batch_size: int = 1000, grace_multiplier: float = 2.1, conn: Connection | None = None) -> ReapCounts:
    """Run one reaper pass (see pgjobs.reap() in SQL) and return its counts."""
    return _run(_reap_call(batch_size, grace_multiplier), conn)


async def reap_async(
    *, batch_size: int = 1000, grace_multiplier: float = 2.1, conn: AsyncConnection | None = None
) -> ReapCounts:
    """The async twin of reap()."""
    return await _run_async(_reap_call(batch_size, grace_multiplier), conn)


@dataclass(frozen=True)
class Event:
    """A job changed status."""

    job_id: int
    status: JobStatus


def _parse_events(payload: str) -> list[Event]:
    events = []
    for item in payload.split(","):
        job_id, _, status = item.partition(":")
        if job_id.isdigit() and status:
            events.append(Event(int(job_id), JobStatus(status)))
    return events


def events(*, dsn: str | None = None, timeout: float | None = None) -> Iterator[Event]:
    """Follow job state changes as they commit (until the timeout, if given)."""
    with _database.connect(migrations.prepare(dsn)) as conn:
        _database.fetch(conn, _sql.query("listen"), {"channel": "pgjobs.events"})
        for note in conn.notifies(timeout=timeout):
            yield from _parse_events(note.payload)


async def events_async(*, dsn: str | None = None, timeout: float | None = None) -> AsyncIterator[Event]:
    """The async twin of events()."""
    conn = await _database.connect_async(await asyncio.to_thread(migrations.prepare, dsn))
    try:
        await _database.fetch_async(conn, _sql.query("listen"), {"channel": "pgjobs.events"})
        async for note in conn.notifies(timeout=timeout):
            for event in _parse_events(note.payload):
                yield event
    finally:
        await conn.close()
