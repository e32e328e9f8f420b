"""The reaper's leadership is a lease on the database clock: taken, renewed, lost when it runs out,
and checked in the transaction of each pass, so that a deposed leader changes nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pgjobs import _database, _sql

from .test_liveness_sql import claim, job, one, register, silence

Conn = psycopg.Connection[dict[str, Any]]


def take(conn: Conn, holder: str, ttl: float = 10.0) -> bool:
    return bool(one(conn, "SELECT pgjobs.lease_take('reaper', %s, %s)", [holder, ttl]))


def reap_as(conn: Conn, holder: str, ttl: float = 10.0) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM pgjobs.reap_as(%s, %s)", [holder, ttl]).fetchone()
    assert row is not None
    return row


def expire(conn: Conn) -> None:
    """Make the reaper's lease run out (as if its holder had stopped renewing it)."""
    conn.execute("UPDATE pgjobs.leases SET expires_at = now() - interval '1 second' WHERE name = 'reaper'")


def test_one_holder_at_a_time_until_the_lease_runs_out(conn: Conn) -> None:
    assert take(conn, "a")
    assert not take(conn, "b")
    assert take(conn, "a")  # renewal
    expire(conn)
    assert take(conn, "b")
    assert not take(conn, "a")
    assert one(conn, "SELECT holder FROM pgjobs.leases WHERE name = 'reaper'") == "b"


def test_the_lease_expires_by_the_database_clock(conn: Conn) -> None:
    assert take(conn, "a", ttl=0.3)
    assert not take(conn, "b")
    conn.execute("SELECT pg_sleep(0.4)")
    assert take(conn, "b")


def test_a_released_lease_is_taken_at_once(conn: Conn) -> None:
    assert take(conn, "a")
    assert one(conn, "SELECT pgjobs.lease_release('reaper', 'b')") is None  # not b's to give
    assert not take(conn, "b")
    assert one(conn, "SELECT pgjobs.lease_release('reaper', 'a')") is True
    assert take(conn, "b")


def test_a_contender_does_not_wait_for_a_pass_in_progress(dsn: str, conn: Conn) -> None:
    expire_at_once = 0.001
    with psycopg.connect(dsn, row_factory=dict_row) as leader:
        assert take(leader, "a", ttl=expire_at_once)  # a transaction still open: the row stays locked
        conn.execute("SELECT pg_sleep(0.05)")
        # The lease has run out, but the pass that took it is not over: no second leader meanwhile.
        conn.execute("SET lock_timeout = '2s'")
        assert not take(conn, "b")
        leader.commit()
    assert take(conn, "b")


def test_only_the_holder_reaps_and_a_deposed_leader_changes_nothing(conn: Conn) -> None:
    register(conn, "w1")
    job_id = one(conn, "SELECT pgjobs.enqueue('t')")
    claim(conn, "w1")
    assert reap_as(conn, "a")["leader"] is True
    silence(conn, "w1", 60)
    assert reap_as(conn, "b") == {
        "leader": False, "killed": 0, "dead_workers": 0, "reset": 0, "deleted_jobs": 0, "deleted_workers": 0
    }  # fmt: skip
    assert job(conn, job_id)["status"] == "active"
    expire(conn)  # a froze; b takes over
    counts = reap_as(conn, "b")
    assert (counts["leader"], counts["dead_workers"], counts["reset"]) == (True, 1, 1)
    assert job(conn, job_id)["status"] == "queued"
    assert reap_as(conn, "a")["leader"] is False  # a wakes up


@pytest.mark.parametrize(
    ("holder", "ttl"), [(None, 1.0), ("", 1.0), ("x" * 201, 1.0), ("a", 0.0), ("a", -1.0), ("a", float("nan"))]
)
def test_bad_lease_arguments_are_refused(conn: Conn, holder: str | None, ttl: float) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"pgjobs: (holder|ttl)"):
        take(conn, holder, ttl)  # type: ignore[arg-type]


def test_workers_shows_the_leader(conn: Conn) -> None:
    register(conn, "w1")
    register(conn, "w2")
    take(conn, "w2")
    rows = _database.fetch(conn, _sql.query("worker_list"))
    assert sorted((r["id"], r["leader"]) for r in rows) == [("w1", False), ("w2", True)]
    expire(conn)
    assert not any(r["leader"] for r in _database.fetch(conn, _sql.query("worker_list")))
