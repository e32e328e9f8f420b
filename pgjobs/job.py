"""The Job record, its status, and the encoding of arguments and results as JSON."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from . import _database, _sql, migrations
from ._calls import AsyncConnection, Call, Connection, run, run_async
from .errors import ArgumentError, JobCancelled

DurationKind = Literal["process", "start", "total", "running"]


class JobStatus(StrEnum):
    """A job's state; see the schema for the transitions."""

    WAITING = "waiting"  # for the jobs of its depends_on to complete
    QUEUED = "queued"
    ACTIVE = "active"
    COMPLETE = "complete"
    FAILED = "failed"
    ABORTING = "aborting"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        """Whether no further change will come (complete, failed or aborted)."""
        return self in (JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.ABORTED)


def _compact_dumps() -> Callable[[Any], str]:
    """``json.dumps(value, allow_nan=False, separators=(",", ":"))`` with its C encoder built once:
    JSONEncoder.encode builds one a call, more than half of the time a job's small dict takes."""
    encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator in this Python
        return encoder.encode
    # No markers (the circular check's dict): one shared by threads would mistake one thread's
    # containers for another's. A structure that contains itself raises RecursionError instead.
    chunks = make(None, encoder.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)

    def dumps(value: Any) -> str:
        return "".join(chunks(value, 0))

    sample = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": -3}}
    with contextlib.suppress(Exception):
        if dumps(sample) == encoder.encode(sample):
            return dumps
    return encoder.encode  # an accelerator of another shape: the public path


_dumps = _compact_dumps()


def json_text(value: Any, what: str) -> str:
    """A value as JSON text, refusing what JSON or PostgreSQL cannot carry (NaN, infinities, NUL
    characters, non-JSON types); ``what`` names it in the error."""
    try:
        text = _dumps(value)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{what} cannot be stored as JSON: {exc}") from None
    except RecursionError:
        raise ArgumentError(f"{what} cannot be stored as JSON: it contains itself or is nested too deeply") from None
    if "\\u0000" in text.replace("\\\\", ""):
        raise ArgumentError(f"{what} contains a NUL character (\\u0000), which PostgreSQL cannot store")
    return text


def to_json(value: Any, what: str) -> Jsonb:
    """Wrap a value for a jsonb parameter (see json_text)."""
    return as_jsonb(json_text(value, what))


def as_jsonb(text: str) -> Jsonb:
    """JSON text already encoded, as a jsonb parameter."""
    return Jsonb(text, dumps=_as_is)


def _as_is(text: str) -> str:
    return text


def without_nul(value: Any) -> tuple[Any, bool]:
    """The value with NUL characters in its strings replaced by U+FFFD, and whether any were."""
    if isinstance(value, str):
        return (value.replace("\x00", "\ufffd"), True) if "\x00" in value else (value, False)
    if isinstance(value, list | tuple):
        pairs = [without_nul(v) for v in value]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    if isinstance(value, dict):
        items = [(without_nul(k), without_nul(v)) for k, v in value.items()]
        return {k: v for (k, _), (v, _) in items}, any(ck or cv for (_, ck), (_, cv) in items)
    return value, False


def check_arguments(task: str, args: Sequence[Any] | Mapping[str, Any]) -> None:
    """Raise ArgumentError naming the first argument that JSON cannot carry."""
    if isinstance(args, Mapping):
        items = [(f"argument {k!r}", v) for k, v in args.items()]
    else:
        items = [(f"positional argument {i}", v) for i, v in enumerate(args)]
    for label, value in items:
        json_text(value, f"{label} of task {task!r}")


def encode_arguments(task: str, args: Sequence[Any] | Mapping[str, Any]) -> str:
    """A task's arguments as JSON text, encoded once; an ArgumentError names the argument at fault."""
    try:
        return json_text(args, f"the arguments of task {task!r}")
    except ArgumentError:
        check_arguments(task, args)  # the same error, naming the argument
        raise


