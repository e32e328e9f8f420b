"""The reaper's leadership is a lease on the database clock: taken, renewed, lost when it runs out,
and checked in the transaction of each pass, so that a deposed leader changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import pgjobs
from pgjobs import _database, _sql
from pgjobs.reaper import MAX_LEASE_TTL, MIN_GRACE_MULTIPLIER, ReaperConfig

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
    ("holder", "ttl"),
    [(None, 1.0), ("", 1.0), ("x" * 201, 1.0), ("a", 0.0), ("a", -1.0), ("a", float("nan")), ("a", 600.001),
     ("a", 86400.0), ("a", float("inf"))],
)  # fmt: skip
def test_bad_lease_arguments_are_refused(conn: Conn, holder: str | None, ttl: float) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"pgjobs: (holder|ttl)"):
        take(conn, holder, ttl)  # type: ignore[arg-type]


def test_a_lease_lasts_at_most_600_seconds_so_one_stolen_call_cannot_stall_the_reaper_for_long(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="ttl: must be more than 0 and at most 600"):
        reap_as(conn, "rogue", ttl=86400)
    assert one(conn, "SELECT holder FROM pgjobs.leases WHERE name = 'reaper'") is None  # nothing taken
    assert take(conn, "rogue", ttl=MAX_LEASE_TTL)  # the edge is accepted
    left = one(conn, "SELECT extract(epoch FROM expires_at - now()) FROM pgjobs.leases WHERE name = 'reaper'")
    assert float(left) == pytest.approx(600, abs=1)
    assert reap_as(conn, "w1", ttl=MAX_LEASE_TTL)["leader"] is False
    expire(conn)  # 600 s later at most, the fleet leads again
    assert reap_as(conn, "w1", ttl=MAX_LEASE_TTL)["leader"] is True


GRACE_CALLS = {
    "reap": "SELECT * FROM pgjobs.reap(1000, %s)",
    "reap_as": "SELECT * FROM pgjobs.reap_as('w0', 10, 1000, %s)",
}


@pytest.mark.parametrize("call", sorted(GRACE_CALLS))
@pytest.mark.parametrize("grace", [-1.0, 0.0, 1.0, 1.49, None, float("nan"), float("inf")])
def test_a_grace_under_one_and_a_half_heart_rates_is_refused(conn: Conn, call: str, grace: float | None) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"pgjobs: grace_multiplier: must be at least 1\.5"):
        conn.execute(GRACE_CALLS[call], [grace])


@pytest.mark.parametrize("call", sorted(GRACE_CALLS))
def test_a_bad_grace_is_refused_even_where_another_holds_the_lease(conn: Conn, call: str) -> None:
    assert take(conn, "someone-else")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="grace_multiplier"):
        conn.execute(GRACE_CALLS[call], [-1])


def test_no_grace_declares_a_worker_that_beats_on_time_dead(conn: Conn) -> None:
    register(conn, "w1", heart_rate=10)
    job_id = one(conn, "SELECT pgjobs.enqueue('t')")
    claim(conn, "w1")
    silence(conn, "w1", 12)  # its beat is 2 s late: alive, running its job
    for grace in (-1, 0.5, 1.0):  # what a stolen credential would try: runs handed out twice
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT * FROM pgjobs.reap(1000, %s)", [grace])
    counts = conn.execute("SELECT * FROM pgjobs.reap(1000, %s)", [MIN_GRACE_MULTIPLIER]).fetchone()
    assert counts is not None and (counts["dead_workers"], counts["reset"]) == (0, 0)  # the edge is accepted
    assert one(conn, "SELECT status FROM pgjobs.workers WHERE id = 'w1'") == "running"
    assert job(conn, job_id)["status"] == "active"
    assert reap_as(conn, "w0")["leader"] is True
    assert one(conn, "SELECT * FROM pgjobs.reap_as('w0', 10, 1000, 1.5)") is True  # reap_as: the edge too
    silence(conn, "w1", 16)  # 1.6 heart rates
    assert conn.execute("SELECT * FROM pgjobs.reap(1000, 1.5)").fetchone()["dead_workers"] == 1  # type: ignore[index]


def test_reaper_config_holds_the_bounds_of_the_sql(conn: Conn) -> None:
    for bad, field in [
        ({"lease_ttl": MAX_LEASE_TTL + 0.5}, "lease_ttl"), ({"lease_ttl": 0}, "lease_ttl"),
        ({"lease_ttl": float("nan")}, "lease_ttl"), ({"grace_multiplier": 1.49}, "grace_multiplier"),
        ({"grace_multiplier": -1}, "grace_multiplier"), ({"grace_multiplier": float("inf")}, "grace_multiplier"),
        ({"interval": 0}, "interval"), ({"batch_size": 0}, "batch_size"),
    ]:  # fmt: skip
        with pytest.raises(pgjobs.ArgumentError, match=field):
            ReaperConfig(**bad)  # type: ignore[arg-type]
    edge = ReaperConfig(lease_ttl=MAX_LEASE_TTL, grace_multiplier=MIN_GRACE_MULTIPLIER)
    row = conn.execute(
        "SELECT * FROM pgjobs.reap_as('w0', %s, 1000, %s)", [edge.ttl, edge.grace_multiplier]
    ).fetchone()  # what Python accepts, the database accepts
    assert row is not None and row["leader"] is True
    assert ReaperConfig().ttl == 15  # 3 intervals ...
    assert ReaperConfig(interval=3600).ttl == MAX_LEASE_TTL  # ... within the bound


def test_workers_shows_the_leader(conn: Conn) -> None:
    register(conn, "w1")
    register(conn, "w2")
    take(conn, "w2")
    rows = _database.fetch(conn, _sql.query("worker_list"))
    assert sorted((r["id"], r["leader"]) for r in rows) == [("w1", False), ("w2", True)]
    expire(conn)
    assert not any(r["leader"] for r in _database.fetch(conn, _sql.query("worker_list")))


def churn(conn: Conn, n: int) -> None:
    """Enqueue, claim and complete n jobs: each leaves dead tuples behind."""
    conn.execute("SELECT pgjobs.enqueue_many(%s)", [Jsonb([{"task": "t"}] * n)])
    conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 1, 60)")
    ids = [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{default}', %s)", [n])]
    conn.execute("SELECT pgjobs.complete_many(%s)", [ids])


def manual_vacuums(conn: Conn) -> int:
    return int(one(conn, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'pgjobs.jobs_live'::regclass"))


def test_the_leader_vacuums_the_hot_jobs_table_once_enough_is_dead(dsn: str, conn: Conn) -> None:
    async def main() -> int:
        reaper = pgjobs.Reaper(dsn, pgjobs.ReaperConfig(vacuum_threshold=200))
        try:
            assert await reaper.run_once() is not None  # the leader
            for _ in range(100):  # statistics reach the counters a moment late
                if await reaper.vacuum_if_due():
                    return reaper.vacuums
                await asyncio.sleep(0.1)
            return reaper.vacuums
        finally:
            await reaper._pool.close()

    before = manual_vacuums(conn)
    churn(conn, 300)
    assert asyncio.run(main()) == 1
    assert manual_vacuums(conn) == before + 1


def test_a_role_that_does_not_own_the_table_leaves_vacuuming_to_autovacuum(login: Any, conn: Conn) -> None:
    worker = login("pgjobs_worker")
    churn(conn, 300)

    async def main() -> bool:
        reaper = pgjobs.Reaper(worker.info.dsn, pgjobs.ReaperConfig(vacuum_threshold=1))
        try:
            return await reaper.vacuum_if_due()
        finally:
            await reaper._pool.close()

    assert asyncio.run(main()) is False
