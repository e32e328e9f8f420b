"""Enqueueing, cancelling and watching jobs from Python, sync and async.

Each public function builds one ``Call`` and sends it with ``run`` or ``run_async`` (see
``_calls``): without ``conn=`` on a process-wide pool, with it in the caller's transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol, overload, runtime_checkable

import psycopg
from psycopg.types.json import Jsonb

from . import _database, _sql, _tracing, migrations
from ._calls import AsyncConnection, Call, Connection, run, run_async
from ._calls import close as close
from ._calls import close_async as close_async
from .errors import ArgumentError, ConfigurationError, QueueFull
from .job import Job, JobStatus, as_jsonb, encode_arguments, to_json
from .job import get_job as get_job
from .job import get_job_async as get_job_async
from .job import wait as wait
from .job import wait_async as wait_async
from .reaper import ReapCounts


@runtime_checkable
class TaskRef(Protocol):
    """What enqueue needs of a ``@task`` function: its name and its default options."""

    name: str
    options: dict[str, Any]


OPTION_NAMES = frozenset(
    {"queue", "priority", "scheduled", "delay", "group_key", "key", "retries", "timeout",
     "heartbeat", "retry_delay", "retry_backoff", "ttl", "meta", "depends_on"}
)  # fmt: skip


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
    #: The arguments as JSON text, encoded once by job().
    encoded: str = field(repr=False, compare=False)

    def params(self) -> dict[str, Any]:
        """Parameters of the ``job_enqueue`` query."""
        o = self.options
        parents = o.get("depends_on")
        if parents and any(isinstance(p, JobRequest) for p in parents):
            raise ArgumentError("depends_on names a job not enqueued yet: enqueue both in one enqueue_many()")
        return {
            "task": self.task,
            "args": as_jsonb(self.encoded),
            "meta": to_json(o["meta"], "meta") if o.get("meta") is not None else None,
            "depends_on": list(parents) if parents else None,
            **{k: o.get(k) for k in _COLUMNS},
        }

    def document(self, position: Mapping[int, int] | None = None) -> dict[str, Any]:
        """This job as one element of the JSON array that ``pgjobs.enqueue_many`` takes;
        ``position`` maps ``id()`` of the requests of that array to their index."""
        doc: dict[str, Any] = {"task": self.task, "args": self.args}
        for k in (*_COLUMNS, "meta"):
            v = self.options.get(k)
            if isinstance(v, dt.datetime):
                v = v.isoformat()
            elif isinstance(v, float) and math.isinf(v):
                v = "Infinity"
            if v is not None:
                doc[k] = v
        parents = self.options.get("depends_on")
        if parents:
            ids = [p for p in parents if not isinstance(p, JobRequest)]
            items = [(position or {}).get(id(p)) for p in parents if isinstance(p, JobRequest)]
            if None in items:
                raise ArgumentError("depends_on names a job that is not in this enqueue_many() call")
            if ids:
                doc["depends_on"] = ids
            if items:
                doc["depends_on_items"] = items
        return doc


_COLUMNS = ("queue", "priority", "scheduled_at", "delay", "group_key", "key", "max_attempts",
            "timeout", "heartbeat", "retry_delay", "retry_backoff", "ttl", "tenant")  # fmt: skip


def _options(o: Mapping[str, Any]) -> dict[str, Any]:
    """A job's options, checked and in the form enqueue sends (None: the default)."""
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
    parents: list[int | JobRequest] | None = None
    if o.get("depends_on") is not None:
        parents = []
        for p in o["depends_on"]:
            if isinstance(p, Job) and p.id is not None:
                parents.append(p.id)
            elif isinstance(p, JobRequest) or (isinstance(p, int) and not isinstance(p, bool)):
                parents.append(p)
            else:
                raise ArgumentError(f"depends_on must hold job ids, Jobs or JobRequests, got {p!r}")
    return {
        "depends_on": tuple(parents) if parents is not None else None,
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
        "tenant": o.get("tenant"),
    }


_NO_OPTIONS: Mapping[str, Any] = MappingProxyType(_options({}))