@dataclass
class Job:
    """A job as stored in ``pgjobs.jobs``. Durations are seconds."""

    task: str
    args: list[Any] | dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    queue: str = "default"
    status: JobStatus = JobStatus.QUEUED
    priority: int = 0
    group_key: str | None = None
    key: str | None = None
    attempts: int = 0
    max_attempts: int = 3
    scheduled_at: dt.datetime | None = None
    timeout: float = 0.0
    heartbeat: float = 0.0
    retry_delay: float = 1.0
    retry_backoff: float = 3600.0
    ttl: int = 86400
    progress: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None
    worker_id: str | None = None
    enqueued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    touched_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    abort_reason: str | None = None
    depends_on: list[int] | None = None
    #: Whose work this is: a fair queue shares its claims between tenants (see set_queue's fair).
    tenant: str | None = None
    # Set by the worker running this job: its loop and how to touch the run.
    _runner: tuple[asyncio.AbstractEventLoop, Callable[..., Awaitable[bool]]] | None = field(
        default=None, repr=False, compare=False
    )
    # Why the worker stopped this run, once it did (see cancelled).
    _stopped: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """Build a Job from a ``pgjobs.jobs`` row (unknown columns are ignored)."""
        values = {k: v for k, v in row.items() if k in _COLUMNS}
        values["status"] = JobStatus(values.get("status", "queued"))
        return cls(**values)

    @classmethod
    def _stored(cls, row: Sequence[Any]) -> Job:
        """Build a Job from a row holding every column of a job in the order of Job's fields."""
        job = cls(*row)
        job.status = JobStatus(job.status)
        return job

    @classmethod
    def _claimed(cls, row: Sequence[Any], worker_id: str) -> Job:
        """Build the Job of a run from a claimed row of ``pgjobs.complete_and_dequeue``."""
        # fmt: off
        (id_, _, task, args, attempts, max_attempts, queue, priority, group_key, key, meta, scheduled_at,
         enqueued_at, started_at, timeout, heartbeat, retry_delay, retry_backoff, ttl, progress, error, tenant) = row
        return cls(
            task=task, args=args, id=id_, queue=queue, status=JobStatus.ACTIVE, priority=priority,
            group_key=group_key, key=key, attempts=attempts, max_attempts=max_attempts, scheduled_at=scheduled_at,
            timeout=timeout, heartbeat=heartbeat, retry_delay=retry_delay, retry_backoff=retry_backoff, ttl=ttl,
            progress=progress, meta={} if meta is None else meta, error=error, worker_id=worker_id,
            enqueued_at=enqueued_at, started_at=started_at, touched_at=started_at, tenant=tenant,
        )
        # fmt: on

    @property
    def finished(self) -> bool:
        """Whether the job reached a final status."""
        return self.status.finished

    def duration(self, kind: DurationKind) -> float | None:
        """Seconds spent, or None when the times are not known yet.

        ``process``: started to completed; ``start``: due (enqueued or scheduled) to started;
        ``total``: enqueued to completed; ``running``: started to now (this machine's clock).
        """
        due = max(t for t in (self.enqueued_at, self.scheduled_at) if t) if self.enqueued_at else None
        spans = {
            "process": (self.started_at, self.completed_at),
            "start": (due, self.started_at),
            "total": (self.enqueued_at, self.completed_at),
            "running": (self.started_at, dt.datetime.now(dt.UTC) if self.started_at else None),
        }
        begin, end = spans[kind]
        if begin is None or end is None:
            return None
        return (end - begin).total_seconds()

    def _update(self, fresh: Job | None) -> Job:
        if fresh is None:
            raise LookupError(f"job {self.id} no longer exists")
        for f in fields(self):
            if not f.name.startswith("_"):
                setattr(self, f.name, getattr(fresh, f.name))
        return self

    @property
    def tick(self) -> dt.datetime | None:
        """The schedule tick this job runs for, when a schedule or a backfill enqueued it."""
        value = self.meta.get("tick")
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else None

    @property
    def stuck(self) -> bool:
        """Whether an active run is past its timeout or its heartbeat (by this machine's clock;
        the reaper decides by the database's)."""
        if self.status is not JobStatus.ACTIVE:
            return False
        now = dt.datetime.now(dt.UTC)
        late = (
            self.timeout > 0 and self.started_at is not None and (now - self.started_at).total_seconds() > self.timeout
        )
        silent = (
            self.heartbeat > 0
            and self.touched_at is not None
            and (now - self.touched_at).total_seconds() > self.heartbeat
        )
        return bool(late or silent)

    def _bind(self, loop: asyncio.AbstractEventLoop, touch: Callable[..., Awaitable[bool]]) -> None:
        self._runner = (loop, touch)

    @property
    def cancelled(self) -> bool:
        """Whether the worker running this job stopped the run: cancelled, killed by the reaper,
        no longer this worker's, given up while the worker could not reach the database, or given
        back at shutdown. A sync task, which Python cannot interrupt, should check it in long loops
        and return; nothing it returns is recorded."""
        return self._stopped is not None

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise JobCancelled(f"job {self.id}: {self._stopped}")

    def _note(self, progress: float | None, meta: Mapping[str, Any] | None) -> None:
        if progress is not None:
            self.progress = progress
        if meta is not None:
            self.meta = {**self.meta, **meta}

    def update(self, *, progress: float | None = None, meta: Mapping[str, Any] | None = None) -> bool:
        """From a sync task: record progress (0 to 1) and merge meta into the stored job; this
        also touches the run's heartbeat. False when the run is no longer this worker's; raises
        JobCancelled once the worker stopped the run (see cancelled)."""
        if self._runner is None:
            raise RuntimeError("update() is for a job its worker is running (use pass_job=True)")
        self._check_running()
        loop, touch = self._runner
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                raise TypeError("in an async task, use await job.update_async(...)")
        self._note(progress, meta)
        future: concurrent.futures.Future[bool] = asyncio.run_coroutine_threadsafe(
            touch(progress, meta),  # type: ignore[arg-type]
            loop,
        )
        while True:
            try:
                return bool(future.result(timeout=0.05))
            except concurrent.futures.TimeoutError:
                # The worker may stop the run while this waits (on a database that does not
                # answer): the task hears of it now; the touch finishes or fails on its own.
                self._check_running()

    async def update_async(self, *, progress: float | None = None, meta: Mapping[str, Any] | None = None) -> bool:
        """The async twin of update(), for async tasks."""
        if self._runner is None:
            raise RuntimeError("update_async() is for a job its worker is running (use pass_job=True)")
        self._check_running()
        self._note(progress, meta)
        return await self._runner[1](progress, meta)

    def refresh(self, until_complete: float | None = None) -> Job:
        """Reload this job; with ``until_complete``, first wait up to that many seconds for it to
        finish (raising TimeoutError if it does not). Waiting listens, it does not poll."""
        if self.id is None:
            raise LookupError("this job was never enqueued")
        if until_complete is None:
            return self._update(get_job(self.id))
        self._update(next(iter(wait([self.id], until_complete)), None))
        if not self.finished:
            raise TimeoutError(f"job {self.id} is still {self.status} after {until_complete} s")
        return self

    async def refresh_async(self, until_complete: float | None = None) -> Job:
        """The async twin of refresh()."""
        if self.id is None:
            raise LookupError("this job was never enqueued")
        if until_complete is None:
            return self._update(await get_job_async(self.id))
        self._update(next(iter(await wait_async([self.id], until_complete)), None))
        if not self.finished:
            raise TimeoutError(f"job {self.id} is still {self.status} after {until_complete} s")
        return self


