"""Periodic jobs: cron and interval schedules, their ticks, the scheduler and backfill.

Tick maths are pure functions over croniter (``ticks_between``, ``next_tick``, ``plan``); the
database stores each fired (schedule, tick) under a unique key, so a tick enqueues at most once
however many schedulers run, and every time used comes from the database clock.

Time zones: ticks are computed in the schedule's zone. A local time that does not exist (clocks
go forward) fires at the first instant after the gap; a local time that happens twice (clocks go
back) fires once, the first time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError
from psycopg.types.json import Jsonb

from . import _database, _sql, client, migrations
from .errors import ArgumentError, PgjobsError, QueueFull
from .job import to_json
from .tasks import Task, task

logger = logging.getLogger("pgjobs.scheduler")

Missed = Literal["skip", "once", "all"]
UTC = dt.UTC
_JOB_OPTIONS = ("max_attempts", "timeout", "heartbeat", "retry_delay", "retry_backoff", "ttl", "meta")

# The Gregorian calendar repeats every 400 years (146097 days, a whole number of weeks), so a cron
# expression with no tick in 400 years has none ever, and one with ticks has one in every 400-year
# span (the longest real gaps: 8 years for February 29, 40 for a fifth Friday in February).
# croniter gives up after 50 years unless told; told this, an accepted expression always has a
# next and a previous tick.
_CALENDAR_CYCLE_YEARS = 400


def _croniter(expr: str, start: dt.datetime) -> croniter:
    return croniter(expr, start, max_years_between_matches=_CALENDAR_CYCLE_YEARS)


@dataclass(frozen=True)
class Schedule:
    """A schedule: run ``task`` with ``args`` on a ``cron`` expression or ``every`` N seconds.

    :param cron: 5 fields, or 6 with seconds last; or @hourly, @daily…
    :param every: seconds between runs; 0 runs again as soon as the last run finished. A run never
        starts while the schedule's previous run is queued or active.
    :param timezone: the zone the cron expression reads in (default UTC).
    :param trigger_on_start: one run as soon as the schedule is first seen.
    :param missed: after downtime, ``skip`` missed ticks, run ``once``, or run ``all`` of them (at
        most ``max_catchup``, the most recent). A tick is missed when it is more than
        ``misfire_grace`` seconds late.
    :param job_options: max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta.
    """

    name: str
    task: str
    args: list[Any] | dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    queue: str = "default"
    priority: int = 0
    group_key: str | None = None
    job_options: Mapping[str, Any] = field(default_factory=dict)
    trigger_on_start: bool = False
    missed: Missed = "skip"
    misfire_grace: float = 60.0
    max_catchup: int = 100
    enabled: bool = True

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ArgumentError(f"schedule {self.name!r}: give exactly one of cron= and every=")
        if self.cron is not None:
            try:
                croniter(self.cron)
            except (CroniterError, ValueError, TypeError) as exc:
                raise ArgumentError(f"schedule {self.name!r}: bad cron expression {self.cron!r}: {exc}") from None
            if len(self.cron.split()) > 6:
                raise ArgumentError(f"schedule {self.name!r}: cron takes 5 fields, or 6 with seconds last")
            try:  # a day no month has (February 30) passes croniter's syntax check, then never comes
                _croniter(self.cron, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
            except CroniterBadDateError:
                raise ArgumentError(
                    f"schedule {self.name!r}: bad cron expression {self.cron!r}: no date ever matches it"
                ) from None
        if self.every is not None and not (isinstance(self.every, int | float) and 0 <= self.every < float("inf")):
            raise ArgumentError(f"schedule {self.name!r}: every must be a number of seconds >= 0")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ArgumentError(f"schedule {self.name!r}: unknown time zone {self.timezone!r}") from None
        if self.missed not in ("skip", "once", "all"):
            raise ArgumentError(f"schedule {self.name!r}: missed must be skip, once or all")
        unknown = set(self.job_options) - set(_JOB_OPTIONS)
        if unknown:
            raise ArgumentError(f"schedule {self.name!r}: unknown job option(s) {', '.join(sorted(unknown))}")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Schedule:
        """A Schedule from a ``pgjobs.schedules`` row."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})

    def params(self) -> dict[str, Any]:
        """Parameters of the ``schedule_upsert`` query."""

        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["args"] = to_json(self.args, f"the arguments of schedule {self.name!r}")
        values["job_options"] = to_json(dict(self.job_options), f"the job options of schedule {self.name!r}")
        return values


