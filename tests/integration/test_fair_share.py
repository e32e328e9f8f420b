"""Fair queues: claims shared between tenants by weight, for every client of the SQL API."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgjobs

Conn = psycopg.Connection[dict[str, Any]]


def enqueue(conn: Conn, tenant: str | None, n: int, queue: str = "fair", **options: Any) -> list[int]:
    extra = "".join(f", {k} => %({k})s" for k in options)
    rows = conn.execute(
        f"SELECT pgjobs.enqueue('t', queue => %(queue)s, tenant => %(tenant)s{extra}) AS id"
        " FROM generate_series(1, %(n)s)",
        {"queue": queue, "tenant": tenant, "n": n, **options},
    ).fetchall()
    return [r["id"] for r in rows]


def claim(conn: Conn, n: int, queue: str = "fair", worker: str = "w1") -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM pgjobs.dequeue(%s, %s, %s)", [worker, [queue], n]).fetchall()


def shares(rows: list[dict[str, Any]]) -> Counter[str | None]:
    return Counter(r["tenant"] for r in rows)


def make_fair(conn: Conn, queue: str = "fair", **weights: float) -> None:
    conn.execute("SELECT pgjobs.set_queue(%s, fair => true)", [queue])
    for tenant, weight in weights.items():
        conn.execute("SELECT pgjobs.set_tenant(%s, %s, %s)", [queue, tenant, weight])


def test_tenants_with_due_jobs_share_the_claims_by_weight(conn: Conn) -> None:
    make_fair(conn, c=2)
    enqueue(conn, "a", 300)
    enqueue(conn, "b", 300)
    enqueue(conn, "c", 300)
    got = shares(claim(conn, 40))
    assert got == {"a": 10, "b": 10, "c": 20}
    got += shares(claim(conn, 7)) + shares(claim(conn, 33))
    assert got == {"a": 20, "b": 20, "c": 40}


def test_without_fairness_the_oldest_backlog_goes_first(conn: Conn) -> None:
    enqueue(conn, "a", 100)
    enqueue(conn, "b", 10)
    assert shares(claim(conn, 50)) == {"a": 50}


def test_a_tenant_alone_gets_everything_and_unused_share_goes_to_the_others(conn: Conn) -> None:
    make_fair(conn, b=5)
    enqueue(conn, "a", 100)
    assert shares(claim(conn, 30)) == {"a": 30}  # work-conserving: alone, it takes all
    enqueue(conn, "b", 3)
    assert shares(claim(conn, 20)) == {"a": 17, "b": 3}  # b's share beyond its 3 jobs is a's


def test_a_tenant_that_arrives_late_gets_its_share_at_once_and_no_credit_for_its_absence(conn: Conn) -> None:
    make_fair(conn)
    enqueue(conn, "a", 500)
    assert shares(claim(conn, 100)) == {"a": 100}
    enqueue(conn, "b", 50)
    got = shares(claim(conn, 20))
    assert got["b"] in (10, 11) and got["a"] + got["b"] == 20


def test_priorities_order_a_tenants_own_jobs(conn: Conn) -> None:
    make_fair(conn)
    low = enqueue(conn, "a", 5, priority=5)
    high = enqueue(conn, "a", 5, priority=-5)
    enqueue(conn, "b", 10)
    rows = claim(conn, 10)
    assert sorted(r["id"] for r in rows if r["tenant"] == "a") == high
    assert not set(low) & {r["id"] for r in rows}


def test_jobs_without_a_tenant_are_one_more_tenant(conn: Conn) -> None:
    make_fair(conn)
    enqueue(conn, None, 50)
    enqueue(conn, "a", 50)
    enqueue(conn, "b", 50)
    assert shares(claim(conn, 30)) == {None: 10, "a": 10, "b": 10}
    conn.execute("SELECT pgjobs.set_tenant('fair', '', 4)")  # '' names the unnamed tenant
    assert shares(claim(conn, 12)) == {None: 8, "a": 2, "b": 2}


def test_a_weight_applies_at_the_next_claim(conn: Conn) -> None:
    make_fair(conn)
    enqueue(conn, "a", 100)
    enqueue(conn, "b", 100)
    assert shares(claim(conn, 10)) == {"a": 5, "b": 5}
    row = conn.execute("SELECT * FROM pgjobs.set_tenant('fair', 'b', 4)").fetchone()
    assert row is not None and row["weight"] == 4
    assert shares(claim(conn, 10)) == {"a": 2, "b": 8}


def test_max_active_pause_groups_and_rates_still_hold_on_a_fair_queue(conn: Conn) -> None:
    make_fair(conn)
    conn.execute("SELECT pgjobs.set_queue('fair', max_active => 6)")
    enqueue(conn, "a", 20, group_key="ga")  # one group: one run at a time
    enqueue(conn, "b", 20)
    first = claim(conn, 10)
    assert len(first) == 6
    assert shares(first) == {"a": 1, "b": 5}  # a's group has room for one; b takes the rest
    assert claim(conn, 10, worker="w2") == []
    conn.execute("SELECT pgjobs.complete(%s)", [first[0]["id"]])
    conn.execute("SELECT pgjobs.set_queue('fair', paused => true)")
    assert claim(conn, 10) == []
    conn.execute("SELECT pgjobs.set_queue('fair', paused => false, max_active => 0, rate_limit => 3, rate_period => 9)")
    assert len(claim(conn, 10)) == 3
    assert claim(conn, 10) == []


def test_claims_in_a_transaction_that_rolls_back_move_no_tenant_on(dsn: str, conn: Conn) -> None:
    make_fair(conn)
    enqueue(conn, "a", 50)
    enqueue(conn, "b", 50)
    with psycopg.connect(dsn) as tx:
        assert len(tx.execute("SELECT * FROM pgjobs.dequeue('w1', '{fair}', 10)").fetchall()) == 10
        tx.rollback()
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.queue_tenants WHERE pass > 0").fetchone() == {"n": 0}
    assert shares(claim(conn, 10)) == {"a": 5, "b": 5}


def test_the_reaper_forgets_tenants_that_hold_nothing_the_clock_does_not(conn: Conn) -> None:
    make_fair(conn, b=3)
    enqueue(conn, "a", 4)
    enqueue(conn, "b", 30)
    enqueue(conn, "c", 30)
    claim(conn, 20)  # a runs out
    claim(conn, 20)  # b and c go on, past a's pass
    conn.execute("SELECT * FROM pgjobs.reap()")
    left = {r["tenant"]: r for r in conn.execute("SELECT * FROM pgjobs.queue_tenants").fetchall()}
    assert set(left) == {"b", "c"}  # a: weight 1, behind the clock; b keeps its weight, c is ahead
    enqueue(conn, "a", 30)
    got = shares(claim(conn, 10))  # a comes back at the clock: neither credit nor debt
    assert sum(got.values()) == 10 and got["a"] >= 1


def test_tenants_are_checked_and_weights_are_the_operators(conn: Conn, login: Any) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="tenant: must be NULL or non-empty"):
        enqueue(conn, "", 1)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="weight: must be between"):
        conn.execute("SELECT pgjobs.set_tenant('fair', 'a', 0)")
    client = login("pgjobs_client")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        client.execute("SELECT pgjobs.set_tenant('fair', 'a', 100)")
    worker = login("pgjobs_worker")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker.execute("SELECT pgjobs.set_tenant('fair', 'a', 100)")
    admin = login("pgjobs_admin")
    admin.execute("SELECT pgjobs.set_tenant('fair', 'a', 100)")


def test_python_sets_fair_queues_weights_and_tenants(env_dsn: str) -> None:
    q = pgjobs.set_queue("fair", fair=True)
    assert q.fair is True
    t = pgjobs.set_tenant("fair", "acme", 2)
    assert (t.tenant, t.weight) == ("acme", 2)
    job = pgjobs.enqueue("t", queue="fair", tenant="acme")
    assert job.tenant == "acme"
    ids = pgjobs.enqueue_many([pgjobs.job("t", queue="fair", tenant=f"t{i % 3}") for i in range(6)])
    assert [j.tenant for j in pgjobs.jobs(queue="fair")][::-1][1:] == [f"t{i % 3}" for i in range(6)]
    assert len(ids) == 6
    assert [t.tenant for t in pgjobs.tenants("fair")] == ["acme"]
    assert pgjobs.set_queue("fair", fair=False).fair is False


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    weights=st.lists(st.sampled_from([0.5, 1, 1, 2, 3, 5]), min_size=2, max_size=5),
    batches=st.lists(st.integers(1, 25), min_size=1, max_size=12),
)
def test_backlogged_tenants_never_drift_apart_by_more_than_a_job_each(
    conn: Conn, weights: list[float], batches: list[int]
) -> None:
    """Start-time fair queuing's bound: while tenants i and j both have due jobs, the jobs each
    was given, divided by its weight, differ by at most 1/w_i + 1/w_j after every claim."""
    conn.execute("DELETE FROM pgjobs.jobs; DELETE FROM pgjobs.queue_tenants; DELETE FROM pgjobs.queue_settings")
    tenants = {f"t{i}": w for i, w in enumerate(weights)}
    make_fair(conn, **tenants)
    for t in tenants:
        enqueue(conn, t, sum(batches))  # none runs out
    served: Counter[str | None] = Counter()
    for n in batches:
        got = shares(claim(conn, n))
        assert sum(got.values()) == n  # work-conserving
        served += got
        for i, wi in tenants.items():
            for j, wj in tenants.items():
                assert abs(served[i] / wi - served[j] / wj) <= 1 / wi + 1 / wj + 1e-9, (served, tenants)


def test_a_finished_jobs_tenant_stays_with_it_in_history(conn: Conn) -> None:
    (job_id,) = enqueue(conn, "acme", 1)
    claim(conn, 1)
    conn.execute("SELECT pgjobs.complete(%s)", [job_id])
    conn.execute("SELECT * FROM pgjobs.reap()")
    row = conn.execute("SELECT tableoid::regclass::text AS part, tenant FROM pgjobs.jobs WHERE id = %s", [job_id])
    moved = row.fetchone()
    assert moved is not None and moved["part"].startswith("pgjobs.jobs_done_") and moved["tenant"] == "acme"