def job(
    task: str | TaskRef,
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
    depends_on: Sequence[int | Job | JobRequest] | None = None,
    tenant: str | None = None,
    **task_kwargs: Any,
) -> JobRequest:
    """Describe a job to enqueue; see enqueue() for the parameters. Nothing is sent."""
    defaults: Mapping[str, Any] | None = None
    if isinstance(task, str):
        name = task
    else:
        # What TaskRef describes, read directly: isinstance() against a runtime-checkable
        # protocol took 7.6 us, half of Task.job().
        given_name, given_options = getattr(task, "name", None), getattr(task, "options", None)
        if not isinstance(given_name, str) or not isinstance(given_options, Mapping):
            raise ArgumentError(f"task must be a task name or a @task function, got {task!r}")
        name, defaults = given_name, given_options
    if (queue is None and priority is None and scheduled is None and delay is None and group_key is None
            and key is None and retries is None and timeout is None and heartbeat is None and retry_delay is None
            and retry_backoff is None and ttl is None and meta is None and depends_on is None
            and tenant is None):  # fmt: skip
        o = defaults
    else:
        explicit = {
            "queue": queue, "priority": priority, "scheduled": scheduled, "delay": delay,
            "group_key": group_key, "key": key, "retries": retries, "timeout": timeout,
            "heartbeat": heartbeat, "retry_delay": retry_delay, "retry_backoff": retry_backoff,
            "ttl": ttl, "meta": meta, "depends_on": depends_on, "tenant": tenant,
        }  # fmt: skip
        o = {**(defaults or {}), **{k: v for k, v in explicit.items() if v is not None}}

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
    encoded = encode_arguments(name, args)

    # No option given (the usual job): one shared mapping, which enqueue_many tells apart at once.
    options = _options(o) if o else _NO_OPTIONS
    return JobRequest(task=name, args=args, options=options, encoded=encoded)


# ------------------------------------------------------------------------------------------------
# The calls
# ------------------------------------------------------------------------------------------------
#: What an enqueue does when a queue with a maximum depth (``max_queued``, see set_queue) is full:
#: ``"error"`` raises QueueFull and enqueues nothing; ``"reject"`` (enqueue_many only) enqueues what
#: fits and gives None for the rest; ``"wait"`` tries again, 50 ms doubling to 1 s apart, until
#: every job is in or ``full_timeout`` seconds have passed (then QueueFull).
OnFull = Literal["error", "reject", "wait"]


def _refused(rows: list[tuple[Any, ...]]) -> Job | None:
    """The job enqueue_job returned; None when a full queue refused it (a row of NULLs)."""
    return Job._stored(rows[0]) if rows[0][2] is not None else None


def _enqueue_call(request: JobRequest, on_full: str = "error") -> Call[Job | None]:
    params = request.params()
    params["on_full"] = on_full
    return Call(_sql.query("job_enqueue"), params, _refused, tuples=True)


def _queue_full(exc: psycopg.Error) -> QueueFull | None:
    """The QueueFull that a database error stands for, if it does."""
    if exc.sqlstate != QueueFull.SQLSTATE:
        return None
    return QueueFull(exc.diag.message_primary or str(exc))


def _raise_queue_full(exc: psycopg.Error) -> None:
    """Raise QueueFull for a full queue's refusal; return for any other error (the caller re-raises it)."""
    if (full := _queue_full(exc)) is not None:
        raise full from exc


def _pauses(on_full: str, timeout: float) -> Iterator[float]:
    """The pauses before each attempt after the first of an enqueue: with on_full "wait", 50 ms
    doubling to 1 s, for as long as timeout seconds allow; else none."""
    if on_full != "wait":
        return
    deadline = time.monotonic() + timeout
    pause = 0.05
    while (left := deadline - time.monotonic()) > 0:
        yield min(pause, left)
        pause = min(pause * 2, 1.0)


def _check_on_full(on_full: str, allowed: tuple[str, ...]) -> str:
    if on_full not in allowed:
        raise ArgumentError(f"on_full must be one of {', '.join(map(repr, allowed))}, got {on_full!r}")
    return "reject" if on_full == "wait" else on_full


def _still_full(queue: Any, timeout: float) -> QueueFull:
    return QueueFull(f"queue {queue or 'default'} stayed full for {timeout:g} s (on_full='wait')")