_COLUMNS = frozenset(f.name for f in fields(Job) if not f.name.startswith("_"))


# ------------------------------------------------------------------------------------------------
# Reading jobs and waiting for them
# ------------------------------------------------------------------------------------------------
# wait(): seconds before the first re-read of jobs nobody announced, doubling up to the last.
_RECHECK_FIRST = 0.5
_RECHECK_MAX = 30.0


def _maybe_job(rows: list[_database.Row]) -> Job | None:
    return Job.from_row(rows[0]) if rows else None


def _get_call(job_id: int) -> Call[Job | None]:
    return Call(_sql.query("job_get"), {"id": job_id}, _maybe_job)


def get_job(job_id: int, *, conn: Connection | None = None) -> Job | None:
    """The job with that id, or None."""
    return run(_get_call(job_id), conn)


async def get_job_async(job_id: int, *, conn: AsyncConnection | None = None) -> Job | None:
    """The async twin of get_job()."""
    return await run_async(_get_call(job_id), conn)


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
    # Behind a transaction pooler no session is ours to LISTEN on: re-reads only, a second apart at most.
    pooled = _database.pooled(target)  # asked after the connection: it may have found a pooler
    listening, most = not pooled, _RECHECK_MAX if not pooled else 1.0
    try:
        # A client kept off the channels finds its jobs finished by the re-reads below.
        if listening:
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
            recheck = min(recheck * 2, most)
            if not listening:
                await asyncio.sleep(timeout)
                continue
            async for note in conn.notifies(timeout=timeout):
                # A hint to read again (any login may NOTIFY): ids are taken only as digits.
                if pending.intersection(int(i) for i in note.payload.split(",") if i.isdigit()):
                    break
    finally:
        await conn.close()


def wait(job_ids: Iterable[int], timeout: float | None = None, *, dsn: str | None = None) -> list[Job]:
    """The sync twin of wait_async() (it runs the async one; call it where no event loop runs)."""
    return asyncio.run(wait_async(job_ids, timeout, dsn=dsn))
