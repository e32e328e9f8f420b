"""Queue settings as every client meets them: dequeue obeys pause, rate limits and active limits."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

import pgjobs

Conn = psycopg.Connection[dict[str, Any]]


def enqueue(conn: Conn, n: int, queue: str = "default", group_key: str | None = None) -> list[int]:
    rows = conn.execute(
        "SELECT pgjobs.enqueue('t', queue => %s, group_key => %s) AS id FROM generate_series(1, %s)",
        [queue, group_key, n],
    ).fetchall()
    return [r["id"] for r in rows]


def dequeue(conn: Conn, n: int = 10, queues: list[str] | None = None, worker: str = "w1") -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM pgjobs.dequeue(%s, %s, %s)", [worker, queues or ["default"], n]).fetchall()


def set_queue(conn: Conn, queue: str = "default", **settings: Any) -> dict[str, Any]:
    names = ", ".join(f"{k} => %({k})s" for k in settings)
    row = conn.execute(f"SELECT * FROM pgjobs.set_queue(%(queue)s, {names})", {"queue": queue, **settings}).fetchone()
    assert row is not None
    return row


def complete(conn: Conn, job_id: int) -> None:
    conn.execute("SELECT pgjobs.complete(%s)", [job_id])


def test_a_paused_queue_is_not_claimed_and_resuming_wakes_its_workers(conn: Conn, dsn: str) -> None:
    enqueue(conn, 3)
    running = dequeue(conn, 1)
    assert set_queue(conn, paused=True)["paused"] is True
    assert dequeue(conn) == []
    complete(conn, running[0]["id"])  # a running job still finishes
    assert dequeue(conn, queues=["other", "default"]) == []
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgjobs.queue.default"')
        row = set_queue(conn, paused=False)
        assert [n.channel for n in listener.notifies(timeout=1, stop_after=1)] == ["pgjobs.queue.default"]
    assert row["paused"] is False and row["queued"] == 2
    assert len(dequeue(conn)) == 2


def test_max_active_holds_across_workers_and_frees_as_jobs_finish(conn: Conn) -> None:
    enqueue(conn, 10)
    set_queue(conn, max_active=3)
    first = dequeue(conn, 10, worker="w1")
    assert len(first) == 3
    assert dequeue(conn, 10, worker="w2") == []
    complete(conn, first[0]["id"])
    assert len(dequeue(conn, 10, worker="w2")) == 1
    set_queue(conn, max_active=0)  # lifted
    assert len(dequeue(conn, 10, worker="w3")) == 6


def test_max_active_holds_when_many_claimers_race(dsn: str, conn: Conn) -> None:
    enqueue(conn, 200)
    set_queue(conn, max_active=5)
    seen: list[int] = []
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(30):
                    got = c.execute("SELECT id FROM pgjobs.dequeue(%s, '{default}', 3)", [name]).fetchall()
                    active = c.execute(
                        "SELECT count(*) FROM pgjobs.jobs WHERE status = 'active' AND queue = 'default'"
                    ).fetchone()
                    seen.append(active[0])  # type: ignore[index]
                    for (job_id,) in got:
                        c.execute("SELECT pgjobs.complete(%s)", [job_id])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert max(seen) <= 5
    done = conn.execute("SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'complete'").fetchone()
    assert done is not None and done["n"] > 20  # the limit did not stop the queue


def test_a_rate_limit_allows_that_many_claims_in_any_window(conn: Conn) -> None:
    enqueue(conn, 20)
    set_queue(conn, rate_limit=5, rate_period=60)
    assert len(dequeue(conn, 10)) == 5
    assert dequeue(conn, 10, worker="w2") == []
    # Claims that have left the window make room again (moved back rather than waited for).
    conn.execute("UPDATE pgjobs.queue_claims SET claimed_at = claimed_at - interval '61 seconds'")
    assert len(dequeue(conn, 3)) == 3
    assert len(dequeue(conn, 10)) == 2
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.queue_claims").fetchone() == {"n": 5}


def test_group_max_active_runs_that_many_of_a_group_each_in_its_own_slot(conn: Conn) -> None:
    enqueue(conn, 5, group_key="g")
    enqueue(conn, 1, group_key="h")
    set_queue(conn, group_max_active=2)
    claimed = dequeue(conn, 10)
    by_group = sorted((r["group_key"], r["group_slot"]) for r in claimed)
    assert by_group == [("g", 0), ("g", 1), ("h", 0)]
    assert dequeue(conn, 10) == []
    complete(conn, next(r["id"] for r in claimed if r["group_slot"] == 0 and r["group_key"] == "g"))
    (again,) = dequeue(conn, 10)
    assert (again["group_key"], again["group_slot"]) == ("g", 0)
    set_queue(conn, group_max_active=0)  # no limit: the rest of the group at once
    assert len(dequeue(conn, 10)) == 2


def test_groups_stay_exclusive_by_default(conn: Conn) -> None:
    enqueue(conn, 3, group_key="g")
    set_queue(conn, max_active=10)  # settings of another kind keep the default
    assert [r["group_key"] for r in dequeue(conn, 10)] == ["g"]


def test_a_group_rate_limit_applies_to_each_group(conn: Conn) -> None:
    enqueue(conn, 4, group_key="a")
    enqueue(conn, 4, group_key="b")
    enqueue(conn, 2)
    set_queue(conn, group_rate_limit=2, group_rate_period=60, group_max_active=0)
    claimed = dequeue(conn, 20)
    assert sorted(str(r["group_key"]) for r in claimed) == ["None", "None", "a", "a", "b", "b"]
    assert dequeue(conn, 20) == []


def test_a_queue_back_to_its_defaults_keeps_no_settings(conn: Conn) -> None:
    set_queue(conn, rate_limit=3, rate_period=1, paused=True)
    row = set_queue(conn, rate_limit=0, paused=False)
    assert row["rate_limit"] == 0 and row["paused"] is False
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.queue_settings").fetchone() == {"n": 0}


def test_the_queues_view_counts_what_each_queue_holds(conn: Conn) -> None:
    enqueue(conn, 3)
    enqueue(conn, 1, queue="mail")
    conn.execute("SELECT pgjobs.enqueue('t', queue => 'later', scheduled_at => now() + interval '1 hour')")
    dequeue(conn, 1)
    set_queue(conn, "idle", max_active=2)
    rows = {r["queue"]: r for r in conn.execute("SELECT * FROM pgjobs.queues")}
    assert set(rows) == {"default", "mail", "later", "idle"}
    assert (rows["default"]["queued"], rows["default"]["active"]) == (2, 1)
    assert (rows["later"]["queued"], rows["later"]["scheduled"]) == (0, 1)
    assert rows["idle"]["max_active"] == 2 and rows["idle"]["oldest_queued_seconds"] is None
    assert rows["mail"]["oldest_queued_seconds"] >= 0


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"rate_limit": -1}, "rate_limit"),
        ({"rate_limit": 10}, "rate_period"),  # a rate without a period
        ({"rate_period": float("nan")}, "rate_period"),
        ({"rate_period": float("inf")}, "rate_period"),
        ({"max_active": -2}, "max_active"),
        ({"group_rate_limit": 2}, "group_rate_period"),
        ({"group_rate_period": -1.0}, "group_rate_period"),
        ({"group_max_active": -1}, "group_max_active"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named_and_change_nothing(
    conn: Conn, settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=rf"pgjobs: {field}: "):
        set_queue(conn, **settings)
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.queue_settings").fetchone() == {"n": 0}


@pytest.mark.parametrize("name", ["bad queue", "", "x" * 49, None])
def test_a_bad_queue_name_is_refused(conn: Conn, name: str | None) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"pgjobs: queue: "):
        set_queue(conn, name, paused=True)  # type: ignore[arg-type]


def test_python_set_queue_and_queues(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        q = pgjobs.set_queue("mail", rate_limit=10, rate_period=1, max_active=4, conn=c)
        assert (q.queue, q.rate_limit, q.rate_period, q.max_active, q.group_max_active) == ("mail", 10, 1.0, 4, 1)
        assert [x.queue for x in pgjobs.queues(conn=c)] == ["mail"]


def test_python_set_queue_async_and_an_unknown_setting(dsn: str) -> None:
    async def main() -> pgjobs.Queue:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            with pytest.raises(pgjobs.ArgumentError, match="unknown queue setting"):
                await pgjobs.set_queue_async("mail", rate=3, conn=c)
            return await pgjobs.set_queue_async("mail", paused=True, conn=c)

    assert asyncio.run(main()).paused is True


def test_one_big_claim_keeps_within_every_limit_at_once(conn: Conn) -> None:
    enqueue(conn, 20, group_key="a")  # first in line
    enqueue(conn, 20)
    set_queue(conn, group_rate_limit=5, group_rate_period=60, group_max_active=0, rate_limit=12, rate_period=60)
    claimed = dequeue(conn, 30)
    assert len(claimed) == 12 and sum(1 for r in claimed if r["group_key"] == "a") == 5
    assert dequeue(conn, 30) == []
