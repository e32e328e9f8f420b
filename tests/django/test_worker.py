"""`django-admin pgjobs_worker` runs the project's tasks: results, errors, context, async, retries."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from django.db import transaction
from django.test import AsyncClient

from .conftest import WorkerProcess, sql, start_worker, wait_finished
from .project.later import shout
from .project.tasks import Boom, add, count_jobs, describe, double, fail, flaky, greet, where

try:
    from django.tasks import TaskResultStatus, task_backends
except ImportError:  # Django 5.2
    from django_tasks import TaskResultStatus, task_backends


def test_a_committed_enqueue_runs_and_its_result_is_seen(worker: WorkerProcess) -> None:
    with transaction.atomic():
        result = add.enqueue(2, 3)
    wait_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert result.worker_ids == [worker.id] and result.attempts == 1 and result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert add.get_result(result.id).return_value == 5


def test_positional_and_keyword_arguments_reach_the_task(worker: WorkerProcess) -> None:
    assert wait_finished(greet.enqueue("ada", greeting="hi")).return_value == "hi, ada"


def test_a_failing_task_fails_with_its_exception(worker: WorkerProcess) -> None:
    result = wait_finished(fail.enqueue("it broke"))
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is Boom
    assert error.exception_class_path == "tests.django.project.tasks.Boom"
    assert "Traceback (most recent call last)" in error.traceback
    assert error.traceback.rstrip().endswith("tests.django.project.tasks.Boom: it broke")
    assert result.attempts == 1 and result.worker_ids == [worker.id] and result.finished_at is not None
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018


def test_a_task_that_takes_context_gets_its_result(worker: WorkerProcess) -> None:
    result = wait_finished(describe.enqueue("x"))
    assert result.return_value == {"attempt": 1, "id": result.id, "status": "RUNNING", "tag": "x"}


def test_retries_follow_the_backends_job_options(worker: WorkerProcess) -> None:
    result = wait_finished(flaky.using(backend="retrying").enqueue())
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 2
    assert result.attempts == 2 and result.backend == "retrying"
    (error,) = result.errors  # the first attempt's
    assert error.exception_class is Boom and "first attempt" in error.traceback


def test_a_task_reads_the_database_through_djangos_connection(worker: WorkerProcess) -> None:
    assert wait_finished(count_jobs.enqueue(count_jobs.module_path)).return_value == 1


def test_a_task_outside_the_tasks_modules_is_found_by_its_module_path(worker: WorkerProcess) -> None:
    assert wait_finished(shout.enqueue("hey")).return_value == "HEY"


def test_a_job_naming_a_module_outside_the_apps_fails_unrun(worker: WorkerProcess) -> None:
    (job_id,) = sql("SELECT pgjobs.enqueue('tests.django.outside.hidden', '[]')")[0]
    for _ in range(600):
        status, error = sql("SELECT status::text, error FROM pgjobs.jobs WHERE id = %s", [job_id])[0]
        if status == "failed":
            break
        time.sleep(0.05)
    assert status == "failed" and "unknown task 'tests.django.outside.hidden'" in error


def test_aenqueue_from_an_async_view_and_aget_result(worker: WorkerProcess) -> None:
    async def scenario() -> tuple[str, object]:
        response = await AsyncClient().get("/double/21")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "READY"
        backend = task_backends["default"]
        for _ in range(600):
            result = await backend.aget_result(body["id"])
            if result.is_finished:
                return body["id"], result
            await asyncio.sleep(0.05)
        raise AssertionError("the async task did not finish")

    result_id, result = asyncio.run(scenario())
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 42  # type: ignore[attr-defined]
    assert double.get_result(result_id).return_value == 42


def test_the_process_executor_runs_django_tasks_in_child_processes(django_dsn: str) -> None:
    w = start_worker("-q", "processes", "--executor", "process", "--no-reaper")
    try:
        started = time.monotonic()
        result = wait_finished(where.using(queue_name="processes").enqueue(), timeout=60)
        assert result.status == TaskResultStatus.SUCCESSFUL, result.errors
        assert result.return_value not in (w.proc.pid, os.getpid())
        failed = wait_finished(fail.using(queue_name="processes").enqueue("in a child"))
        assert failed.errors[0].exception_class is Boom
        assert time.monotonic() - started < 60
    finally:
        w.stop()
    assert w.proc.returncode == 0
