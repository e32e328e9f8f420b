"""What an operator does to jobs by hand: retry, retry every failed one, delete."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs import JobStatus

Conn = psycopg.Connection[dict[str, Any]]


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def failed_job(conn: Conn, **options: Any) -> int:
    names = "".join(f", {k} => %({k})s" for k in options)
    job_id = one(conn, f"SELECT pgjobs.enqueue('t', max_attempts => 1{names})", options)
    conn.execute("SELECT * FROM pgjobs.dequeue('w', ARRAY[%s], 1)", [options.get("queue", "default")])
    conn.execute("SELECT pgjobs.fail(%s, 'boom')", [job_id])
    return int(job_id)


def test_retry_puts_a_failed_job_from_history_back_in_its_queue(conn: Conn, dsn: str) -> None:
    job_id = failed_job(conn)
    conn.execute("SELECT * FROM pgjobs.reap()")  # it moves to history
    assert one(conn, "SELECT tableoid::regclass::text FROM pgjobs.jobs WHERE id = %s", [job_id]) != "pgjobs.jobs_live"
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgjobs.queue.default"')
        assert one(conn, "SELECT pgjobs.retry(%s)", [job_id]) == "queued"
        assert len(list(listener.notifies(timeout=1, stop_after=1))) == 1
    row = conn.execute("SELECT * FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    assert (row["status"], row["attempts"], row["max_attempts"], row["completed_at"]) == ("queued", 1, 2, None)
    assert one(conn, "SELECT pgjobs.retry(%s)", [job_id]) is None  # queued: nothing to retry
    assert [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{default}', 5)")] == [job_id]


def test_retry_of_a_job_whose_key_is_taken_again_says_so(conn: Conn) -> None:
    job_id = failed_job(conn, key="invoice-7")
    one(conn, "SELECT pgjobs.enqueue('t', key => 'invoice-7')")
    with pytest.raises(psycopg.errors.UniqueViolation, match="key invoice-7"):
        conn.execute("SELECT pgjobs.retry(%s)", [job_id])
    assert one(conn, "SELECT status FROM pgjobs.jobs WHERE id = %s", [job_id]) == "failed"


def test_retry_failed_takes_a_queue_and_a_task(conn: Conn) -> None:
    a, b = failed_job(conn), failed_job(conn, queue="mail")
    assert one(conn, "SELECT pgjobs.retry_failed(queue => 'mail')") == 1
    assert one(conn, "SELECT status FROM pgjobs.jobs WHERE id = %s", [b]) == "queued"
    assert one(conn, "SELECT pgjobs.retry_failed(task => 'other')") == 0
    assert one(conn, "SELECT pgjobs.retry_failed()") == 1
    assert one(conn, "SELECT status FROM pgjobs.jobs WHERE id = %s", [a]) == "queued"


def test_delete_refuses_a_running_job(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t')")
    conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cancel it first"):
        conn.execute("SELECT pgjobs.delete_job(%s)", [job_id])
    conn.execute("SELECT pgjobs.complete(%s)", [job_id])
    assert one(conn, "SELECT pgjobs.delete_job(%s)", [job_id]) is True
    assert one(conn, "SELECT pgjobs.delete_job(%s)", [job_id]) is False
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_python_admin_calls(env_dsn: str, conn: Conn) -> None:
    job_id = failed_job(conn)
    assert [j.id for j in pgjobs.jobs(status="failed")] == [job_id]
    assert pgjobs.retry(job_id) is JobStatus.QUEUED
    assert pgjobs.retry(job_id) is None
    assert pgjobs.retry_failed() == 0
    assert pgjobs.delete_job(job_id) is True
    assert pgjobs.jobs() == []
