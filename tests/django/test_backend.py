"""The backend on a real database, no worker: enqueue in transactions, priorities, statuses, results."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings

import pgjobs
from pgjobs.contrib.django import PgjobsBackend
from pgjobs.contrib.django._compat import InvalidTask, TaskResultDoesNotExist
from pgjobs.contrib.django._mapping import (
    decode_arguments,
    encode_arguments,
    task_error,
    to_django_priority,
    to_pgjobs_priority,
)

from .conftest import sql
from .project.tasks import add, describe, fail, greet

try:
    from django.tasks import TaskResultStatus, task_backends
    from django.tasks.exceptions import TaskResultMismatch
except ImportError:  # Django 5.2
    from django_tasks import TaskResultStatus, task_backends
    from django_tasks.exceptions import TaskResultMismatch


class Rollback(Exception):
    pass


def job_row(result_id: str) -> dict[str, Any]:
    rows = sql("SELECT task, args, queue, priority, scheduled_at, max_attempts FROM pgjobs.jobs WHERE id = %s",
               [int(result_id)])  # fmt: skip
    assert len(rows) == 1
    rows = [tuple(json.loads(v) if k == 1 else v for k, v in enumerate(rows[0]))]  # Django reads jsonb as text
    return dict(zip(["task", "args", "queue", "priority", "scheduled_at", "max_attempts"], rows[0], strict=True))


def test_the_backend_says_what_pgjobs_supports() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, PgjobsBackend)
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority
    assert backend.check() == []


def test_enqueue_stores_a_job_named_by_module_path_with_args_and_kwargs() -> None:
    result = greet.enqueue("ada", greeting="hi")
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs, result.backend) == (["ada"], {"greeting": "hi"}, "default")
    assert result.enqueued_at is not None and result.started_at is None and result.finished_at is None
    assert result.errors == [] and result.worker_ids == [] and result.attempts == 0
    row = job_row(result.id)
    assert row["task"] == "tests.django.project.tasks.greet" == greet.module_path
    assert row["args"] == {"args": ["ada"], "kwargs": {"greeting": "hi"}}
    assert (row["queue"], row["max_attempts"]) == ("default", 1)  # no retries unless JOB_OPTIONS says
    again = greet.get_result(result.id)
    assert (again.id, again.status) == (result.id, TaskResultStatus.READY)
    assert (again.args, again.kwargs) == (["ada"], {"greeting": "hi"})
    assert again.task.func is greet.func and again.enqueued_at == result.enqueued_at
    with pytest.raises(TaskResultMismatch):
        add.get_result(result.id)


def test_a_job_enqueued_in_a_rolled_back_atomic_does_not_exist() -> None:
    with pytest.raises(Rollback), transaction.atomic():
        result = add.enqueue(1, 2)
        assert job_row(result.id)["task"] == add.module_path  # there, inside the transaction
        raise Rollback
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result(result.id)
    assert sql("SELECT count(*) FROM pgjobs.jobs WHERE id = %s", [int(result.id)]) == [(0,)]


def test_a_job_enqueued_in_atomic_exists_for_others_once_it_commits(django_dsn: str) -> None:
    def seen_elsewhere(result_id: str) -> bool:
        with psycopg.connect(django_dsn) as other:
            return other.execute("SELECT 1 FROM pgjobs.jobs WHERE id = %s", [int(result_id)]).fetchone() is not None

    with transaction.atomic():
        result = add.enqueue(2, 3)
        assert not seen_elsewhere(result.id)  # it went through Django's connection, in its transaction
    assert seen_elsewhere(result.id)
    assert add.get_result(result.id).status == TaskResultStatus.READY


def test_a_separate_dsn_enqueues_outside_djangos_transactions() -> None:
    separate = add.using(backend="separate", queue_name="manual")
    with pytest.raises(Rollback), transaction.atomic():
        result = separate.enqueue(4, 5)
        raise Rollback
    found = task_backends["separate"].get_result(result.id)  # committed on its own
    assert (found.args, found.backend, found.status) == ([4, 5], "separate", TaskResultStatus.READY)


@pytest.mark.parametrize("priority", [-100, -1, 0, 1, 100])
def test_priorities_map_both_ways(priority: int) -> None:
    assert to_django_priority(to_pgjobs_priority(priority)) == priority
    result = add.using(priority=priority, queue_name="manual").enqueue(1, 1)
    assert job_row(result.id)["priority"] == to_pgjobs_priority(priority)
    assert add.get_result(result.id).task.priority == priority


def test_larger_django_priorities_are_claimed_first() -> None:
    ids = {p: add.using(priority=p, queue_name="priorities").enqueue(0, p).id for p in (-100, 0, 100, 7)}
    claimed = [sql("SELECT id FROM pgjobs.dequeue('prio', '{priorities}', 1)")[0][0] for _ in ids]
    assert [str(i) for i in claimed] == [ids[100], ids[7], ids[0], ids[-100]]
    assert to_pgjobs_priority(100) < to_pgjobs_priority(0) < to_pgjobs_priority(-100)


def test_pgjobs_priorities_outside_djangos_range_are_clamped() -> None:
    assert (to_django_priority(-5000), to_django_priority(5000)) == (100, -100)
    (job_id,) = sql("SELECT pgjobs.enqueue(%s, '[1, 2]', queue => 'manual', priority => -5000)", [add.module_path])[0]
    found = add.get_result(str(job_id))
    assert found.task.priority == 100 and found.args == [1, 2] and found.kwargs == {}


def test_run_after_is_the_jobs_scheduled_time() -> None:
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    result = add.using(run_after=when, queue_name="manual").enqueue(1, 2)
    assert job_row(result.id)["scheduled_at"] == when
    assert result.status == TaskResultStatus.READY
    assert sql("SELECT count(*) FROM pgjobs.dequeue('defer', '{manual}', 10) WHERE id = %s", [int(result.id)]) == [(0,)]


def _enqueue(retrying: bool = False) -> int:
    return int(add.using(queue_name="manual", backend="retrying" if retrying else "default").enqueue(1, 2).id)


def _claim(job_id: int) -> None:
    # Other tests' jobs may wait in the queue: claim until this one is active.
    for _ in range(1000):
        if not sql("SELECT id FROM pgjobs.dequeue('by-hand', '{manual}', 100)"):
            break
        if sql("SELECT status::text FROM pgjobs.jobs WHERE id = %s", [job_id]) == [("active",)]:
            return
    raise AssertionError(f"job {job_id} was not claimed")


def _waiting() -> int:
    parent = _enqueue()
    return int(sql("SELECT pgjobs.enqueue(%s, '{}', queue => 'manual', depends_on => ARRAY[%s]::bigint[])",
                   [add.module_path, parent])[0][0])  # fmt: skip


def _active(retrying: bool = False) -> int:
    job_id = _enqueue(retrying)
    _claim(job_id)
    return job_id


def _then(job_id: int, statement: str, *params: Any) -> int:
    sql(statement, [job_id, *params])
    return job_id


TRACEBACK = 'Traceback (most recent call last):\n  File "t.py", line 1, in <module>\nValueError: nope\n'

# pgjobs status -> how to get a job there, and the Django status it shows.
STATUSES: dict[str, tuple[Callable[[], int], str]] = {
    "queued": (_enqueue, "READY"),
    "waiting": (_waiting, "READY"),
    "queued for a retry": (lambda: _then(_active(retrying=True), "SELECT pgjobs.fail(%s, %s)", TRACEBACK), "READY"),
    "active": (_active, "RUNNING"),
    "aborting": (lambda: _then(_active(), "SELECT pgjobs.cancel(%s)"), "RUNNING"),
    "complete": (lambda: _then(_active(), "SELECT pgjobs.complete(%s, '{\"sum\": 3}')"), "SUCCESSFUL"),
    "failed": (lambda: _then(_active(), "SELECT pgjobs.fail(%s, %s, retry => false)", TRACEBACK), "FAILED"),
    "aborted": (lambda: _then(_enqueue(), "SELECT pgjobs.cancel(%s)"), "FAILED"),
}


@pytest.mark.parametrize("state", list(STATUSES))
def test_each_pgjobs_status_maps_onto_djangos(state: str) -> None:
    make, expected = STATUSES[state]
    job_id = make()
    (status,) = sql("SELECT status::text FROM pgjobs.jobs WHERE id = %s", [job_id])[0]
    assert status == state.split()[0]
    result = add.get_result(str(job_id))
    assert result.status == TaskResultStatus[expected]
    assert result.is_finished == (expected in ("SUCCESSFUL", "FAILED"))
    assert (result.finished_at is not None) == result.is_finished
    if state in ("active", "aborting", "complete", "failed"):
        assert result.worker_ids == ["by-hand"] and result.attempts == 1
        assert result.started_at is not None and result.last_attempted_at == result.started_at
    if state == "complete":
        assert result.return_value == {"sum": 3}
    else:
        with pytest.raises(ValueError):
            result.return_value  # noqa: B018
    if state in ("failed", "queued for a retry"):
        (error,) = result.errors
        assert error.exception_class_path == "builtins.ValueError" and error.exception_class is ValueError
        assert error.traceback == TRACEBACK
    if state == "queued for a retry":
        assert result.attempts == 1 and result.worker_ids == [""]  # the next worker is not known yet


def test_unknown_ids_and_other_tasks_jobs_have_no_result() -> None:
    backend = task_backends["default"]
    for missing in ("nope", "", "999999999"):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(missing)
    (job_id,) = sql("SELECT pgjobs.enqueue('some.other.task', '{}', queue => 'manual')")[0]
    with pytest.raises(TaskResultDoesNotExist, match="not a Django task"):
        backend.get_result(str(job_id))


def test_a_job_never_makes_a_process_import_a_module_outside_the_apps() -> None:
    (job_id,) = sql("SELECT pgjobs.enqueue('tests.django.outside.hidden', '[]', queue => 'manual')")[0]
    with pytest.raises(TaskResultDoesNotExist, match="not a Django task"):
        task_backends["default"].get_result(str(job_id))
    assert "tests.django.outside" not in sys.modules


def test_errors_keep_the_exception_class() -> None:
    chained = (
        "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n    g()\nKeyError: 'x'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n  File \"a.py\", line 3, in f\n    raise Boom('a')\n    ^^^^\n"
        "tests.django.project.tasks.Boom: a message\nover: two lines\nA note\n"
    )
    error = task_error(chained)
    assert error.exception_class_path == "tests.django.project.tasks.Boom" and error.traceback == chained
    assert task_error("Traceback (most recent call last):\nKeyError: 'x'\n").exception_class is KeyError
    bare = task_error('Traceback (most recent call last):\n  File "a.py"\nStopIteration\n')
    assert bare.exception_class is StopIteration
    stopped = task_error("cancelled while running")
    assert stopped.exception_class is pgjobs.PgjobsError and stopped.traceback == "cancelled while running"


def test_arguments_keep_both_kinds_and_read_jobs_enqueued_by_other_means() -> None:
    assert decode_arguments(json.loads(encode_arguments([1, "a"], {"k": None}))) == ([1, "a"], {"k": None})
    assert decode_arguments([1, 2]) == ([1, 2], {})
    assert decode_arguments({"to": "a@b.c"}) == ([], {"to": "a@b.c"})
    assert decode_arguments({"args": [1], "kwargs": {}, "more": 1}) == ([], {"args": [1], "kwargs": {}, "more": 1})
    with pytest.raises(TypeError, match="JSON"):
        add.enqueue(dt.datetime.now(dt.UTC), 1)


def test_validate_task_refuses_what_pgjobs_cannot_store() -> None:
    with pytest.raises(InvalidTask):
        add.using(queue_name="not-listed")
    with pytest.raises(InvalidTask):
        add.using(run_after=dt.datetime(2030, 1, 1))  # naive with USE_TZ
    listed = {"default": {"BACKEND": "pgjobs.contrib.django.PgjobsBackend", "QUEUES": ["a b"]}}
    with override_settings(TASKS=listed), pytest.raises(InvalidTask, match="1-48 characters"):
        add.using(queue_name="a b")
    assert describe.takes_context and fail.module_path.endswith(".fail")


def test_unknown_options_and_a_database_that_is_not_there_are_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABSE"):
        PgjobsBackend("x", {"OPTIONS": {"DATABSE": "default"}})
    with pytest.raises(ImproperlyConfigured, match="retires"):
        PgjobsBackend("x", {"OPTIONS": {"JOB_OPTIONS": {"retires": 3}}})
    (error,) = PgjobsBackend("x", {"OPTIONS": {"DATABASE": "elsewhere"}}).check()
    assert "elsewhere" in error.msg