def _ids(rows: list[tuple[int, int]]) -> list[int]:
    """The ids of (item, id) rows."""
    return [r[1] for r in rows]


def _column(values: list[Any]) -> list[Any] | None:
    """One array parameter of enqueue_many: None when every job takes the default, one element
    when they all share a value, else one a job."""
    first = values[0]
    if all(v is first or v == first for v in values):
        return None if first is None else [first]
    return values


def _enqueue_many_call(requests: Iterable[JobRequest], on_full: str = "error") -> Call[list[int]]:
    requests = list(requests)
    if not requests or any(r.options.get("depends_on") for r in requests):
        position = {id(r): i for i, r in enumerate(requests)}
        docs = [r.document(position) for r in requests]
        return Call(_sql.query("job_enqueue_many"), {"jobs": Jsonb(docs), "on_full": on_full}, _ids, tuples=True)
    # Arrays, the arguments as one JSON document: one encoding here and one parse there.
    options = [r.options for r in requests]
    if all(o is options[0] or o == options[0] for o in options):
        options = options[:1]  # the usual batch shares its options: no column to scan job by job
    params: dict[str, Any] = {k: _column([o.get(k) for o in options]) for k in _COLUMNS}
    params["task"] = _column([r.task for r in requests])
    params["args"] = as_jsonb(f"[{','.join([r.encoded for r in requests])}]")
    metas = [r.options.get("meta") for r in requests]
    params["meta"] = None if all(m is None for m in metas) else to_json([m or {} for m in metas], "meta")
    params["on_full"] = on_full
    return Call(_sql.query("job_enqueue_arrays"), params, _ids, tuples=True)


def _status(rows: list[_database.Row]) -> JobStatus | None:
    """The status a call returns for one job, None for a job it did not act on."""
    status = rows[0]["status"]
    return JobStatus(status) if status is not None else None


def _cancel_call(job_id: int) -> Call[JobStatus | None]:
    return Call(_sql.query("job_cancel"), {"id": job_id}, _status)


def _send(request: JobRequest, conn: Connection | None, on_full: str, timeout: float) -> Job:
    call = _enqueue_call(request, _check_on_full(on_full, ("error", "wait")))
    pauses = _pauses(on_full, timeout)
    while True:
        try:
            job = run(call, conn)
        except psycopg.Error as exc:
            _raise_queue_full(exc)
            raise
        if job is not None:
            return job
        if (pause := next(pauses, None)) is None:
            raise _still_full(request.options.get("queue"), timeout)
        time.sleep(pause)


async def _send_async(request: JobRequest, conn: AsyncConnection | None, on_full: str, timeout: float) -> Job:
    call = _enqueue_call(request, _check_on_full(on_full, ("error", "wait")))
    pauses = _pauses(on_full, timeout)
    while True:
        try:
            job = await run_async(call, conn)
        except psycopg.Error as exc:
            _raise_queue_full(exc)
            raise
        if job is not None:
            return job
        if (pause := next(pauses, None)) is None:
            raise _still_full(request.options.get("queue"), timeout)
        await asyncio.sleep(pause)


class _Batch:
    """enqueue_many's jobs through the attempts on_full asks for: the ids so far, and what is left
    to send (a batch with dependencies goes whole, its refusal an error, retried only outside the
    caller's transaction)."""

    def __init__(self, requests: list[JobRequest], on_full: str, conn: object) -> None:
        self.requests = requests
        self.on_full = on_full
        self.mode = _check_on_full(on_full, ("error", "reject", "wait"))
        self.ids: list[int | None] = [None] * len(requests)
        self.todo = list(range(len(requests)))
        self.whole = any(r.options.get("depends_on") for r in requests)
        self.retry_refusal = on_full == "wait" and self.whole and conn is None

    def sending(self) -> list[JobRequest]:
        return [self.requests[i] for i in self.todo]

    def refused(self, exc: psycopg.Error) -> None:
        """A call raised: QueueFull for a full queue (unless it is retried), the error itself else."""
        if _queue_full(exc) is None or not self.retry_refusal:
            _raise_queue_full(exc)
            raise exc

    def done(self, got: list[int]) -> bool:
        for i, job_id in zip(self.todo, got, strict=True):
            self.ids[i] = job_id
        self.todo = [i for i in self.todo if self.ids[i] is None]
        return not self.todo or self.on_full != "wait"

    def still_full(self, timeout: float) -> QueueFull:
        queues = sorted({str(self.requests[i].options.get("queue") or "default") for i in self.todo})
        return QueueFull(
            f"{len(self.todo)} of {len(self.requests)} jobs refused: queue {', '.join(queues)} stayed full "
            f"for {timeout:g} s (on_full='wait')",
            self.ids,
        )


