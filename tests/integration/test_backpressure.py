"""Backpressure: a queue's maximum depth refuses enqueues beyond it, and says how full it is."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgjobs
from pgjobs.schedules import Scheduler, SchedulerConfig

Conn = psycopg.Connection[dict[str, Any]]


def depth(conn: Conn, queue: str = "capped") -> int:
    row = conn.execute("SELECT count(*) AS n FROM pgjobs.jobs WHERE queue = %s AND status = 'queued'", [queue])
    return row.fetchone()["n"]  # type: ignore[index]


def enqueue_many(conn: Conn, n: int, on_full: str = "error", queue: str = "capped") -> list[int | None]:
    rows = conn.execute(
        "SELECT item, id FROM pgjobs.enqueue_many(task => ARRAY['t'], args => ARRAY(SELECT '{}'::jsonb"
        " FROM generate_series(1, %s)), queue => ARRAY[%s], on_full => %s) ORDER BY item",
        [n, queue, on_full],
    ).fetchall()
    return [r["id"] for r in rows]


def one_pressure(conn: Conn, queue: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM pgjobs.queue_pressure(ARRAY[%s])", [queue]).fetchone()
    assert row is not None
    return row


def cap(conn: Conn, n: int, queue: str = "capped") -> None:
    conn.execute("SELECT pgjobs.set_queue(%s, max_queued => %s)", [queue, n])


def test_an_enqueue_past_the_limit_is_refused_with_its_own_sqlstate_and_adds_nothing(conn: Conn) -> None:
    cap(conn, 10)
    assert None not in enqueue_many(conn, 8)
    with pytest.raises(psycopg.Error, match="queue capped is full: 8 queued of max_queued 10, 3 more refused") as e:
        enqueue_many(conn, 3)
    assert e.value.sqlstate == "PJ001"
    assert depth(conn) == 8
    # A caller inside its own transaction can tell it apart and carry on from a savepoint.
    with conn.transaction(), pytest.raises(psycopg.Error) as e, conn.transaction():
        conn.execute("SELECT pgjobs.enqueue('t', queue => 'capped', args => '[1, 2, 3]')")
        conn.execute("SELECT pgjobs.enqueue('t', queue => 'capped')")
        conn.execute("SELECT pgjobs.enqueue('t', queue => 'capped')")
    assert e.value.sqlstate == "PJ001" and depth(conn) == 8


def test_with_reject_what_fits_is_enqueued_in_order_and_the_rest_is_named(conn: Conn) -> None:
    cap(conn, 10)
    enqueue_many(conn, 7)
    ids = enqueue_many(conn, 5, on_full="reject")
    assert [i is not None for i in ids] == [True, True, True, False, False]
    assert conn.execute("SELECT pgjobs.enqueue('t', queue => 'capped', on_full => 'reject') AS id").fetchone() == {
        "id": None
    }
    assert depth(conn) == 10
    # Other queues in the same batch are not held back by a full one.
    rows = conn.execute(
        'SELECT id FROM pgjobs.enqueue_many(\'[{"task": "t", "queue": "capped"}, {"task": "t"}]\','
        " on_full => 'reject') ORDER BY item"
    ).fetchall()
    assert rows[0]["id"] is None and rows[1]["id"] is not None


def test_a_job_already_there_under_its_key_is_returned_however_full_the_queue(conn: Conn) -> None:
    cap(conn, 1)
    first = conn.execute("SELECT pgjobs.enqueue('t', queue => 'capped', key => 'k') AS id").fetchone()
    again = conn.execute("SELECT pgjobs.enqueue('t', queue => 'capped', key => 'k') AS id").fetchone()
    assert first == again


def test_jobs_already_admitted_come_back_whatever_the_depth(conn: Conn) -> None:
    cap(conn, 2)
    enqueue_many(conn, 2)
    (job,) = conn.execute("SELECT * FROM pgjobs.dequeue('w', '{capped}', 1)").fetchall()
    enqueue_many(conn, 1)  # room again: two queued
    conn.execute("SELECT pgjobs.fail(%s, 'boom')", [job["id"]])  # its retry is not an enqueue
    assert depth(conn) == 3
    assert enqueue_many(conn, 1, on_full="reject") == [None]


def test_bad_limits_and_modes_are_refused(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="max_queued: must be >= 0"):
        cap(conn, -1)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="on_full: must be 'error' or 'reject'"):
        conn.execute("SELECT pgjobs.enqueue('t', on_full => 'drop')")


def test_pressure_says_how_full_a_queue_is_and_how_long_its_oldest_due_job_waited(conn: Conn) -> None:
    cap(conn, 4)
    enqueue_many(conn, 3)
    enqueue_many(conn, 5, queue="free")
    # The oldest due job has a low priority; a later one with a high priority is first in line;
    # one scheduled for later is not due.
    conn.execute(
        "SELECT pgjobs.enqueue('t', queue => 'ages', priority => 9, scheduled_at => now() - interval '1 hour')"
    )
    conn.execute(
        "SELECT pgjobs.enqueue('t', queue => 'ages', priority => -9, scheduled_at => now() - interval '1 minute')"
    )
    conn.execute(
        "SELECT pgjobs.enqueue('t', queue => 'ages', priority => -20, scheduled_at => now() + interval '1 day')"
    )
    rows = {r["queue"]: r for r in conn.execute("SELECT * FROM pgjobs.queue_pressure()").fetchall()}
    assert (rows["capped"]["queued"], rows["capped"]["max_queued"], rows["capped"]["pressure"]) == (3, 4, 0.75)
    assert rows["free"]["pressure"] is None and rows["free"]["queued"] == 5
    assert 3599 < rows["ages"]["oldest_due_seconds"] < 3700
    conn.execute("DELETE FROM pgjobs.jobs WHERE queue = 'ages' AND scheduled_at < now()")
    assert one_pressure(conn, "ages")["oldest_due_seconds"] is None


def test_python_raises_queue_full_rejects_or_waits_for_room(env_dsn: str, conn: Conn) -> None:
    pgjobs.set_queue("capped", max_queued=3)
    pgjobs.enqueue_many([pgjobs.job("t", queue="capped") for _ in range(3)])
    with pytest.raises(pgjobs.QueueFull, match="queue capped is full"):
        pgjobs.enqueue("t", queue="capped")
    assert pgjobs.enqueue_many([pgjobs.job("t", queue="capped")], on_full="reject") == [None]
    (p,) = pgjobs.pressure(["capped"])
    assert (p.queued, p.max_queued, p.pressure) == (3, 3, 1.0)

    def drain_later() -> None:
        time.sleep(0.3)
        conn.execute("SELECT * FROM pgjobs.dequeue('w', '{capped}', 2)")

    thread = threading.Thread(target=drain_later)
    thread.start()
    try:
        job = pgjobs.enqueue("t", queue="capped", on_full="wait", full_timeout=10)
        ids = pgjobs.enqueue_many([pgjobs.job("t", queue="capped")], on_full="wait", full_timeout=10)
    finally:
        thread.join()
    assert job.id is not None and ids[0] is not None and depth(conn) == 3
    with pytest.raises(pgjobs.QueueFull, match="1 of 2 jobs refused") as e:
        pgjobs.enqueue_many([pgjobs.job("t", queue="other"), pgjobs.job("t", queue="capped")], on_full="wait",
                            full_timeout=0.3)  # fmt: skip
    assert e.value.ids is not None and e.value.ids[0] is not None and e.value.ids[1] is None


def test_a_schedule_whose_queue_is_full_waits_and_the_others_fire(dsn: str, conn: Conn) -> None:
    cap(conn, 1)
    enqueue_many(conn, 1)
    conn.execute("SELECT pgjobs.schedule('blocked', 't', every => 0, queue => 'capped')")
    conn.execute("SELECT pgjobs.schedule('free', 't', every => 0, queue => 'default')")

    async def passes() -> None:
        scheduler = Scheduler(dsn, SchedulerConfig())
        for _ in range(3):
            await scheduler.run_once()
            await asyncio.sleep(0.05)
        await scheduler._pool.close()

    asyncio.run(passes())
    fired = {r["queue"]: r["n"] for r in conn.execute(
        "SELECT queue, count(*) AS n FROM pgjobs.jobs WHERE meta ? 'schedule' GROUP BY queue").fetchall()}  # fmt: skip
    assert fired == {"default": 1}
    conn.execute("DELETE FROM pgjobs.jobs WHERE queue = 'capped'")
    asyncio.run(passes())
    assert depth(conn) == 1  # room again: the tick that waited fires


def test_producers_racing_for_the_last_places_never_pass_the_limit(dsn: str, conn: Conn) -> None:
    limit = 200
    cap(conn, limit)
    accepted: list[int] = []
    lock = threading.Lock()

    def produce() -> None:
        with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as c:
            for _ in range(20):
                got = [i for i in enqueue_many(c, 7, on_full="reject") if i is not None]
                with lock:
                    accepted.extend(got)

    threads = [threading.Thread(target=produce) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert depth(conn) == limit == len(accepted)  # full, never past it, and every accepted job is there
    stored = {r["id"] for r in conn.execute("SELECT id FROM pgjobs.jobs WHERE queue = 'capped'").fetchall()}
    assert stored == set(accepted)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 30),
    steps=st.lists(st.tuples(st.sampled_from(["enqueue", "reject", "claim"]), st.integers(1, 12)), max_size=15),
)
def test_admissions_keep_the_depth_at_or_under_the_limit(conn: Conn, limit: int, steps: list[tuple[str, int]]) -> None:
    conn.execute("DELETE FROM pgjobs.jobs; DELETE FROM pgjobs.queue_settings")
    cap(conn, limit)
    for op, n in steps:
        before = depth(conn)
        if op == "claim":
            conn.execute("SELECT * FROM pgjobs.dequeue('w', '{capped}', %s)", [n])
        elif op == "reject":
            ids = enqueue_many(conn, n, on_full="reject")
            admitted = sum(i is not None for i in ids)
            assert admitted == min(n, limit - before)  # what fits, no more and no less
            assert ids == sorted(ids, key=lambda i: i is None)  # the first ones, in order
        else:
            try:
                enqueue_many(conn, n)
            except psycopg.Error as e:
                assert e.sqlstate == "PJ001" and before + n > limit
                assert depth(conn) == before
            else:
                assert before + n <= limit
        assert depth(conn) <= limit
