"""A Worker in this process against a real database: running, retrying, stopping, reconnecting."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
import pytest

import pgjobs
from pgjobs import Job, JobStatus

Conn = psycopg.Connection[dict[str, Any]]


@pgjobs.task(name="w.add")
def add(a: int, b: int) -> int:
    return a + b


@pgjobs.task(name="w.echo")
async def echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


@pgjobs.task(name="w.boom", retry_delay=0)
def boom() -> None:
    raise ValueError("boom")


@pgjobs.task(name="w.nap")
async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


@pgjobs.task(name="w.sync_nap")
def sync_nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


@pgjobs.task(name="w.unstorable")
def unstorable() -> object:
    return object()


@pgjobs.task(name="w.whoami", pass_job=True)
def whoami(job: Job, suffix: str) -> str:
    return f"{job.id}{suffix}"


def run_with_worker(dsn: str, body: Callable[[pgjobs.Worker], Coroutine[Any, Any, Any]], **options: Any) -> Any:
    """Run body while a Worker works; stop it afterwards and return what body returned."""

    async def main() -> Any:
        worker = pgjobs.Worker(dsn, **{"poll_interval": 0.2, **options})
        running = asyncio.create_task(worker.run())
        try:
            return await body(worker)
        finally:
            worker.stop()
            await running

    return asyncio.run(main())


def process(dsn: str, requests: list[pgjobs.JobRequest], timeout: float = 30, **options: Any) -> list[Job]:
    async def body(_: pgjobs.Worker) -> list[Job]:
        ids = await pgjobs.enqueue_many_async(requests)
        return await pgjobs.wait_async(ids, timeout, dsn=dsn)

    return run_with_worker(dsn, body, **options)


def test_sync_and_async_tasks_complete_with_their_results(env_dsn: str) -> None:
    jobs = process(
        env_dsn,
        [pgjobs.job(add, 2, 3), pgjobs.job(echo, value={"a": [1]}), pgjobs.job(whoami, suffix="!")],
    )
    assert [j.status for j in jobs] == [JobStatus.COMPLETE] * 3
    assert jobs[0].result == 5 and jobs[1].result == {"a": [1]} and jobs[2].result == f"{jobs[2].id}!"
    assert all(j.attempts == 1 and j.completed_at for j in jobs)


def test_a_task_receives_its_arguments_exactly_as_they_were_enqueued(env_dsn: str) -> None:
    # Integers past 64 bits, floats, text beyond ASCII: a faster JSON parser must not round any of
    # them (orjson alone reads 2**70 as a float).
    value = {
        "big": 2**70, "small": -(2**64) - 1, "digits": "1234567890123456789012", "int64": 2**63 - 1,
        "floats": [0.1, -2.25, 12345.678, 1.5e-7], "text": "é\u2028😀", "nested": [{"a": None, "b": True}],
    }  # fmt: skip
    [done] = process(env_dsn, [pgjobs.job(echo, value=value)])
    assert done.result == value
    assert type(done.result["big"]) is int and type(done.result["small"]) is int


def test_a_failing_task_is_retried_then_failed_with_its_traceback(env_dsn: str) -> None:
    (job,) = process(env_dsn, [pgjobs.job(boom, retries=2)])
    assert job.status is JobStatus.FAILED and job.attempts == 3
    assert job.error is not None and "ValueError: boom" in job.error and "Traceback" in job.error


def test_an_unknown_task_fails_its_job_without_retry_and_the_worker_goes_on(env_dsn: str) -> None:
    unknown, known = process(env_dsn, [pgjobs.job("no.such.task", retries=5), pgjobs.job(add, 1, 1)])
    assert unknown.status is JobStatus.FAILED and unknown.attempts == 1
    assert unknown.error is not None and "unknown task 'no.such.task'" in unknown.error
    assert known.status is JobStatus.COMPLETE


def test_a_result_json_cannot_carry_fails_the_job(env_dsn: str) -> None:
    (job,) = process(env_dsn, [pgjobs.job(unstorable)])
    assert job.status is JobStatus.FAILED and job.attempts == 1
    assert job.error is not None and "result" in job.error


_running_now = 0


@pgjobs.task(name="w.count_running")
async def count_running() -> int:
    global _running_now
    _running_now += 1
    try:
        seen = _running_now
        await asyncio.sleep(0.1)
        return max(seen, _running_now)
    finally:
        _running_now -= 1


def test_concurrency_bounds_the_jobs_running_at_once(env_dsn: str) -> None:
    jobs = process(env_dsn, [pgjobs.job(count_running) for _ in range(8)], concurrency=3)
    assert all(j.status is JobStatus.COMPLETE for j in jobs)
    assert max(j.result for j in jobs) == 3


def test_a_notification_wakes_an_idle_worker(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> list[Job]:
        await asyncio.sleep(0.5)  # idle, with the next poll 60 s away
        job = await pgjobs.enqueue_async(add, 1, 2)
        return await pgjobs.wait_async([job.id], 20, dsn=env_dsn)  # type: ignore[list-item]

    (job,) = run_with_worker(env_dsn, body, poll_interval=60)
    assert job.status is JobStatus.COMPLETE


_gate = threading.Event()


@pgjobs.task(name="w.gated")
def gated() -> str:
    _gate.wait(30)
    return "through"


def test_a_worker_with_no_free_slot_waits_without_spinning_and_claims_once_one_frees(env_dsn: str) -> None:
    """A notification that comes while every slot is taken is kept for when one frees, not spun on
    (a spin that on Python 3.12 froze the event loop, so that a stopping worker never stopped)."""
    _gate.clear()

    async def body(_: pgjobs.Worker) -> tuple[float, list[Job], float]:
        first = await pgjobs.enqueue_async(gated)
        assert first.id is not None
        for _ in range(200):
            if (await pgjobs.get_job_async(first.id)).status is JobStatus.ACTIVE:
                break
            await asyncio.sleep(0.05)
        second = await pgjobs.enqueue_async(add, 1, 2)  # its notification wakes the worker, which has no slot
        began = time.process_time()
        await asyncio.sleep(1.0)
        spent = time.process_time() - began
        _gate.set()
        freed = time.monotonic()
        jobs = await pgjobs.wait_async([first.id, second.id], 20, dsn=env_dsn)  # type: ignore[list-item]
        return spent, jobs, time.monotonic() - freed

    spent, jobs, took = run_with_worker(env_dsn, body, concurrency=1, poll_interval=60)
    assert spent < 0.5, f"the worker spun: {spent:.2f} s of CPU in 1 s with nothing to do"
    assert [j.status for j in jobs] == [JobStatus.COMPLETE, JobStatus.COMPLETE]
    assert took < 10  # the second job was claimed when the slot freed, not at the next poll (60 s)


def test_polling_finds_a_job_whose_notification_was_lost(env_dsn: str, conn: Conn) -> None:
    async def body(_: pgjobs.Worker) -> list[Job]:
        await asyncio.sleep(0.3)
        row = conn.execute("INSERT INTO pgjobs.jobs (task, args) VALUES ('w.add', '[1, 1]') RETURNING id").fetchone()
        assert row is not None
        return await pgjobs.wait_async([row["id"]], 20, dsn=env_dsn)

    (job,) = run_with_worker(env_dsn, body, poll_interval=0.2)
    assert job.status is JobStatus.COMPLETE and job.result == 2


def test_a_worker_runs_a_dag_parents_first(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> list[Job]:
        first = pgjobs.job(echo, "extract")
        left, right = pgjobs.job(echo, "left", depends_on=[first]), pgjobs.job(echo, "right", depends_on=[first])
        last = pgjobs.job(echo, "load", depends_on=[left, right])
        ids = await pgjobs.enqueue_many_async([first, left, right, last])
        return await pgjobs.wait_async(ids, 20, dsn=env_dsn)

    jobs = run_with_worker(env_dsn, body)
    assert [j.status for j in jobs] == [JobStatus.COMPLETE] * 4
    extract, left, right, load = jobs
    assert extract.completed_at is not None and load.started_at is not None
    assert left.started_at is not None and right.started_at is not None
    assert extract.completed_at <= left.started_at and extract.completed_at <= right.started_at
    assert max(left.completed_at, right.completed_at) <= load.started_at  # type: ignore[type-var]


def test_stop_lets_running_jobs_finish(env_dsn: str) -> None:
    async def body(worker: pgjobs.Worker) -> int:
        job = await pgjobs.enqueue_async(nap, 0.5)
        # Stop once the job runs (a worker whose registry holds process tasks starts its pool first).
        for _ in range(200):
            if (await pgjobs.get_job_async(job.id)).status is JobStatus.ACTIVE:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.05)
        return job.id  # type: ignore[return-value]

    job_id = run_with_worker(env_dsn, body, shutdown_grace=10)
    job = pgjobs.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETE and job.result == "rested"


def test_jobs_claimed_while_stop_is_called_still_run_and_complete(env_dsn: str) -> None:
    # The job is enqueued in a transaction that holds the table: the worker's claim waits for it,
    # stop() comes while the claim is in flight, then the claim returns the job.
    async def body(worker: pgjobs.Worker) -> int:
        async with (
            await psycopg.AsyncConnection.connect(env_dsn) as lock,
            await psycopg.AsyncConnection.connect(env_dsn, autocommit=True) as watch,
        ):
            await lock.execute("LOCK TABLE pgjobs.jobs_live IN ACCESS EXCLUSIVE MODE")
            job = await pgjobs.enqueue_async(nap, 0.2, conn=lock)
            for _ in range(200):
                cur = await watch.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE query LIKE '%complete_and_dequeue%' AND wait_event_type = 'Lock'"
                )
                if (await cur.fetchone() or (0,))[0]:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the worker's claim never waited on the lock")
            worker.stop()
            await asyncio.sleep(0.3)
        return job.id  # type: ignore[return-value]

    # Heartbeats wait on the lock too: they get a connection of their own.
    job_id = run_with_worker(env_dsn, body, shutdown_grace=10, connections=2, reaper=None, scheduler=None)
    job = pgjobs.get_job(job_id)
    assert job is not None and job.status is JobStatus.COMPLETE and job.result == "rested"


@pytest.mark.parametrize("task", [nap, sync_nap])
def test_jobs_still_running_after_the_grace_period_go_back_to_the_queue(env_dsn: str, task: Any) -> None:
    async def body(worker: pgjobs.Worker) -> int:
        job = await task.enqueue_async(3)
        for _ in range(100):
            if (await pgjobs.get_job_async(job.id)).status is JobStatus.ACTIVE:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.05)
        return job.id  # type: ignore[no-any-return]

    job_id = run_with_worker(env_dsn, body, shutdown_grace=0.2)
    job = pgjobs.get_job(job_id)
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0 and job.worker_id is None


def test_the_worker_refuses_a_database_without_the_schema(empty_dsn: str) -> None:
    with pytest.raises(pgjobs.SchemaError, match="pgjobs migrate"):
        asyncio.run(pgjobs.Worker(empty_dsn).run())


def test_the_worker_reconnects_when_its_connections_are_killed(env_dsn: str, conn: Conn) -> None:
    async def body(_: pgjobs.Worker) -> list[Job]:
        first = await pgjobs.enqueue_async(add, 1, 1)
        await pgjobs.wait_async([first.id], 20, dsn=env_dsn)  # type: ignore[list-item]
        killed = conn.execute(
            """SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()"""
        ).fetchone()
        assert killed is not None and killed["n"] >= 3
        await pgjobs.close_async()
        ids = await pgjobs.enqueue_many_async([pgjobs.job(add, i, 1) for i in range(20)])
        return await pgjobs.wait_async(ids, 30, dsn=env_dsn)

    jobs = run_with_worker(env_dsn, body, poll_interval=0.2)
    assert [j.status for j in jobs] == [JobStatus.COMPLETE] * 20


def test_arguments_are_not_logged_at_info_only_at_debug_when_asked(
    env_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgjobs")
    process(env_dsn, [pgjobs.job(echo, value="secret-at-info")])
    assert "secret-at-info" not in caplog.text and "w.echo" in caplog.text
    caplog.clear()
    process(env_dsn, [pgjobs.job(echo, value="secret-at-debug")], log_args=True)
    debug = [r for r in caplog.records if "secret-at-debug" in r.getMessage()]
    assert debug and all(r.levelno == logging.DEBUG for r in debug)


def test_nul_characters_in_a_result_are_replaced_and_the_job_completes(env_dsn: str) -> None:
    (job,) = process(env_dsn, [pgjobs.job(echo, value="a\\u0000b")])
    assert job.status is JobStatus.COMPLETE and job.result == "a\\u0000b"
    (job,) = process(env_dsn, [pgjobs.job(nul_result)])
    assert job.status is JobStatus.COMPLETE and job.result == {"k\ufffd": "v\ufffd"}


@pgjobs.task(name="w.nul_result")
def nul_result() -> dict[str, str]:
    return {"k\x00": "v\x00"}