def _send_many(requests: list[JobRequest], conn: Connection | None, on_full: str, timeout: float) -> list[int | None]:
    batch = _Batch(requests, on_full, conn)
    pauses = _pauses(on_full, timeout)
    while True:
        try:
            if batch.done(run(_enqueue_many_call(batch.sending(), batch.mode), conn)):
                return batch.ids
        except psycopg.Error as exc:
            batch.refused(exc)
        if (pause := next(pauses, None)) is None:
            raise batch.still_full(timeout)
        time.sleep(pause)


async def _send_many_async(
    requests: list[JobRequest], conn: AsyncConnection | None, on_full: str, timeout: float
) -> list[int | None]:
    batch = _Batch(requests, on_full, conn)
    pauses = _pauses(on_full, timeout)
    while True:
        try:
            if batch.done(await run_async(_enqueue_many_call(batch.sending(), batch.mode), conn)):
                return batch.ids
        except psycopg.Error as exc:
            batch.refused(exc)
        if (pause := next(pauses, None)) is None:
            raise batch.still_full(timeout)
        await asyncio.sleep(pause)


def enqueue(
    task: str | TaskRef,
    /,
    *args: Any,
    conn: Connection | None = None,
    on_full: Literal["error", "wait"] = "error",
    full_timeout: float = 30.0,
    **kwargs: Any,
) -> Job:
    """Enqueue a job and return it as stored.

    Positional and keyword arguments other than the options below go to the task (one kind or
    the other: a job stores one JSON array or object); ``args=`` gives them explicitly instead.

    Options, given as keywords:

    - ``queue``: the queue (default ``"default"``).
    - ``priority``: lower runs first (default 0; negatives allowed).
    - ``scheduled``: a timezone-aware time to run at; or ``delay`` seconds from now (database clock).
    - ``group_key``: jobs sharing it never run at the same time.
    - ``key``: while an unfinished job with this key exists, that job is returned instead.
    - ``retries``: how many times a failed run is tried again (default 2).
    - ``timeout``: seconds a run may take (0: no limit); ``heartbeat``: seconds it may go untouched.
    - ``retry_delay``: seconds before a retry; ``retry_backoff``: True to double it per attempt
      with jitter, or a number to cap the doubling at that many seconds.
    - ``ttl``: seconds a finished job is kept (0: forever, -1: not kept).
    - ``meta``: a dict stored with the job.
    - ``depends_on``: jobs (ids or Jobs) that must all complete before this one is claimed; it
      waits (status ``waiting``) until then, and is aborted if one of them fails or is aborted.
      In enqueue_many(), JobRequests of the same call may be named too.
    - ``tenant``: whose work the job is (a customer, an account); a fair queue shares its claims
      between the tenants that have due jobs, in proportion to their weights (see set_queue).

    :param conn: a connection of the caller's: the job joins its transaction.
    :param on_full: when the queue has a maximum depth (``max_queued``) and is full: ``"error"``
        raises QueueFull (the refusal ends the caller's transaction, as any error does);
        ``"wait"`` tries again until it fits or ``full_timeout`` seconds have passed (with
        ``conn`` in a transaction, that transaction keeps the queue's turn meanwhile).
    """
    request = job(task, *args, **kwargs)
    if (tracer := _tracing.tracer()) is not None:
        return _tracing.send_one(tracer, request, lambda sent: _send(sent, conn, on_full, full_timeout))
    return _send(request, conn, on_full, full_timeout)


