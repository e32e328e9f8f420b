"""Schedules against a real database: validation in SQL, one job per tick, the scheduler, backfill."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

import pgjobs
from pgjobs import Schedule, SchedulerConfig
from pgjobs.schedules import Scheduler, store

Conn = psycopg.Connection[dict[str, Any]]
UTC = dt.UTC


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("SELECT pgjobs.schedule('s', 't', cron => '61 * * * *')", "cron"),
        ("SELECT pgjobs.schedule('s', 't', cron => '* * *')", "cron"),
        ("SELECT pgjobs.schedule('s', 't', cron => '*/0 * * * *')", "cron"),
        ("SELECT pgjobs.schedule('s', 't', cron => '* * * foo *')", "cron"),
        ("SELECT pgjobs.schedule('s', 't', cron => '5-1 * * * *')", "cron"),
        ("SELECT pgjobs.schedule('s', 't', cron => '* * * * *', every => 5)", "cron"),
        ("SELECT pgjobs.schedule('s', 't')", "cron"),
        ("SELECT pgjobs.schedule('s', 't', every => -1)", "every"),
        ("SELECT pgjobs.schedule('s', 't', every => 5, timezone => 'Mars/Olympus')", "timezone"),
        ("""SELECT pgjobs.schedule('s', 't', every => 5, job_options => '{"retrys": 1}')""", "job_options.retrys"),
        ("SELECT pgjobs.schedule('s', 'bad task', every => 5)", "task"),
        ("SELECT pgjobs.schedule('s', 't', every => 5, queue => 'no spaces')", "queue"),
    ],
)
def test_bad_schedules_are_refused_before_anything_is_stored(conn: Conn, call: str, field: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"pgjobs: {field}"):
        conn.execute(call)
    assert one(conn, "SELECT count(*) FROM pgjobs.schedules") == 0


def python_accepts(expr: str) -> bool:
    try:
        Schedule(name="s", task="t", cron=expr)
    except pgjobs.ArgumentError:
        return False
    return True


@pytest.mark.parametrize(
    ("expr", "fires"),
    [
        ("0 0 30 2 *", False),
        ("0 0 31 4 *", False),
        ("0 0 30,31 2 ?", False),
        ("0 0 31 4,6,9,11 *", False),
        ("0 0 31 feb-apr/2 *", False),  # February and April
        ("0 0 31 2/9 *", False),  # February and November
        ("0 0 30/1 2 *", False),  # 30 and 31
        ("0 0 30 2 *,mon", False),  # a * among the days of the week leaves them unrestricted
        ("0 0 31 2 * 0", False),
        ("0 0 29 2 *", True),  # leap days
        ("0 0 29-31 2 *", True),
        ("0 0 31 2/2 *", True),  # February, April, June, August…
        ("0 0 30 2 mon", True),  # day 30 or a Monday: the Mondays fire
        ("0 0 30 2 0-7", True),
        ("0 0 30 2 */1", True),
    ],
)
def test_a_cron_that_never_fires_is_refused_in_sql_as_in_python(conn: Conn, expr: str, fires: bool) -> None:
    assert python_accepts(expr) is fires
    if fires:
        conn.execute("SELECT pgjobs.schedule('s', 't', cron => %s)", [expr])
        return
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"pgjobs: cron: .* never fires"):
        conn.execute("SELECT pgjobs.schedule('s', 't', cron => %s)", [expr])
    assert one(conn, "SELECT count(*) FROM pgjobs.schedules") == 0


def test_schedule_from_sql_upserts_and_keeps_its_next_run_unless_the_timing_changes(conn: Conn) -> None:
    conn.execute(
        """SELECT pgjobs.schedule('nightly', 'app.report', '{"kind": "daily"}', cron => '0 3 * * *',
                                  timezone => 'Europe/Berlin', job_options => '{"max_attempts": 5}')"""
    )
    conn.execute("UPDATE pgjobs.schedules SET next_run_at = now() + interval '1 hour'")
    conn.execute("SELECT pgjobs.schedule('nightly', 'app.report', cron => '0 3 * * *', timezone => 'Europe/Berlin')")
    assert one(conn, "SELECT next_run_at IS NOT NULL FROM pgjobs.schedules")
    conn.execute("SELECT pgjobs.schedule('nightly', 'app.report', cron => '0 4 * * *', timezone => 'Europe/Berlin')")
    assert one(conn, "SELECT next_run_at IS NULL FROM pgjobs.schedules")
    assert one(conn, "SELECT pgjobs.schedule_enable('nightly', false)") is True
    assert one(conn, "SELECT pgjobs.unschedule('nightly')") is True
    assert one(conn, "SELECT pgjobs.unschedule('nightly')") is False


def test_a_tick_fires_one_job_however_many_schedulers_fire_it(dsn: str, conn: Conn) -> None:
    conn.execute("SELECT pgjobs.schedule('s', 'app.t', every => 60)")
    tick = one(conn, "SELECT date_trunc('minute', now())")
    barrier = threading.Barrier(6)
    fired: list[int] = []

    def fire() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            barrier.wait()
            row = c.execute("SELECT pgjobs.schedule_fire('s', %s, now())", [[tick]]).fetchone()
            assert row is not None
            fired.append(row[0])

    threads = [threading.Thread(target=fire) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fired) == [0, 0, 0, 0, 0, 1]
    meta = one(conn, "SELECT meta FROM pgjobs.jobs")
    assert meta["schedule"] == "s" and dt.datetime.fromisoformat(meta["tick"]) == tick


def run_scheduler(dsn: str, passes: int = 1) -> int:
    async def main() -> int:
        scheduler = Scheduler(dsn, SchedulerConfig())
        total = 0
        for _ in range(passes):
            total += await scheduler.run_once()
        await scheduler._pool.close()
        return total

    return asyncio.run(main())


def test_the_scheduler_stores_declared_schedules_and_fires_due_ones(dsn: str, conn: Conn) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        store(c, [Schedule(name="soon", task="app.t", every=3600, trigger_on_start=True, args={"x": 1})])
    assert run_scheduler(dsn) == 1  # trigger_on_start
    assert run_scheduler(dsn) == 0  # next run in an hour
    job = pgjobs.Job.from_row(conn.execute("SELECT * FROM pgjobs.jobs").fetchone())  # type: ignore[arg-type]
    assert job.task == "app.t" and job.args == {"x": 1} and job.tick is not None
    row = conn.execute("SELECT trigger_count, next_run_at - last_run_at AS gap FROM pgjobs.schedules").fetchone()
    assert row == {"trigger_count": 1, "gap": dt.timedelta(hours=1)}


def test_an_interval_schedule_never_overlaps_its_previous_run(dsn: str, conn: Conn) -> None:
    conn.execute("SELECT pgjobs.schedule('loop', 'app.t', every => 0, trigger_on_start => true)")
    assert run_scheduler(dsn, passes=3) == 1  # the first run is still queued
    conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
    assert run_scheduler(dsn) == 0  # ... and now active
    conn.execute("SELECT pgjobs.complete_many(array(SELECT id FROM pgjobs.jobs))")
    assert run_scheduler(dsn) == 1  # finished: the next run starts at once


def test_a_stored_cron_that_never_fires_is_skipped_with_one_warning_and_holds_up_no_other(
    dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgjobs.scheduler")
    # Stored by hand, past the checks; its next run is unset, so it comes first in every pass.
    conn.execute("INSERT INTO pgjobs.schedules (name, task, cron) VALUES ('feb-30', 'app.t', '0 0 30 2 *')")
    conn.execute("SELECT pgjobs.schedule('hourly', 'app.t', every => 3600)")
    conn.execute("UPDATE pgjobs.schedules SET next_run_at = now() WHERE name = 'hourly'")
    assert run_scheduler(dsn, passes=3) == 1
    assert one(conn, "SELECT meta->>'schedule' FROM pgjobs.jobs") == "hourly"
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("pgjobs") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "feb-30" in warnings[0] and "no date ever matches it" in warnings[0], warnings
    # Mended by hand, it is planned again.
    conn.execute("UPDATE pgjobs.schedules SET cron = '0 0 29 2 *' WHERE name = 'feb-30'")
    run_scheduler(dsn)
    assert one(conn, "SELECT next_run_at FROM pgjobs.schedules WHERE name = 'feb-30'") is not None


def test_unplannable_rows_past_a_batch_crowd_out_no_other_schedule(
    dsn: str, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgjobs.scheduler")
    # More rows than a pass takes that no scheduler can plan, stored by hand: never planned, so
    # their next runs are unset.
    conn.execute(
        "INSERT INTO pgjobs.schedules (name, task, cron)"
        " SELECT format('bad-%s', lpad(i::text, 3, '0')), 'app.t', '0 0 30 2 *' FROM generate_series(1, 150) i"
    )
    conn.execute("SELECT pgjobs.schedule('hourly', 'app.t', every => 3600)")
    conn.execute("UPDATE pgjobs.schedules SET next_run_at = now() WHERE name = 'hourly'")

    async def main() -> list[int]:
        scheduler = Scheduler(dsn, SchedulerConfig(batch_size=100))
        try:
            fired = [await scheduler.run_once()]  # a due schedule comes before unplanned rows
            conn.execute("SELECT pgjobs.schedule('new', 'app.t', every => 3600, trigger_on_start => true)")
            fired += [await scheduler.run_once() for _ in range(2)]  # the bad rows parked, the new one seen
            conn.execute("UPDATE pgjobs.schedules SET cron = '0 0 29 2 *' WHERE name = 'bad-001'")  # mended by hand
            fired.append(await scheduler.run_once())
            return fired
        finally:
            await scheduler._pool.close()

    fired = asyncio.run(main())
    assert fired[0] == 1 and sum(fired) == 2, fired
    assert [r["s"] for r in conn.execute("SELECT meta->>'schedule' AS s FROM pgjobs.jobs ORDER BY id")] == [
        "hourly",
        "new",
    ]
    planned = "SELECT name FROM pgjobs.schedules WHERE next_run_at IS NOT NULL ORDER BY name"
    assert [r["name"] for r in conn.execute(planned)] == ["bad-001", "hourly", "new"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 150 and all("no date ever matches it" in w for w in warnings)  # one a row


def test_schedule_due_refuses_bad_arguments(conn: Conn) -> None:
    for call in ("SELECT * FROM pgjobs.schedule_due(0)", "SELECT * FROM pgjobs.schedule_due(NULL)",
                 "SELECT * FROM pgjobs.schedule_due(10, '[]')"):  # fmt: skip
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"pgjobs: (batch_size|parked)"):
            conn.execute(call)


@pytest.mark.parametrize(("missed", "expected"), [("skip", 0), ("once", 1), ("all", 5)])
def test_workers_coming_back_after_downtime_follow_the_missed_policy(
    dsn: str, conn: Conn, missed: str, expected: int
) -> None:
    conn.execute(
        """SELECT pgjobs.schedule('m', 'app.t', cron => '* * * * *', missed => %s,
                                  misfire_grace => 30, max_catchup => 5)""",
        [missed],
    )
    run_scheduler(dsn)  # first sight: computes the next run
    # Every scheduler was down for three hours: the next run is long past.
    conn.execute("UPDATE pgjobs.schedules SET next_run_at = date_trunc('minute', now()) - interval '3 hours'")
    fired = run_scheduler(dsn)
    recent = one(conn, "SELECT count(*) FROM pgjobs.schedule_runs WHERE tick > now() - interval '30 seconds'")
    assert fired - recent == expected  # the missed ticks fired, besides any on-time one
    assert one(conn, "SELECT next_run_at > now() FROM pgjobs.schedules")


def test_backfill_a_month_forwards_and_backwards_then_nothing_twice(dsn: str, conn: Conn) -> None:
    conn.execute("SELECT pgjobs.schedule('daily', 'app.t', cron => '0 6 * * *', timezone => 'Europe/Paris')")
    start, end = dt.datetime(2026, 10, 1), dt.datetime(2026, 11, 1)
    seen: list[tuple[int, int]] = []
    summary = pgjobs.backfill("daily", start, end, dsn=dsn, progress=lambda d, t: seen.append((d, t)))
    assert (summary.ticks, summary.enqueued, summary.skipped) == (31, 31, 0) and seen[-1] == (31, 31)
    ticks = [r["tick"] for r in conn.execute("SELECT tick FROM pgjobs.schedule_runs ORDER BY tick")]
    assert ticks[0] == dt.datetime(2026, 10, 1, 4, tzinfo=UTC)  # 06:00 in Paris, summer time
    assert ticks[-1] == dt.datetime(2026, 10, 31, 5, tzinfo=UTC)  # winter time from Oct 25
    order = [r["tick"] for r in conn.execute("SELECT s.tick FROM pgjobs.schedule_runs s ORDER BY job_id")]
    assert order == ticks  # forwards: oldest tick enqueued first

    again = pgjobs.backfill("daily", start, end, dsn=dsn)
    assert (again.enqueued, again.skipped) == (0, 31)

    conn.execute("DELETE FROM pgjobs.schedule_runs")
    back = pgjobs.backfill("daily", start, end, dsn=dsn, backwards=True)
    assert back.enqueued == 31
    order = [r["tick"] for r in conn.execute("SELECT tick FROM pgjobs.schedule_runs ORDER BY job_id")]
    assert order == sorted(order, reverse=True)  # backwards: newest first

    dry = pgjobs.backfill("daily", start, dt.datetime(2026, 12, 1), dsn=dsn, dry_run=True)
    assert (dry.enqueued, dry.skipped) == (30, 31)
    assert one(conn, "SELECT count(*) FROM pgjobs.schedule_runs") == 31


def test_backfill_rerun_failed_enqueues_only_the_failed_ticks(dsn: str, conn: Conn) -> None:
    conn.execute(
        "SELECT pgjobs.schedule('hourly', 'app.t', cron => '0 * * * *', job_options => '{\"max_attempts\": 1}')"
    )
    start, end = dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert pgjobs.backfill("hourly", start, end, dsn=dsn).enqueued == 10
    claimed = conn.execute("SELECT id FROM pgjobs.dequeue('w', '{default}', 10) ORDER BY id").fetchall()
    for i, row in enumerate(claimed):
        if i in (2, 5):
            conn.execute("SELECT pgjobs.fail(%s, 'boom')", [row["id"]])
        else:
            conn.execute("SELECT pgjobs.complete(%s)", [row["id"]])
    summary = pgjobs.backfill("hourly", start, end, dsn=dsn, rerun_failed=True)
    assert (summary.rerun, summary.skipped, summary.enqueued) == (2, 8, 0)
    queued = conn.execute("SELECT (meta->>'tick')::timestamptz AS tick FROM pgjobs.jobs WHERE status = 'queued'")
    assert sorted(r["tick"] for r in queued) == [start + dt.timedelta(hours=2), start + dt.timedelta(hours=5)]


def test_backfill_from_sql_takes_ticks(conn: Conn) -> None:
    conn.execute("SELECT pgjobs.schedule('s', 'app.t', every => 3600)")
    rows = conn.execute(
        """SELECT * FROM pgjobs.backfill(
               's', ARRAY['2026-01-01 00:00Z', '2026-01-01 01:00Z', '2026-01-01 00:00Z']::timestamptz[])"""
    ).fetchall()
    assert [r["action"] for r in rows] == ["enqueued", "enqueued", "skipped"]
    with pytest.raises(psycopg.errors.NoDataFound):
        conn.execute("SELECT * FROM pgjobs.backfill('nope', '{}')")


FIELDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6), (0, 59)]


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    parts = []
    for lo, hi in FIELDS[: draw(st.sampled_from([5, 6]))]:
        kind = draw(st.sampled_from(["*", "n", "range", "step", "list", "bad"]))
        a, b = sorted(draw(st.integers(lo, hi)) for _ in range(2))
        parts.append(
            {
                "*": "*",
                "n": str(a),
                "range": f"{a}-{b}",
                "step": f"*/{draw(st.integers(1, 10))}",
                "list": f"{a},{b}",
                "bad": str(draw(st.sampled_from([hi + 1, hi + 7]))),
            }[kind]
        )
    return " ".join(parts)


@settings(max_examples=150, deadline=None)
@given(expr=cron_expressions())
def test_the_database_accepts_exactly_the_cron_expressions_python_accepts(
    template_db: str, server_dsn: str, expr: str
) -> None:
    from psycopg.conninfo import make_conninfo

    python_ok = python_accepts(expr)
    with psycopg.connect(make_conninfo(server_dsn, dbname=template_db)) as c:
        try:
            c.execute("SELECT pgjobs.cron_check(%s)", [expr])
            sql_ok = True
        except psycopg.errors.InvalidParameterValue:
            sql_ok = False
    assert sql_ok == python_ok, expr


def test_job_tick_reads_the_schedule_tick_from_meta(conn: Conn) -> None:
    conn.execute(
        "SELECT pgjobs.enqueue_many(%s)", [Jsonb([{"task": "t", "meta": {"tick": "2026-01-01T00:00:00+00:00"}}])]
    )
    job = pgjobs.Job.from_row(conn.execute("SELECT * FROM pgjobs.jobs").fetchone())  # type: ignore[arg-type]
    assert job.tick == dt.datetime(2026, 1, 1, tzinfo=UTC)


def test_backfill_refuses_a_null_tick(conn: Conn) -> None:
    conn.execute("SELECT pgjobs.schedule('nightly', 't', every => 60)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="ticks"):
        conn.execute("SELECT * FROM pgjobs.backfill('nightly', ARRAY[now(), NULL])")
