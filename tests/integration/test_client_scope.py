"""Clients stay apart: every function a pgjobs_client may run, called by one client on another
client's job, is refused or changes nothing and tells nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

import pgjobs

from .test_security import Conn

UNKNOWN = 2**40  # an id no job has


def job_row(conn: Conn, job_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row


def one(c: Conn, query: str, params: Any = None) -> Any:
    row = c.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def cancel(bob: Conn, alice_job: int, key: str) -> None:
    assert one(bob, "SELECT pgjobs.cancel(%s)", [alice_job]) is None
    assert one(bob, "SELECT pgjobs.cancel(%s)", [UNKNOWN]) is None  # the same answer: no oracle


def enqueue(bob: Conn, alice_job: int, key: str) -> None:
    mine = one(bob, "SELECT pgjobs.enqueue('t', key => %s)", [key])
    assert mine != alice_job
    assert one(bob, "SELECT pgjobs.enqueue('t', key => %s)", [key]) == mine  # dedupes among bob's own
    for parent in (alice_job, UNKNOWN):  # another's job is as unknown as one that never was
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="depends_on: names jobs that do not exist"):
            bob.execute("SELECT pgjobs.enqueue('t', depends_on => %s)", [[parent]])


def has_job(bob: Conn, alice_job: int, key: str) -> None:
    assert one(bob, "SELECT pgjobs.has_job(%s)", [key]) is False  # alice's key is not bob's


def enqueue_job(bob: Conn, alice_job: int, key: str) -> None:
    row = bob.execute("SELECT * FROM pgjobs.enqueue_job('t', key => %s)", [key]).fetchone()
    assert row is not None and row["id"] != alice_job and row["key"] == key


def enqueue_many(bob: Conn, alice_job: int, key: str) -> None:
    rows = bob.execute("SELECT * FROM pgjobs.enqueue_many(%s)", [Jsonb([{"task": "t", "key": key}])]).fetchall()
    assert [r["id"] for r in rows] != [alice_job]


def harmless(call: str) -> Callable[[Conn, int, str], None]:
    """A function that takes no job: it may be called, and cannot touch or reveal a job."""

    def check(bob: Conn, alice_job: int, key: str) -> None:
        bob.execute(call)

    return check


# Every function pgjobs_client may execute, and how a client could aim it at another's job. A new
# function granted to clients fails test_every_client_function_is_checked until it is added here.
CALLS: dict[str, Callable[[Conn, int, str], None]] = {
    "cancel": cancel,
    "enqueue": enqueue,
    "enqueue_job": enqueue_job,
    "enqueue_many": enqueue_many,
    "has_job": has_job,
    "queue_channel": harmless("SELECT pgjobs.queue_channel('default')"),
    "max_payload": harmless("SELECT pgjobs.max_payload()"),
    "worker_is_alive": harmless("SELECT pgjobs.worker_is_alive('w')"),
    # The announcement channels carry ids and statuses of every job (never arguments or results);
    # the security guide (docs/guides/security.md) says so.
    "listen": harmless("SELECT pgjobs.listen('pgjobs.done')"),
    "unlisten": harmless("SELECT pgjobs.unlisten('pgjobs.done')"),
    # Queue depths, never a job: the pressure signal producers read before they enqueue.
    "queue_pressure": harmless("SELECT * FROM pgjobs.queue_pressure()"),
}


def client_functions(conn: Conn) -> set[str]:
    rows = conn.execute(
        "SELECT DISTINCT p.proname AS name FROM pg_proc p WHERE p.pronamespace = 'pgjobs'::regnamespace"
        " AND has_function_privilege('pgjobs_client', p.oid, 'EXECUTE')"
    ).fetchall()
    return {r["name"] for r in rows}


def test_every_client_function_is_checked(conn: Conn) -> None:
    assert client_functions(conn) == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("status", ["queued", "active"])
def test_a_client_cannot_reach_another_clients_job(login: Any, conn: Conn, name: str, status: str) -> None:
    alice, bob = login("pgjobs_client"), login("pgjobs_client")
    key = "invoice-42"
    alice_job = one(alice, "SELECT pgjobs.enqueue('t', key => %s)", [key])
    if status == "active":
        conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
    before = job_row(conn, alice_job)
    CALLS[name](bob, alice_job, key)
    assert job_row(conn, alice_job) == before
    assert bob.execute("SELECT id FROM pgjobs.jobs WHERE id = %s", [alice_job]).fetchall() == []
    # alice's key still finds her own job, not one of bob's.
    assert one(alice, "SELECT pgjobs.enqueue('t', key => %s)", [key]) == alice_job


def test_a_client_still_cancels_its_own_and_a_worker_any(login: Any, conn: Conn) -> None:
    alice, worker = login("pgjobs_client"), login("pgjobs_worker")
    first = one(alice, "SELECT pgjobs.enqueue('t')")
    second = one(alice, "SELECT pgjobs.enqueue('t')")
    assert one(alice, "SELECT pgjobs.cancel(%s)", [first]) == "aborted"
    assert one(worker, "SELECT pgjobs.cancel(%s)", [second]) == "aborted"
    third = one(alice, "SELECT pgjobs.enqueue('t')")
    assert one(conn, "SELECT pgjobs.cancel(%s)", [third]) == "aborted"  # the owner, not a client


def test_keys_are_per_client(login: Any, conn: Conn) -> None:
    alice, bob = login("pgjobs_client"), login("pgjobs_client")
    a = one(alice, "SELECT pgjobs.enqueue('t', key => 'k')")
    b = one(bob, "SELECT pgjobs.enqueue('t', key => 'k')")
    assert a != b
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs WHERE key = 'k'") == 2
    with pytest.raises(psycopg.errors.UniqueViolation):  # one role, one unfinished job per key
        conn.execute("UPDATE pgjobs.jobs SET enqueued_by = %s WHERE id = %s", [job_row(conn, a)["enqueued_by"], b])


def test_wait_works_for_a_client_kept_off_the_channels(login: Any, conn: Conn, dsn: str) -> None:
    alice = login("pgjobs_client")
    job_id = one(alice, "SELECT pgjobs.enqueue('t')")
    conn.execute("REVOKE EXECUTE ON FUNCTION pgjobs.listen(text) FROM pgjobs_client")

    def finish() -> None:
        time.sleep(0.3)
        conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
        conn.execute("SELECT pgjobs.complete(%s)", [job_id])

    finisher = threading.Thread(target=finish)
    finisher.start()
    (job,) = pgjobs.wait([job_id], 10, dsn=make_conninfo(dsn, user=alice.info.user))
    finisher.join()
    assert job.status is pgjobs.JobStatus.COMPLETE


@pytest.mark.parametrize("limited", [False, True])
def test_groups_are_per_client_and_span_that_clients_queues(login: Any, conn: Conn, limited: bool) -> None:
    alice, bob = login("pgjobs_client"), login("pgjobs_client")
    if limited:  # settings take the other claim path: group slots and rate windows
        for queue in ("a", "b"):
            conn.execute("SELECT pgjobs.set_queue(%s, group_max_active => 1, group_rate_limit => 10, "
                         "group_rate_period => 60)", [queue])  # fmt: skip
    conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{a,b}', 10, 5)")
    first = one(alice, "SELECT pgjobs.enqueue('t', queue => 'a', group_key => 'customer:77')")
    assert [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{a,b}', 10)")] == [first]
    # Alice's group runs: her next job of it waits, in any queue; Bob's group of the same name does not.
    alice_next = one(alice, "SELECT pgjobs.enqueue('t', queue => 'b', group_key => 'customer:77')")
    bob_job = one(bob, "SELECT pgjobs.enqueue('t', queue => 'b', group_key => 'customer:77')")
    bob_next = one(bob, "SELECT pgjobs.enqueue('t', queue => 'a', group_key => 'customer:77')")
    claimed = [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{a,b}', 10)")]
    assert claimed == [bob_job] or claimed == [bob_next], claimed
    assert job_row(conn, alice_next)["status"] == "queued"
    conn.execute("SELECT pgjobs.complete(%s)", [first])
    assert [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{a,b}', 10)")] == [alice_next]
