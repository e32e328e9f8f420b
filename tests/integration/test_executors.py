"""Executors of a Worker in this process: a stopped thread gets JobCancelled; child processes run
jobs with their arguments, job and progress, and are replaced after --max-jobs-per-child."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry

import pgjobs
from pgjobs import Job, JobStatus
from pgjobs.metrics import WorkerMetrics
from pgjobs.tasks import registry

from .test_worker import run_with_worker

_thread_saw: list[str] = []


@pgjobs.task(name="exec.loop", pass_job=True)
def loop_in_python(job: Job) -> str:
    """Loops in Python code (no blocking call) until something stops it."""
    n = 0
    try:
        while True:
            n += 1
    except pgjobs.JobCancelled as exc:
        _thread_saw.append(str(exc))
        raise


@pytest.fixture
def process_tasks() -> Iterator[ModuleType]:
    """tests.integration.executor_tasks, its tasks kept out of this process's registry."""
    from . import executor_tasks

    for t in executor_tasks.ALL:
        registry.pop(t.name, None)
    yield executor_tasks


def _thread_alive(name: str) -> bool:
    return any(t.name == name for t in threading.enumerate())


def test_a_cancelled_thread_task_gets_job_cancelled_and_its_thread_ends(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> tuple[Job, float]:
        job = await loop_in_python.enqueue_async()
        assert job.id is not None
        name = f"pgjobs-job-{job.id}"  # the thread of its run
        while not _thread_alive(name):
            await asyncio.sleep(0.02)
        asked = time.monotonic()
        await pgjobs.cancel_async(job.id)
        (done,) = await pgjobs.wait_async([job.id], 10, dsn=env_dsn)
        while _thread_alive(name):
            assert time.monotonic() - asked < 5, "the thread still runs"
            await asyncio.sleep(0.02)
        return done, time.monotonic() - asked

    _thread_saw.clear()
    done, took = run_with_worker(env_dsn, body, heart_rate=30, tasks={"exec.loop": loop_in_python})
    assert done.status is JobStatus.ABORTED and took < 5
    assert _thread_saw == [f"job {done.id}: cancelled while running"]


def test_process_tasks_get_their_arguments_job_and_progress(env_dsn: str, process_tasks: ModuleType) -> None:
    progress, pid, boom = process_tasks.progress, process_tasks.pid, process_tasks.boom

    async def body(_: pgjobs.Worker) -> list[Job]:
        ids = await pgjobs.enqueue_many_async([progress.job("é\u2603"), pid.job(tag="x"), boom.job(retries=0)])
        return await pgjobs.wait_async(ids, 30, dsn=env_dsn)

    tasks = {t.name: t for t in (progress, pid, boom)}
    updated, plain, failed = run_with_worker(env_dsn, body, tasks=tasks, concurrency=2)
    assert updated.status is JobStatus.COMPLETE, updated.error
    assert updated.result["touched"] is True and updated.result["id"] == updated.id
    assert updated.result["attempts"] == 1 and updated.result["queue"] == "default"
    assert updated.result["pid"] != os.getpid()
    assert updated.meta == {"label": "é\u2603"}  # progress is 1 once complete
    assert plain.status is JobStatus.COMPLETE and plain.result[1] == "x" and plain.result[0] != os.getpid()
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert "Traceback" in failed.error and failed.error.strip().endswith("ValueError: boom in a child")


def test_a_child_is_replaced_after_max_jobs_per_child(env_dsn: str, process_tasks: ModuleType) -> None:
    pid = process_tasks.pid

    async def body(_: pgjobs.Worker) -> list[Job]:
        jobs = []
        for i in range(5):  # one after another: a single child would serve them all
            job = await pid.enqueue_async(str(i))
            assert job.id is not None
            jobs += await pgjobs.wait_async([job.id], 30, dsn=env_dsn)
        return jobs

    metrics = WorkerMetrics(CollectorRegistry())
    jobs = run_with_worker(env_dsn, body, tasks={"exec.pid": pid}, concurrency=1, max_jobs_per_child=2, metrics=metrics)
    pids = [j.result[0] for j in jobs]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids
    assert metrics.child_restarts.labels("max_jobs")._value.get() == 2


def test_a_task_in_main_is_refused_by_the_process_executor(env_dsn: str) -> None:
    def in_main() -> None:
        pass

    in_main.__module__ = "__main__"
    task = pgjobs.Task(func=in_main, name="exec.in_main", executor="process")
    with pytest.raises(pgjobs.ConfigurationError, match="defined in __main__"):
        asyncio.run(pgjobs.Worker(env_dsn, tasks={"exec.in_main": task}).run())