async def enqueue_async(
    task: str | TaskRef,
    /,
    *args: Any,
    conn: AsyncConnection | None = None,
    on_full: Literal["error", "wait"] = "error",
    full_timeout: float = 30.0,
    **kwargs: Any,
) -> Job:
    """The async twin of enqueue()."""
    request = job(task, *args, **kwargs)
    if (tracer := _tracing.tracer()) is not None:
        return await _tracing.send_one_async(
            tracer, request, lambda sent: _send_async(sent, conn, on_full, full_timeout)
        )
    return await _send_async(request, conn, on_full, full_timeout)


@overload
def enqueue_many(
    jobs: Iterable[JobRequest],
    *,
    conn: Connection | None = None,
    on_full: Literal["error", "wait"] = "error",
    full_timeout: float = 30.0,
) -> list[int]: ...
@overload
def enqueue_many(
    jobs: Iterable[JobRequest],
    *,
    conn: Connection | None = None,
    on_full: Literal["reject"],
    full_timeout: float = 30.0,
) -> list[int | None]: ...
def enqueue_many(
    jobs: Iterable[JobRequest], *, conn: Connection | None = None, on_full: OnFull = "error", full_timeout: float = 30.0
) -> list[int] | list[int | None]:
    """Enqueue many jobs (built with ``pgjobs.job()``) in one round trip; returns their ids in order.

    :param on_full: when a queue with a maximum depth (``max_queued``) cannot take them all:
        ``"error"`` raises QueueFull and enqueues none; ``"reject"`` enqueues what fits, in order,
        and returns None for each job refused; ``"wait"`` sends the refused ones again until all
        are in or ``full_timeout`` seconds have passed (QueueFull then holds the ids so far). A batch
        with dependencies is admitted whole or not at all.
    """
    requests = list(jobs)
    if (tracer := _tracing.tracer()) is not None:
        return _tracing.send_many(tracer, requests, lambda sent: _send_many(sent, conn, on_full, full_timeout))
    return _send_many(requests, conn, on_full, full_timeout)


@overload
async def enqueue_many_async(
    jobs: Iterable[JobRequest],
    *,
    conn: AsyncConnection | None = None,
    on_full: Literal["error", "wait"] = "error",
    full_timeout: float = 30.0,
) -> list[int]: ...
@overload
async def enqueue_many_async(
    jobs: Iterable[JobRequest],
    *,
    conn: AsyncConnection | None = None,
    on_full: Literal["reject"],
    full_timeout: float = 30.0,
) -> list[int | None]: ...
async def enqueue_many_async(
    jobs: Iterable[JobRequest],
    *,
    conn: AsyncConnection | None = None,
    on_full: OnFull = "error",
    full_timeout: float = 30.0,
) -> list[int] | list[int | None]:
    """The async twin of enqueue_many()."""
    requests = list(jobs)
    if (tracer := _tracing.tracer()) is not None:
        return await _tracing.send_many_async(
            tracer, requests, lambda sent: _send_many_async(sent, conn, on_full, full_timeout)
        )
    return await _send_many_async(requests, conn, on_full, full_timeout)


def cancel(job_id: int, *, conn: Connection | None = None) -> JobStatus | None:
    """Cancel a job: a queued one is aborted, an active one is asked to stop (``aborting``).

    Returns the job's status afterwards, or None for an unknown id.
    """
    return run(_cancel_call(job_id), conn)


async def cancel_async(job_id: int, *, conn: AsyncConnection | None = None) -> JobStatus | None:
    """The async twin of cancel()."""
    return await run_async(_cancel_call(job_id), conn)


def _has_job_call(key: str) -> Call[bool]:
    return Call(_sql.query("job_has"), {"key": key}, lambda rows: bool(rows[0]["has"]))


def has_job(key: str, *, conn: Connection | None = None) -> bool:
    """Whether a job of yours with this key is waiting, queued or running."""
    return run(_has_job_call(key), conn)


async def has_job_async(key: str, *, conn: AsyncConnection | None = None) -> bool:
    """The async twin of has_job()."""
    return await run_async(_has_job_call(key), conn)


def _unfinished_call(queues: Sequence[str]) -> Call[int]:
    return Call(_sql.query("job_unfinished_count"), {"queues": list(queues)}, lambda rows: int(rows[0]["n"]))


