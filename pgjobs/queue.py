"""Queue settings (pause, rate limits, active jobs at most, fair share) and what each queue holds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import _database, _sql
from ._calls import AsyncConnection, Call, Connection, run, run_async
from .errors import ArgumentError


@dataclass(frozen=True)
class Queue:
    """A row of the ``pgjobs.queues`` view: a queue's settings and its jobs of the moment.

    Limits of 0 mean none; ``group_max_active`` 1 (the default) runs a group's jobs one at a time;
    ``fair``: claims are shared between the tenants with due jobs by weight (see set_tenant).
    """

    queue: str
    paused: bool = False
    rate_limit: int = 0
    rate_period: float = 0.0
    max_active: int = 0
    group_rate_limit: int = 0
    group_rate_period: float = 0.0
    group_max_active: int = 1
    queued: int = 0
    scheduled: int = 0
    active: int = 0
    oldest_queued_seconds: float | None = None
    updated_at: dt.datetime | None = None
    fair: bool = False
    max_queued: int = 0

    @classmethod
    def from_row(cls, row: _database.Row) -> Queue:
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


def _seconds(value: float | dt.timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, dt.timedelta) else value


_SETTINGS = ("paused", "rate_limit", "rate_period", "max_active", "group_rate_limit", "group_rate_period",
             "group_max_active", "fair", "max_queued")  # fmt: skip


def _set_queue_call(queue: str, settings: dict[str, Any]) -> Call[Queue]:
    unknown = set(settings) - set(_SETTINGS)
    if unknown:
        raise ArgumentError(f"unknown queue setting(s) {', '.join(sorted(unknown))}; known: {', '.join(_SETTINGS)}")
    params: dict[str, Any] = {"queue": queue, **{k: settings.get(k) for k in _SETTINGS}}
    for k in ("rate_period", "group_rate_period"):
        params[k] = _seconds(params[k])
    return Call(_sql.query("queue_set"), params, lambda rows: Queue.from_row(rows[0]))


def _queues_call() -> Call[list[Queue]]:
    return Call(_sql.query("queue_list"), {}, lambda rows: [Queue.from_row(r) for r in rows])


def set_queue(
    queue: str,
    *,
    paused: bool | None = None,
    rate_limit: int | None = None,
    rate_period: float | dt.timedelta | None = None,
    max_active: int | None = None,
    group_rate_limit: int | None = None,
    group_rate_period: float | dt.timedelta | None = None,
    group_max_active: int | None = None,
    fair: bool | None = None,
    max_queued: int | None = None,
    conn: Connection | None = None,
) -> Queue:
    """Change a queue's settings (None leaves one as it is) and return the queue as it stands.

    Every worker of every language obeys them at its next claim; resuming or loosening a queue
    wakes its workers at once.

    :param paused: no new claims while true; running jobs finish.
    :param rate_limit: at most this many claims in any ``rate_period`` (seconds) window; 0 lifts it.
    :param max_active: at most this many active jobs of the queue across all workers; 0 lifts it.
    :param group_rate_limit: the same as rate_limit, for each ``group_key`` of the queue.
    :param group_max_active: active jobs of one group at most (default 1; 0: no limit).
    :param fair: share the queue's claims between the tenants (the jobs' ``tenant``) that have due
        jobs, in proportion to their weights (set_tenant; 1 by default); a tenant alone gets them all.
    :param max_queued: queued jobs (due or later) at most, checked as jobs are enqueued: an enqueue
        beyond it is refused (see enqueue's ``on_full``); 0 lifts it.
    :param conn: a connection of the caller's: the change joins its transaction.
    """
    settings = {
        "paused": paused, "rate_limit": rate_limit, "rate_period": rate_period, "max_active": max_active,
        "group_rate_limit": group_rate_limit, "group_rate_period": group_rate_period,
        "group_max_active": group_max_active, "fair": fair, "max_queued": max_queued,
    }  # fmt: skip
    return run(_set_queue_call(queue, settings), conn)


async def set_queue_async(queue: str, *, conn: AsyncConnection | None = None, **settings: Any) -> Queue:
    """The async twin of set_queue(), with the same settings."""
    return await run_async(_set_queue_call(queue, settings), conn)


def queues(*, conn: Connection | None = None) -> list[Queue]:
    """Every queue that has unfinished jobs or settings, by name."""
    return run(_queues_call(), conn)


async def queues_async(*, conn: AsyncConnection | None = None) -> list[Queue]:
    """The async twin of queues()."""
    return await run_async(_queues_call(), conn)


@dataclass(frozen=True)
class Tenant:
    """A tenant of a fair queue: its weight, and its pass (the virtual time its next job starts at)."""

    queue: str
    tenant: str
    weight: float = 1.0
    pass_: float = 0.0

    @classmethod
    def from_row(cls, row: _database.Row) -> Tenant:
        return cls(queue=row["queue"], tenant=row["tenant"], weight=row["weight"], pass_=row["pass"])


def _set_tenant_call(queue: str, tenant: str, weight: float | None) -> Call[Tenant]:
    params = {"queue": queue, "tenant": tenant, "weight": weight}
    return Call(_sql.query("queue_tenant_set"), params, lambda rows: Tenant.from_row(rows[0]))


def set_tenant(queue: str, tenant: str, weight: float | None, *, conn: Connection | None = None) -> Tenant:
    """Give a tenant a weight on a fair queue (None: back to 1, the default).

    With due jobs, the tenants of a fair queue share its claims in proportion to their weights: a
    tenant of weight 2 gets twice the jobs of one of weight 1 while both have jobs waiting. Takes
    effect at the next claim.

    :param tenant: the name jobs give as ``tenant``; ``""`` is the unnamed tenant (jobs without one).
    :param weight: from 0.001 to 1000000.
    """
    return run(_set_tenant_call(queue, tenant, weight), conn)


async def set_tenant_async(
    queue: str, tenant: str, weight: float | None, *, conn: AsyncConnection | None = None
) -> Tenant:
    """The async twin of set_tenant()."""
    return await run_async(_set_tenant_call(queue, tenant, weight), conn)


def tenants(queue: str, *, conn: Connection | None = None) -> list[Tenant]:
    """The tenants of a queue that have a weight or a pass, by name."""
    return run(
        Call(_sql.query("queue_tenant_list"), {"queue": queue}, lambda rows: [Tenant.from_row(r) for r in rows]), conn
    )


@dataclass(frozen=True)
class Pressure:
    """How hard producers press on a queue: its queued jobs (due or later; counted up to
    ``max_queued``, or 10,000 without one), ``max_queued`` (0: none), ``pressure`` (queued over
    max_queued, 1 when full; None without a limit) and ``oldest_due_seconds`` (how long the oldest
    due job has waited; None when none is due)."""

    queue: str
    queued: int
    max_queued: int
    pressure: float | None
    oldest_due_seconds: float | None


def _pressure_call(queues: Sequence[str] | None) -> Call[list[Pressure]]:
    params = {"queues": list(queues) if queues is not None else None}
    return Call(_sql.query("queue_pressure"), params, lambda rows: [Pressure(**r) for r in rows])


def pressure(queues: Sequence[str] | None = None, *, conn: Connection | None = None) -> list[Pressure]:
    """The pressure on these queues (None: every queue with settings or unfinished jobs), cheap
    enough to read before each enqueue: a producer that sees ``pressure`` near 1 can slow down
    before its enqueues are refused."""
    return run(_pressure_call(queues), conn)


async def pressure_async(queues: Sequence[str] | None = None, *, conn: AsyncConnection | None = None) -> list[Pressure]:
    """The async twin of pressure()."""
    return await run_async(_pressure_call(queues), conn)
