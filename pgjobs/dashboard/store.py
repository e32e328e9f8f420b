"""What the dashboard reads and changes: the named queries of ``sql/dashboard.sql`` on a connection pool."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from .. import _database, _sql, schedules
from .._database import Undecodable
from ..errors import ArgumentError
from ..job import JobStatus

Row = dict[str, Any]

#: Statuses a filter may name.
STATUSES = tuple(s.value for s in JobStatus)
#: The longest preview of a backfill, in ticks.
PREVIEW_TICKS = 500
_FILE = "dashboard.sql"
#: The deepest JSON the dashboard decodes. Python's limits depend on its version and on the stack
#: (3.11 cannot decode 1,000 levels; 3.12 decodes them, then json.dumps(indent=2) cannot write them):
#: one bound below all of them shows the same on each.
MAX_DEPTH = 200
#: Characters of an undecodable value's text that are shown.
RAW_CHARS = 200


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The dashboard's json loader: json.loads, or an Undecodable for a value it cannot decode."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "replace")
    try:
        if _deeper_than(text, MAX_DEPTH):
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: deep, ValueError: a number too long
        return Undecodable.of(text, exc, RAW_CHARS)


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _deeper_than(text: str, limit: int) -> bool:
    if text.count("[") + text.count("{") <= limit:
        return False  # most values: cannot be that deep, no scan
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0) > limit


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a list or a bulk action covers (None: any). ``error`` matches a part of the error text."""

    queue: str | None = None
    status: str | None = None
    task: str | None = None
    group_key: str | None = None
    key: str | None = None
    error: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> JobFilter:
        """A filter from query or form parameters; empty ones mean any; an unknown status is refused."""
        values: dict[str, str | None] = {}
        for name in ("queue", "status", "task", "group_key", "key", "error"):
            value = params.get(name)
            text = str(value).strip() if value is not None else ""
            if len(text) > 1000:
                raise ArgumentError(f"{name}: at most 1000 characters")
            values[name] = text or None
        if values["status"] is not None and values["status"] not in STATUSES:
            raise ArgumentError(f"status: one of {', '.join(STATUSES)}, got {values['status']!r}")
        return cls(**values)

    def params(self) -> dict[str, str | None]:
        return asdict(self)

    def query(self) -> dict[str, str]:
        """The filter's set fields, for a URL."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __bool__(self) -> bool:
        return any(v is not None for v in asdict(self).values())


class Store:
    """The dashboard's database: a pool opened on first use (or by the app's lifespan) and closed with it.

    :param dsn: the database; its password never leaves this object.
    :param max_size: connections at most.
    """

    def __init__(self, dsn: str, max_size: int = 4) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._lock = asyncio.Lock()

    @property
    def dsn(self) -> str:
        return self._dsn

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Row]) -> None:
        set_json_loads(loads, conn)

    async def open(self) -> None:
        async with self._lock:
            if self._pool is None:
                kwargs = {"autocommit": True, "row_factory": dict_row,
                          **_database.session_params(self._dsn, "pgjobs dashboard")}  # fmt: skip
                pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
                    self._dsn, min_size=1, max_size=self._max_size, kwargs=kwargs, open=False,
                    name="pgjobs dashboard", timeout=10.0, configure=self._configure,
                )  # fmt: skip
                await pool.open(wait=False)
                self._pool = pool

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _fetch(self, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        async with self._pool.connection() as conn:
            rows: list[Row] = await _database.fetch_async(conn, _sql.query(name, _FILE), params)
            return rows

    async def _one(self, name: str, params: Mapping[str, Any]) -> Any:
        rows = await self._fetch(name, params)
        return next(iter(rows[0].values())) if rows else None

    # -- reads ------------------------------------------------------------------------------------
    async def queues(self) -> list[Row]:
        return await self._fetch("dashboard_queues")

    async def finished_per_minute(self, minutes: int = 60) -> tuple[dt.datetime, list[Row]]:
        """The chart's series and the database's current minute (its last bar), within a statement
        timeout: it reads the window's history."""
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await _database.fetch_async(conn, _sql.query("dashboard_chart_timeout", _FILE))
            (clock,) = await _database.fetch_async(conn, _sql.query("dashboard_now", _FILE))
            rows: list[Row] = await _database.fetch_async(
                conn, _sql.query("dashboard_finished_per_minute", _FILE), {"minutes": minutes}
            )
            return clock["minute"], rows

    async def worker_counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in await self._fetch("dashboard_worker_counts")}

    async def workers(self, limit: int = 200) -> list[Row]:
        return await self._fetch("dashboard_workers", {"limit": limit})

    async def schedules(self) -> list[Row]:
        return await self._fetch("dashboard_schedules")

    async def jobs(self, where: JobFilter, before: int | None = None, limit: int = 50) -> list[Row]:
        return await self._fetch("dashboard_jobs", {**where.params(), "before": before, "limit": limit})

    async def job(self, job_id: int) -> Row | None:
        rows = await self._fetch("dashboard_job", {"id": job_id})
        return rows[0] if rows else None

    async def parents(self, ids: Sequence[int]) -> list[Row]:
        return await self._fetch("dashboard_job_parents", {"ids": list(ids)}) if ids else []

    async def children(self, job_id: int) -> list[Row]:
        return await self._fetch("dashboard_job_children", {"id": job_id})

    async def backfill_preview(self, name: str, start: dt.datetime, end: dt.datetime) -> tuple[list[Row], bool]:
        """What a backfill of the schedule from start to end (naive: in its zone) would do, a row a
        tick (at most PREVIEW_TICKS), and whether the range holds more ticks than shown."""
        rows = await self._fetch("dashboard_schedule", {"name": name})
        if not rows:
            raise LookupError(f"no schedule named {name!r}")
        schedule = schedules.Schedule.from_row(rows[0])
        start, end = (t if t.tzinfo else t.replace(tzinfo=schedule.zone) for t in (start, end))
        if end <= start:
            raise ArgumentError("the end must come after the start")
        ticks = schedules.ticks_between(schedule, start, end, limit=PREVIEW_TICKS + 1)
        more = len(ticks) > PREVIEW_TICKS
        ticks = ticks[:PREVIEW_TICKS]
        if not ticks:
            return [], False
        preview = await self._fetch(
            "dashboard_schedule_backfill_preview", {"name": name, "ticks": ticks, "rerun_failed": False}
        )
        return preview, more

    # -- actions ----------------------------------------------------------------------------------
    async def retry(self, job_id: int) -> str | None:
        return await self._one("dashboard_job_retry", {"id": job_id})  # type: ignore[no-any-return]

    async def cancel(self, job_id: int) -> str | None:
        return await self._one("dashboard_job_cancel", {"id": job_id})  # type: ignore[no-any-return]

    async def delete(self, job_id: int) -> bool:
        return bool(await self._one("dashboard_job_delete", {"id": job_id}))

    async def bulk(self, action: str, where: JobFilter, dry_run: bool) -> int:
        """Retry or cancel every job the filter matches (with dry_run, count them); how many."""
        name = {"retry": "dashboard_retry_matching", "cancel": "dashboard_cancel_matching"}[action]
        return int(await self._one(name, {**where.params(), "dry_run": dry_run}))

    async def pause_queue(self, queue: str, paused: bool) -> Row:
        rows = await self._fetch("dashboard_queue_pause", {"queue": queue, "paused": paused})
        return rows[0]

    async def stop_worker(self, worker_id: str) -> str | None:
        return await self._one("dashboard_worker_stop", {"id": worker_id})  # type: ignore[no-any-return]

    async def enable_schedule(self, name: str, enabled: bool) -> bool:
        return bool(await self._one("dashboard_schedule_enable", {"name": name, "enabled": enabled}))

    async def run_schedule(self, name: str) -> int:
        return int(await self._one("dashboard_schedule_run_now", {"name": name}))
