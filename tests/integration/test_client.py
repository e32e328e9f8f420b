"""The Python client: enqueue options, JSON checks, transactions, async twins, waiting."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs import ArgumentError, Job, JobStatus

Conn = psycopg.Connection[dict[str, Any]]


@pgjobs.task(name="client.send", queue="mail", retries=4)
def send(to: str) -> None:
    pass


def test_enqueue_keyword_arguments_and_options(env_dsn: str) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    job = pgjobs.enqueue(
        "app.email", to="a@b.c", subject="hi", priority=-2, scheduled=when, group_key="u1", key="k",
        retries=0, timeout=dt.timedelta(seconds=90), heartbeat=5, retry_delay=3, retry_backoff=True,
        ttl=-1, meta={"who": "me"},
    )  # fmt: skip
    assert job.id is not None and job.status is JobStatus.QUEUED
    assert job.args == {"to": "a@b.c", "subject": "hi"}
    assert (job.priority, job.group_key, job.key, job.max_attempts) == (-2, "u1", "k", 1)
    assert job.scheduled_at == when
    assert (job.timeout, job.heartbeat, job.retry_delay, job.ttl) == (90, 5, 3, -1)
    assert math.isinf(job.retry_backoff) and job.meta == {"who": "me"}


def test_positional_arguments_and_explicit_args(env_dsn: str) -> None:
    assert pgjobs.enqueue("t", 1, "two", [3]).args == [1, "two", [3]]
    # args= lets a task take parameters named like enqueue's options
    assert pgjobs.enqueue("t", args={"queue": "q", "key": 1}).args == {"queue": "q", "key": 1}
    with pytest.raises(ArgumentError, match="not both"):
        pgjobs.enqueue("t", 1, x=2)
    with pytest.raises(ArgumentError, match="not both"):
        pgjobs.enqueue("t", 1, args=[2])


def test_delay_uses_the_database_clock(env_dsn: str, conn: Conn) -> None:
    job = pgjobs.enqueue("t", delay=120)
    row = conn.execute("SELECT extract(epoch FROM scheduled_at - now()) AS s FROM pgjobs.jobs").fetchone()
    assert row is not None and 119 < row["s"] <= 120
    assert job.duration("start") is None


def test_task_decorator_options_are_defaults(env_dsn: str) -> None:
    job = send.enqueue(to="x")
    assert (job.task, job.queue, job.max_attempts) == ("client.send", "mail", 5)
    assert send.enqueue(to="y", queue="other").queue == "other"
    assert send(to="direct") is None  # still callable as a plain function


def _contains_itself() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pgjobs.enqueue("t", when=dt.datetime.now()), "argument 'when' of task 't'"),
        (lambda: pgjobs.enqueue("t", 1, Decimal(2)), "positional argument 1 of task 't'"),
        (lambda: pgjobs.enqueue("t", x=float("nan")), "argument 'x'"),
        (lambda: pgjobs.enqueue("t", scheduled=dt.datetime(2030, 1, 1)), "timezone-aware"),
        (lambda: pgjobs.enqueue("t", retries=-1), "retries"),
        (lambda: pgjobs.enqueue("t", timeout="soon"), "timeout"),
        (lambda: pgjobs.enqueue("t", delay=1, scheduled=dt.datetime.now(dt.UTC)), "not both"),
        (lambda: pgjobs.enqueue("t", meta={"x": {1, 2}}), "meta"),
        (lambda: pgjobs.enqueue("t", x=_contains_itself()), "argument 'x' of task 't'.*contains itself"),
        (lambda: pgjobs.enqueue(42), "task must be a task name or a @task function"),
    ],
)
def test_values_json_cannot_carry_are_refused_before_anything_is_sent(
    env_dsn: str, conn: Conn, call: Any, match: str
) -> None:
    with pytest.raises(ArgumentError, match=match):
        call()
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.jobs").fetchone() == {"n": 0}


def test_database_refusals_surface_as_errors(env_dsn: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="queue"):
        pgjobs.enqueue("t", queue="no spaces please")


def test_enqueue_joins_the_callers_transaction(dsn: str, env_dsn: str, conn: Conn) -> None:
    with psycopg.connect(dsn) as mine:
        pgjobs.enqueue("t", conn=mine)
        mine.rollback()
        kept = pgjobs.enqueue("t", conn=mine)
        mine.commit()
    rows = conn.execute("SELECT id FROM pgjobs.jobs").fetchall()
    assert rows == [{"id": kept.id}]


def test_enqueue_many(env_dsn: str, conn: Conn) -> None:
    ids = pgjobs.enqueue_many([pgjobs.job("a", i, queue="bulk") for i in range(1000)] + [send.job(to="z")])
    assert len(ids) == 1001 and len(set(ids)) == 1001
    row = conn.execute("SELECT queue, max_attempts FROM pgjobs.jobs WHERE id = %s", [ids[-1]]).fetchone()
    assert row == {"queue": "mail", "max_attempts": 5}
    assert pgjobs.enqueue_many([]) == []


def test_enqueue_many_applies_the_options_a_batch_shares(env_dsn: str, conn: Conn) -> None:
    at = dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
    ids = pgjobs.enqueue_many(
        [pgjobs.job("a", n=i, queue="bulk", priority=-5, scheduled=at, retries=0) for i in range(50)]
    )
    rows = conn.execute(
        "SELECT args, queue, priority, scheduled_at, max_attempts FROM pgjobs.jobs WHERE id = ANY (%s) ORDER BY id",
        [ids],
    ).fetchall()
    assert [r["args"] for r in rows] == [{"n": i} for i in range(50)]
    assert {(r["queue"], r["priority"], r["scheduled_at"], r["max_attempts"]) for r in rows} == {("bulk", -5, at, 1)}


def test_enqueue_reads_the_job_as_stored_column_for_field(env_dsn: str, conn: Conn) -> None:
    from dataclasses import fields

    from pgjobs import _sql

    job = pgjobs.enqueue("t", 1, meta={"m": 1}, retry_backoff=True, delay=60)
    assert job == pgjobs.get_job(job.id) and job.status is JobStatus.QUEUED and job.meta == {"m": 1}
    cur = conn.execute(_sql.query("job_enqueue"), {**pgjobs.job("t").params(), "on_full": "error"})
    assert [c.name for c in cur.description or []] == [f.name for f in fields(Job) if not f.name.startswith("_")]


def test_enqueue_many_keeps_each_jobs_own_options(env_dsn: str, conn: Conn) -> None:
    at = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ids = pgjobs.enqueue_many(
        [
            pgjobs.job("a", 1, 2, scheduled=at, meta={"m": 1}, retry_backoff=True, group_key="g"),
            pgjobs.job("b", x="y", delay=3600, retries=0, ttl=-1, key="k", timeout=2.5),
            pgjobs.job("c"),
        ]
    )
    rows = {r["id"]: r for r in conn.execute("SELECT *, scheduled_at - enqueued_at AS ahead FROM pgjobs.jobs")}
    a, b, c = (rows[i] for i in ids)
    assert (a["task"], a["args"], a["scheduled_at"], a["meta"], a["group_key"]) == ("a", [1, 2], at, {"m": 1}, "g")
    assert a["retry_backoff"] == math.inf and b["retry_backoff"] == c["retry_backoff"] == 3600
    assert (b["args"], b["max_attempts"], b["ttl"], b["key"], b["timeout"]) == ({"x": "y"}, 1, -1, "k", 2.5)
    assert dt.timedelta(minutes=59) < b["ahead"] <= dt.timedelta(hours=1)
    assert (c["args"], c["meta"], c["max_attempts"], c["key"], c["group_key"]) == ({}, {}, 3, None, None)
    assert pgjobs.enqueue_many([pgjobs.job("b", key="k")]) == [ids[1]]


def test_async_twins(dsn: str, env_dsn: str) -> None:
    async def main() -> None:
        job = await pgjobs.enqueue_async("t", x=1)
        assert job.id is not None
        assert (await pgjobs.get_job_async(job.id)) == job
        ids = await pgjobs.enqueue_many_async([pgjobs.job("t", y=i) for i in range(3)])
        assert len(ids) == 3
        async with await psycopg.AsyncConnection.connect(dsn) as mine:
            await pgjobs.enqueue_async("t", conn=mine)
            await mine.rollback()
        assert await pgjobs.cancel_async(job.id) is JobStatus.ABORTED
        await pgjobs.close_async()

    asyncio.run(main())


def test_cancel_and_get_job(env_dsn: str) -> None:
    job = pgjobs.enqueue("t")
    assert job.id is not None
    assert pgjobs.cancel(job.id) is JobStatus.ABORTED
    assert job.refresh().status is JobStatus.ABORTED and job.finished
    assert pgjobs.cancel(10**12) is None
    assert pgjobs.get_job(10**12) is None


def test_refresh_until_complete_waits_for_the_completion_notification(env_dsn: str, conn: Conn) -> None:
    job = pgjobs.enqueue("t")
    assert job.id is not None

    def finish_later() -> None:
        with psycopg.connect(env_dsn, autocommit=True) as other:
            other.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
            other.execute("""SELECT pg_sleep(0.3), pgjobs.complete(%s, '"done"')""", [job.id])

    import threading

    t = threading.Thread(target=finish_later)
    t.start()
    job.refresh(until_complete=10)
    t.join()
    assert job.status is JobStatus.COMPLETE and job.result == "done"
    assert job.duration("process") is not None and job.duration("total") is not None


@pytest.mark.timeout(20)  # without its re-checks, wait() would never return
def test_wait_sees_a_job_that_finished_without_an_announcement(env_dsn: str, conn: Conn) -> None:
    job = pgjobs.enqueue("t")
    assert job.id is not None

    def finish_quietly() -> None:
        with psycopg.connect(env_dsn, autocommit=True) as other:
            other.execute("SELECT pg_sleep(0.3)")
            other.execute("UPDATE pgjobs.jobs SET status = 'complete', completed_at = now() WHERE id = %s", [job.id])

    import threading

    t = threading.Thread(target=finish_quietly)
    t.start()
    [waited] = pgjobs.wait([job.id], dsn=env_dsn)
    t.join()
    assert waited.status is JobStatus.COMPLETE


def test_refresh_until_complete_times_out(env_dsn: str) -> None:
    job = pgjobs.enqueue("t")
    with pytest.raises(TimeoutError):
        job.refresh(until_complete=0.2)
    assert job.status is JobStatus.QUEUED


def test_a_database_without_the_schema_gets_a_clear_error(empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGJOBS_DSN", empty_dsn)
    pgjobs.close()
    with pytest.raises(pgjobs.SchemaError, match="pgjobs migrate"):
        pgjobs.enqueue("t")


def test_a_wrong_dsn_gets_one_clear_line_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGJOBS_DSN", "postgresql://me:s3cret@127.0.0.1:1/nowhere?connect_timeout=2")
    pgjobs.close()
    with pytest.raises(pgjobs.ConfigurationError) as err:
        pgjobs.enqueue("t")
    message = str(err.value)
    assert "s3cret" not in message and "cannot connect" in message and "\n" not in message