def drain(queues: Sequence[str] = ("default",), timeout: float | None = None, *, dsn: str | None = None) -> None:
    """Wait until these queues hold no waiting, queued or running job (of yours, for a client
    role); raise TimeoutError after timeout seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.02
    with _database.connect(_database.resolve_dsn(dsn), name="pgjobs drain") as conn:
        while run(_unfinished_call(queues), conn):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"queues {', '.join(queues)} still hold unfinished jobs after {timeout} s")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


async def drain_async(
    queues: Sequence[str] = ("default",), timeout: float | None = None, *, dsn: str | None = None
) -> None:
    """The async twin of drain()."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.02
    conn = await _database.connect_async(_database.resolve_dsn(dsn), name="pgjobs drain")
    try:
        while await run_async(_unfinished_call(queues), conn):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"queues {', '.join(queues)} still hold unfinished jobs after {timeout} s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
    finally:
        await conn.close()


def _retry_call(job_id: int) -> Call[JobStatus | None]:
    return Call(_sql.query("job_retry"), {"id": job_id}, _status)


def retry(job_id: int, *, conn: Connection | None = None) -> JobStatus | None:
    """Put a failed or aborted job back in its queue (one more attempt if it used them all).

    Returns ``queued``, or None when the job is unknown or neither failed nor aborted.
    """
    return run(_retry_call(job_id), conn)


def retry_failed(queue: str | None = None, task: str | None = None, *, conn: Connection | None = None) -> int:
    """Retry every failed job of a queue and/or task (None: any); returns how many."""
    call = Call(_sql.query("job_retry_failed"), {"queue": queue, "task": task}, lambda rows: int(rows[0]["n"]))
    return run(call, conn)


def delete_job(job_id: int, *, conn: Connection | None = None) -> bool:
    """Delete a job that is not running (a running one must be cancelled first: 22023)."""
    return run(Call(_sql.query("job_delete"), {"id": job_id}, lambda rows: bool(rows[0]["deleted"])), conn)


def jobs(
    *,
    queue: str | None = None,
    status: str | None = None,
    task: str | None = None,
    limit: int = 50,
    conn: Connection | None = None,
) -> list[Job]:
    """Jobs newest first, filtered by queue, status and task."""
    params = {"queue": queue, "status": status, "task": task, "limit": limit}
    return run(Call(_sql.query("job_list"), params, lambda rows: [Job.from_row(r) for r in rows]), conn)


# ------------------------------------------------------------------------------------------------
# Workers, the reaper, events
# ------------------------------------------------------------------------------------------------
def _stop_worker_call(worker_id: str) -> Call[str | None]:
    return Call(_sql.query("worker_stop"), {"id": worker_id}, lambda rows: rows[0]["status"])


def _is_alive_call(worker_id: str, grace_multiplier: float) -> Call[bool]:
    return Call(
        _sql.query("worker_is_alive"),
        {"id": worker_id, "grace": grace_multiplier},
        lambda rows: bool(rows[0]["alive"]),
    )


def _reap_call(batch_size: int, grace_multiplier: float) -> Call[ReapCounts]:
    return Call(
        _sql.query("reap"),
        {"batch_size": batch_size, "grace": grace_multiplier},
        lambda rows: ReapCounts(**rows[0]),
    )


def stop_worker(worker_id: str, *, conn: Connection | None = None) -> str | None:
    """Ask a worker to stop gracefully, wherever it runs; returns its status (None: unknown id)."""
    return run(_stop_worker_call(worker_id), conn)


async def stop_worker_async(worker_id: str, *, conn: AsyncConnection | None = None) -> str | None:
    """The async twin of stop_worker()."""
    return await run_async(_stop_worker_call(worker_id), conn)


def is_alive(worker_id: str, grace_multiplier: float = 2.1, *, conn: Connection | None = None) -> bool:
    """Whether a worker is running and beat within grace_multiplier heart rates (database clock)."""
    return run(_is_alive_call(worker_id, grace_multiplier), conn)


async def is_alive_async(worker_id: str, grace_multiplier: float = 2.1, *, conn: AsyncConnection | None = None) -> bool:
    """The async twin of is_alive()."""
    return await run_async(_is_alive_call(worker_id, grace_multiplier), conn)


