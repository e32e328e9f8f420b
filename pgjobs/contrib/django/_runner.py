"""The worker's side: Django tasks as pgjobs tasks, found by their ``module_path`` (the job's task name)."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from traceback import format_exception
from types import ModuleType
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import close_old_connections, connections
from django.utils.module_loading import module_has_submodule

from ... import tasks as pgjobs_tasks
from ...job import Job
from ._compat import (
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    normalize_json,
    task_finished,
    task_started,
)
from ._mapping import decode_arguments, exception_class_path, find_task

logger = logging.getLogger("pgjobs.contrib.django")


def _running_result(task: Task, job: Job) -> TaskResult:
    """The TaskResult of a run in progress, for the task's context and Django's signals."""
    args, kwargs = decode_arguments(job.args)
    return TaskResult(
        task=task,
        id=str(job.id),
        status=TaskResultStatus.RUNNING,
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        finished_at=None,
        last_attempted_at=job.started_at,
        args=args,
        kwargs=kwargs,
        backend=task.backend,
        errors=[],
        worker_ids=[job.worker_id or ""] * job.attempts,
    )


def _finished(result: TaskResult, status: str, value: Any = None) -> None:
    object.__setattr__(result, "status", TaskResultStatus[status])
    if status == "SUCCESSFUL":
        object.__setattr__(result, "_return_value", value)
    task_finished.send(type(result.task.get_backend()), task_result=result)


def _failed(result: TaskResult, exc: BaseException) -> None:
    """Tell Django's signals; the worker stores the traceback, whose last section names the class."""
    error = TaskError(exception_class_path=exception_class_path(exc), traceback="".join(format_exception(exc)))
    result.errors.append(error)
    _finished(result, "FAILED")


def _prepare(task: Task, job: Job) -> tuple[TaskResult, list[Any], dict[str, Any]]:
    result = _running_result(task, job)
    args = [TaskContext(task_result=result), *result.args] if task.takes_context else list(result.args)
    task_started.send(type(task.get_backend()), task_result=result)
    return result, args, result.kwargs


def as_pgjobs_task(task: Task) -> pgjobs_tasks.Task[..., Any]:
    """A Django task as a pgjobs task of the same name (its ``module_path``): it unpacks the job's
    arguments, passes the context to ``takes_context`` tasks, sends Django's task_started and
    task_finished signals, and closes the database connections the run opened."""
    func: Callable[..., Any]
    if inspect.iscoroutinefunction(task.func):

        async def run_async(job: Job, *_: Any, **__: Any) -> Any:
            await sync_to_async(close_old_connections)()
            result, args, kwargs = _prepare(task, job)
            try:
                value = normalize_json(await task.func(*args, **kwargs))
            except BaseException as exc:
                _failed(result, exc)
                raise
            finally:
                await sync_to_async(close_old_connections)()
            _finished(result, "SUCCESSFUL", value)
            return value

        func = run_async
    else:

        def run(job: Job, *_: Any, **__: Any) -> Any:
            # A run has a thread (or a child process) of its own: its connections end with it.
            try:
                result, args, kwargs = _prepare(task, job)
                try:
                    value = normalize_json(task.func(*args, **kwargs))
                except BaseException as exc:
                    _failed(result, exc)
                    raise
                _finished(result, "SUCCESSFUL", value)
                return value
            finally:
                connections.close_all()

        func = run
    func.__qualname__ = func.__name__ = task.func.__name__
    # The process executor's children import this module to learn the task (see _child).
    func.__module__ = f"{__package__}._child"
    return pgjobs_tasks.Task(func=func, name=task.module_path, pass_job=True)


def discover(modules: list[ModuleType] | None = None) -> dict[str, Task]:
    """The Django tasks of every installed app's ``tasks`` module (imported here) and of the given
    modules, by module path."""
    found: dict[str, Task] = {}
    scanned = list(modules or [])
    for app in apps.get_app_configs():
        if module_has_submodule(app.module, "tasks"):
            scanned.append(importlib.import_module(f"{app.name}.tasks"))
    for module in scanned:
        for value in vars(module).values():
            if isinstance(value, Task) and value.func.__module__ == module.__name__:
                found[value.module_path] = value
    return found


class DjangoTasks(Mapping[str, pgjobs_tasks.Task[..., Any]]):
    """What the worker runs: the pgjobs tasks registered in this process, the Django tasks found at
    start, and any other Django task the first time a job names its module path."""

    def __init__(self, django_tasks: Mapping[str, Task], *, lazy_executor: pgjobs_tasks.Executor | None = None) -> None:
        self._tasks: dict[str, pgjobs_tasks.Task[..., Any]] = {
            name: as_pgjobs_task(t) for name, t in django_tasks.items()
        }
        self._missing: set[str] = set()
        # Tasks found after the start run here: a process executor's children know only what they
        # imported at start.
        self._lazy_executor = lazy_executor

    def __getitem__(self, name: str) -> pgjobs_tasks.Task[..., Any]:
        found = pgjobs_tasks.registry.get(name) or self._tasks.get(name)
        if found is not None:
            return found
        if name not in self._missing:
            task = find_task(name)
            if task is not None:
                wrapped = as_pgjobs_task(task)
                wrapped.executor = self._lazy_executor
                self._tasks[name] = wrapped
                logger.info("task %s: found the Django task at its module path", name)
                return wrapped
            self._missing.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(pgjobs_tasks.registry), **dict.fromkeys(self._tasks)})

    def __len__(self) -> int:
        return len(set(pgjobs_tasks.registry) | set(self._tasks))
