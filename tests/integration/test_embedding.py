"""A worker embedded in an application: started beside it, stopped with it, its failures reported."""

from __future__ import annotations

import asyncio

import pytest

import pgjobs


@pgjobs.task(name="embed.double")
def double(x: int) -> int:
    return 2 * x


@pgjobs.task(name="embed.broken", retries=0)
async def broken() -> None:
    raise RuntimeError("no such invoice")


def test_a_worker_in_a_thread_runs_the_apps_jobs_and_reports_what_failed(env_dsn: str) -> None:
    worker = pgjobs.Worker(env_dsn, poll_interval=0.2)
    worker.start(timeout=30)
    try:
        ok = pgjobs.enqueue(double, x=21)
        bad = pgjobs.enqueue(broken)
        pgjobs.drain(["default"], timeout=30)
    finally:
        worker.request_stop()
    with pytest.raises(pgjobs.JobException) as raised:
        worker.wait_until_done(timeout=30)
    assert [(i, t) for i, t, _ in raised.value.failures] == [(bad.id, "embed.broken")]
    assert "RuntimeError: no such invoice" in str(raised.value)
    done = pgjobs.get_job(ok.id)  # type: ignore[arg-type]
    assert done is not None and done.result == 42


def test_a_worker_on_the_apps_event_loop(env_dsn: str) -> None:
    async def app() -> int:
        worker = pgjobs.Worker(env_dsn, poll_interval=0.2)
        await worker.start_async()
        job = await pgjobs.enqueue_async(double, x=4)
        await pgjobs.drain_async(["default"], timeout=30)
        worker.request_stop()
        await worker.wait_until_done_async(timeout=30)  # nothing failed: no exception
        done = await pgjobs.get_job_async(job.id)  # type: ignore[arg-type]
        assert done is not None
        return int(done.result)

    assert asyncio.run(app()) == 8


def test_a_worker_that_cannot_start_says_why_at_start(env_dsn: str) -> None:
    worker = pgjobs.Worker(env_dsn + " dbname=no_such_database_here", startup_timeout=5)
    with pytest.raises(pgjobs.PgjobsError, match="no_such_database_here"):
        worker.start(timeout=30)


def test_drain_gives_up_after_its_timeout(env_dsn: str) -> None:
    pgjobs.enqueue(double, x=1)
    with pytest.raises(TimeoutError, match="unfinished"):
        pgjobs.drain(["default"], timeout=0.3)