# Schedules declared with @periodic in this process, by name.
registry: dict[str, Schedule] = {}


def periodic(
    *,
    cron: str | None = None,
    every: float | dt.timedelta | None = None,
    name: str | None = None,
    args: list[Any] | dict[str, Any] | None = None,
    timezone: str = "UTC",
    trigger_on_start: bool = False,
    missed: Missed = "skip",
    misfire_grace: float = 60.0,
    max_catchup: int = 100,
    pass_job: bool = False,
    **options: Any,
) -> Callable[[Callable[..., Any]], Task[..., Any]]:
    """Register a function (or task) as a task with a schedule; a worker stores the schedule
    when it starts. ``options`` are enqueue options (queue, priority, group_key, retries,
    timeout, heartbeat, retry_delay, retry_backoff, ttl, meta). Errors are raised here, before
    anything is stored."""

    def register(f: Callable[..., Any]) -> Task[..., Any]:
        t = f if isinstance(f, Task) else task(pass_job=pass_job)(f)
        request = client.job(t, args=args if args is not None else {}, **options)
        o = request.options
        seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
        schedule = Schedule(
            name=name or t.name, task=t.name, args=request.args, cron=cron, every=seconds, timezone=timezone,
            queue=o["queue"] or "default", priority=o["priority"] or 0, group_key=o["group_key"],
            job_options={k: o[k] for k in _JOB_OPTIONS if o.get(k) is not None},
            trigger_on_start=trigger_on_start, missed=missed, misfire_grace=misfire_grace, max_catchup=max_catchup,
        )  # fmt: skip
        registry[schedule.name] = schedule
        return t

    return register


def declared(modules: Iterable[Any] = ()) -> dict[str, Schedule]:
    """Schedules declared with @periodic, plus Schedule objects found at the top level of modules."""
    found = dict(registry)
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Schedule):
                found[value.name] = value
    return found


# ------------------------------------------------------------------------------------------------
# Tick maths (pure)
# ------------------------------------------------------------------------------------------------
def _forward(schedule: Schedule, after: dt.datetime) -> Iterator[dt.datetime]:
    """Cron ticks strictly after `after`, in UTC; a repeated local wall time fires once."""
    assert schedule.cron is not None
    zone = schedule.zone
    start = after.astimezone(zone)
    it = _croniter(schedule.cron, start)
    last_wall = start.replace(tzinfo=None)
    while True:
        t: dt.datetime = it.get_next(dt.datetime)
        wall = t.replace(tzinfo=None)
        if wall <= last_wall:
            continue  # the hour the clocks went back: this wall time already fired
        last_wall = wall
        yield t.astimezone(UTC)


def next_tick(schedule: Schedule, after: dt.datetime) -> dt.datetime:
    """The first tick strictly after `after`."""
    if schedule.every is not None:
        return after + dt.timedelta(seconds=schedule.every)
    return next(_forward(schedule, after))


def ticks_between(
    schedule: Schedule, start: dt.datetime, end: dt.datetime, limit: int | None = None
) -> list[dt.datetime]:
    """Ticks t with start <= t < end (interval schedules: start, start + every, …)."""
    ticks: list[dt.datetime] = []
    if schedule.every is not None:
        if schedule.every <= 0:
            raise ArgumentError(f"schedule {schedule.name!r} runs after each run ends: it has no ticks to list")
        t = start
        while t < end and (limit is None or len(ticks) < limit):
            ticks.append(t)
            t += dt.timedelta(seconds=schedule.every)
        return ticks
    for t in _forward(schedule, start - dt.timedelta(microseconds=1)):
        if t >= end or (limit is not None and len(ticks) >= limit):
            break
        ticks.append(t)
    return ticks