def reap(*, batch_size: int = 1000, grace_multiplier: float = 2.1, conn: Connection | None = None) -> ReapCounts:
    """Run one reaper pass (see pgjobs.reap() in SQL) and return its counts."""
    return run(_reap_call(batch_size, grace_multiplier), conn)


async def reap_async(
    *, batch_size: int = 1000, grace_multiplier: float = 2.1, conn: AsyncConnection | None = None
) -> ReapCounts:
    """The async twin of reap()."""
    return await run_async(_reap_call(batch_size, grace_multiplier), conn)


@dataclass(frozen=True)
class Event:
    """A job changed status."""

    job_id: int
    status: JobStatus


_STATUSES = {s.value: s for s in JobStatus}


def _announced(payload: str) -> list[Event]:
    """The events a notification announces: items that are not ``id:status`` are ignored."""
    events = []
    for item in payload.split(","):
        job_id, _, status = item.partition(":")
        if job_id.isdigit() and status in _STATUSES:
            events.append(Event(int(job_id), _STATUSES[status]))
    return events


def _confirmed(announced: list[Event], rows: list[_database.Row]) -> list[Event]:
    """The announced events the database confirms (any login may NOTIFY, so an announcement alone
    proves nothing): a final status when the job, as this session may see it, has it now; a
    passing one when the job exists (and, for active and aborting, was claimed), since it may
    have moved on by the time it is read."""
    found = {r["id"]: r for r in rows}

    def holds(e: Event, row: _database.Row) -> bool:
        if e.status.finished:
            return bool(row["status"] == e.status.value)
        return e.status is JobStatus.QUEUED or bool(row["started"])

    return [e for e in announced if e.job_id in found and holds(e, found[e.job_id])]


def _listening_session(dsn: str | None = None) -> None:
    """Refuse a pooler: PGJOBS_POOLED, or a DSN found to lead to one."""
    if _database.pooled() or (dsn is not None and _database.pooled(dsn)):
        why = "PGJOBS_POOLED is set" if dsn is None else f"{_database.redact(dsn)} is one: it refused startup options"
        raise ConfigurationError(
            "following events needs a session of its own: give the DSN of PostgreSQL itself, not of a "
            f"transaction pooler ({why})"
        )


def events(*, dsn: str | None = None, timeout: float | None = None) -> Iterator[Event]:
    """Follow job state changes as they commit (until the timeout, if given). Each announced change
    is checked against the job as this session may read it: a job it may not read is never
    reported, and a final status (complete, failed, aborted) only when the job has it."""
    _listening_session()
    target = migrations.prepare(dsn)
    try:
        conn = _database.connect(target, direct=True)
    except ConfigurationError:
        _listening_session(target)
        raise
    with conn:
        _database.fetch(conn, _sql.query("listen"), {"channel": "pgjobs.events"})
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            # The batch ends before the jobs are read: the session is busy while notifies() runs.
            notes = list(conn.notifies(timeout=remaining, stop_after=1))
            announced = [e for note in notes for e in _announced(note.payload)]
            if announced:
                ids = {"ids": [e.job_id for e in announced]}
                yield from _confirmed(announced, _database.fetch(conn, _sql.query("job_status_many"), ids))


async def events_async(*, dsn: str | None = None, timeout: float | None = None) -> AsyncIterator[Event]:
    """The async twin of events()."""
    _listening_session()
    target = await asyncio.to_thread(migrations.prepare, dsn)
    try:
        conn = await _database.connect_async(target, direct=True)
    except ConfigurationError:
        _listening_session(target)
        raise
    try:
        await _database.fetch_async(conn, _sql.query("listen"), {"channel": "pgjobs.events"})
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            notes = [note async for note in conn.notifies(timeout=remaining, stop_after=1)]
            announced = [e for note in notes for e in _announced(note.payload)]
            if announced:
                ids = {"ids": [e.job_id for e in announced]}
                rows = await _database.fetch_async(conn, _sql.query("job_status_many"), ids)
                for event in _confirmed(announced, rows):
                    yield event
    finally:
        await conn.close()