def plan(
    schedule: Schedule, next_run_at: dt.datetime | None, now: dt.datetime, busy: bool = False
) -> tuple[list[dt.datetime], dt.datetime | None]:
    """What to fire now, and the next run to store: (ticks, next_run_at).

    `now` is the database's clock. A schedule seen for the first time (next_run_at None) fires
    only with trigger_on_start. A busy interval schedule (its last run unfinished) waits.
    """
    grace = dt.timedelta(seconds=schedule.misfire_grace)
    if next_run_at is None:
        first = [now] if schedule.trigger_on_start else []
        return first, (now if schedule.every == 0 else next_tick(schedule, now))
    if now < next_run_at:
        return [], next_run_at
    if schedule.every is not None:
        if busy:
            return [], next_run_at
        late = now - next_run_at > grace
        if late and schedule.missed == "skip":
            return [], now + dt.timedelta(seconds=schedule.every)
        tick = now if late or schedule.every == 0 else next_run_at
        return [tick], tick + dt.timedelta(seconds=schedule.every)
    # Cron: ticks up to misfire_grace late are on time and fire; older ones follow the policy.
    on_time = ticks_between(schedule, max(next_run_at, now - grace), now + dt.timedelta(microseconds=1))
    wanted = {"skip": 0, "once": 1, "all": schedule.max_catchup}[schedule.missed]
    missed = _latest_before(schedule, now - grace, next_run_at, wanted)
    return missed + on_time, next_tick(schedule, now)


def _latest_before(schedule: Schedule, before: dt.datetime, floor: dt.datetime, n: int) -> list[dt.datetime]:
    """Up to n cron ticks t with floor <= t < before, the latest ones, in order."""
    if n <= 0 or before <= floor:
        return []
    assert schedule.cron is not None
    it = _croniter(schedule.cron, before.astimezone(schedule.zone))
    found: list[dt.datetime] = []
    while len(found) < n:
        t = it.get_prev(dt.datetime).astimezone(UTC)
        if t < floor:
            break
        if t < before and (not found or t < found[-1]):
            found.append(t)
    return found[::-1]


# ------------------------------------------------------------------------------------------------
# The scheduler service
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerConfig:
    """How the scheduler runs inside a worker.

    :param interval: seconds between passes (jittered by ±10%); a tick fires at most this late.
    :param batch_size: the most schedules one pass handles.
    """

    interval: float = 1.0
    batch_size: int = 100


class Scheduler:
    """Fires due schedules. Any number may run: each schedule row is locked while one fires it,
    and the (schedule, tick) key refuses a second job for a tick."""

    def __init__(
        self,
        dsn: str,
        config: SchedulerConfig = SchedulerConfig(),
        *,
        owner: str | None = None,
        pool: _database.Pool | None = None,
    ) -> None:
        self.config = config
        self._own_pool = pool is None
        self._pool = pool or _database.Pool(dsn, owner=owner)
        # Rows no scheduler can run, parked: name -> the digest of the definition warned about. The
        # due query leaves them out until their definition changes.
        self._unrunnable: dict[str, str] = {}
        # Schedules whose queue was full at their last try (max_queued): warned about once.
        self._full: set[str] = set()

    async def run_once(self) -> int:
        """One pass; returns the number of jobs enqueued."""
        async with self._pool.connection("scheduler") as conn, conn.transaction():
            return await self._fire_due(conn)

    async def _fire_due(self, conn: psycopg.AsyncConnection[_database.Row]) -> int:
        fired = 0
        rows = await _database.fetch_async(
            conn, _sql.query("schedule_due"), {"limit": self.config.batch_size, "parked": Jsonb(self._unrunnable)}
        )
        for row in rows:
            planned = self._plan(row)
            if planned is None:
                continue
            schedule, (ticks, next_run_at) = planned
            try:
                # A savepoint each: a schedule whose queue is full waits, the others fire.
                async with conn.transaction():
                    result = await _database.fetch_async(
                        conn, _sql.query("schedule_fire"), {"name": schedule.name, "ticks": ticks, "next": next_run_at}
                    )
            except psycopg.Error as exc:
                if exc.sqlstate != QueueFull.SQLSTATE:
                    raise
                if schedule.name not in self._full:
                    logger.warning("schedule %s waits: %s", schedule.name, _database.first_line(exc))
                self._full.add(schedule.name)
                continue
            self._full.discard(schedule.name)
            n = result[0]["fired"]
            if n:
                logger.info("schedule %s: %d job(s) for %s", schedule.name, n, ", ".join(t.isoformat() for t in ticks))
            fired += n
        return fired

    def _plan(self, row: _database.Row) -> tuple[Schedule, tuple[list[dt.datetime], dt.datetime | None]] | None:
        """The schedule of a due row and its plan; None for a row no scheduler can run (a cron that
        never fires or an unknown zone, stored by hand or by an older version), which is parked with
        one warning until it changes, so that it never takes the place of the schedules after it."""
        try:
            schedule = Schedule.from_row(row)
            planned = schedule, plan(schedule, row["next_run_at"], row["now"], row["busy"])
        except ValueError as exc:  # ArgumentError or croniter's errors: this row's fault, not the pass's
            self._unrunnable[row["name"]] = row["definition"]
            logger.warning("schedule %s cannot run, skipped until it changes: %s", row["name"], exc)
            return None
        self._unrunnable.pop(row["name"], None)
        return planned

    async def run(self) -> None:
        """Pass after pass until cancelled; a pass the database refuses for now is skipped (the
        pool reported it), any other failure is logged."""
        try:
            while True:
                try:
                    await self.run_once()
                except psycopg.Error as exc:
                    if not _database.transient(exc):
                        logger.error("scheduler pass failed: %s", _database.first_line(exc))
                await asyncio.sleep(self.config.interval * random.uniform(0.9, 1.1))
        finally:
            if self._own_pool:
                await self._pool.close()


def store(conn: psycopg.Connection[Any], schedules: Iterable[Schedule]) -> None:
    """Create or update schedules in the database (a worker does this at start)."""
    for schedule in schedules:
        _database.fetch(conn, _sql.query("schedule_upsert"), schedule.params())


# ------------------------------------------------------------------------------------------------
# Backfill
# ------------------------------------------------------------------------------------------------
@dataclass
class BackfillSummary:
    """What a backfill did (succeeded and failed are counted when it waited)."""

    ticks: int = 0
    enqueued: int = 0
    skipped: int = 0
    rerun: int = 0
    succeeded: int = 0
    failed: int = 0
    job_ids: list[int] = field(default_factory=list)


def backfill(
    name: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    backwards: bool = False,
    rerun_failed: bool = False,
    dry_run: bool = False,
    wait: float | None = None,
    dsn: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BackfillSummary:
    """Enqueue one job per tick of a schedule with start <= tick < end (naive times read in the
    schedule's zone), skipping ticks that already have a job unless rerun_failed and it failed.
    With wait, wait up to that many seconds for the jobs and count how they ended."""

    target = migrations.prepare(dsn)
    with _database.connect(target) as conn:
        migrations.check(conn)
        rows = _database.fetch(conn, _sql.query("schedule_get"), {"name": name})
        if not rows:
            raise PgjobsError(f"no schedule named {name!r}")
        schedule = Schedule.from_row(rows[0])
        zone = schedule.zone
        start, end = (t if t.tzinfo else t.replace(tzinfo=zone) for t in (start, end))
        ticks = ticks_between(schedule, start, end)
        if backwards:
            ticks.reverse()
        summary = BackfillSummary(ticks=len(ticks))
        for i in range(0, len(ticks), 500):
            chunk = ticks[i : i + 500]
            for r in _database.fetch(
                conn,
                _sql.query("schedule_backfill"),
                {"name": name, "ticks": chunk, "rerun_failed": rerun_failed, "dry_run": dry_run},
            ):
                setattr(summary, r["action"], getattr(summary, r["action"]) + 1)
                if r["action"] in ("enqueued", "rerun") and r["job_id"] is not None:
                    summary.job_ids.append(r["job_id"])
            if progress is not None:
                progress(min(i + 500, len(ticks)), len(ticks))
    if wait is not None and summary.job_ids and not dry_run:
        for job in client.wait(summary.job_ids, wait, dsn=target):
            if job.status == "complete":
                summary.succeeded += 1
            elif job.status in ("failed", "aborted"):
                summary.failed += 1
    return summary
