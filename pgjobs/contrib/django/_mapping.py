"""How Django's tasks and pgjobs' jobs correspond: priorities, arguments, statuses, errors, results."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import apps
from django.utils.module_loading import import_string

from ._compat import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskError, TaskResult, TaskResultStatus

# pgjobs statuses as Django's: waiting for parents, queued (due, scheduled or awaiting a retry)
# are READY; a run in progress, or one asked to stop, is RUNNING.
STATUSES: dict[str, str] = {
    "waiting": "READY",
    "queued": "READY",
    "active": "RUNNING",
    "aborting": "RUNNING",
    "complete": "SUCCESSFUL",
    "failed": "FAILED",
    "aborted": "FAILED",
}

# The line of a traceback that names the exception: "module.Class: message", or "Class" (builtins).
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")
_TRACEBACK = "Traceback (most recent call last):"
# The class of failures that no exception of the task caused (a timeout, a cancel, a crash).
OTHER_FAILURE = "pgjobs.errors.PgjobsError"


def find_task(name: str) -> Task | None:
    """The Django task a job names by its module path, or None. Only a module already imported or
    one of an installed app is imported: a job's name (which any client may write) never makes a
    process import code from elsewhere."""
    module = name.rpartition(".")[0]
    if module not in sys.modules and apps.get_containing_app_config(name) is None:
        return None
    try:
        found = import_string(name)
    except ImportError:
        return None
    return found if isinstance(found, Task) else None


def to_pgjobs_priority(priority: int) -> int:
    """Django's priority (-100..100, larger runs sooner) as pgjobs' (lower runs first)."""
    return -priority


def to_django_priority(priority: int) -> int:
    """pgjobs' priority as Django's; one outside Django's range (a job enqueued by other means)
    is clamped to it."""
    return int(max(TASK_MIN_PRIORITY, min(TASK_MAX_PRIORITY, -priority)))


def encode_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A Django task's arguments as the job's JSON: ``{"args": [...], "kwargs": {...}}``, one object
    that keeps both kinds (a pgjobs job stores one array or one object)."""
    try:
        return json.dumps({"args": list(args), "kwargs": dict(kwargs)}, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the arguments of a task must be JSON: {exc}") from None


def decode_arguments(stored: Any) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments from a job's JSON: the object encode_arguments() writes; an
    array (positional) or any other object (keyword) from a job enqueued by other means."""
    if isinstance(stored, list):
        return list(stored), {}
    if (
        isinstance(stored, dict)
        and set(stored) == {"args", "kwargs"}
        and isinstance(stored["args"], list)
        and isinstance(stored["kwargs"], dict)
    ):
        return list(stored["args"]), dict(stored["kwargs"])
    if isinstance(stored, dict):
        return [], dict(stored)
    raise TypeError(f"a job's arguments are a JSON array or object, got {type(stored).__name__}")


def exception_class_path(exc: BaseException) -> str:
    """``module.QualifiedName`` of an exception's class, as Django's TaskError holds it."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def task_error(error: str) -> TaskError:
    """A stored error as Django's TaskError. The class is read from the traceback the worker stored:
    the first line after the frames of its last section (the exception raised, after any it was
    raised from); an error that is no traceback (the run was stopped, its process died, the task
    is unknown) has pgjobs' own error class."""
    lines = error.split("\n")
    starts = [i for i, line in enumerate(lines) if line == _TRACEBACK]
    path = OTHER_FAILURE
    if starts:
        after = (line for line in lines[starts[-1] + 1 :] if not line.startswith(" "))
        found = _EXCEPTION_LINE.match(next(after, ""))
        if found is not None:
            path = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"
    return TaskError(exception_class_path=path, traceback=error)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def task_result(task: Task, row: Mapping[str, Any], backend: str) -> TaskResult:
    """A job (a row of the django_job_get query) as Django's TaskResult of that task."""
    status = row["status"]
    finished = status in ("complete", "failed", "aborted")
    args, kwargs = decode_arguments(_json(row["args"]))
    attempts = int(row["attempts"])
    result = TaskResult(
        task=task,
        id=str(row["id"]),
        status=TaskResultStatus[STATUSES[status]],
        enqueued_at=row["enqueued_at"],
        started_at=row["started_at"],
        finished_at=row["completed_at"] if finished else None,
        last_attempted_at=row["started_at"],
        args=args,
        kwargs=kwargs,
        backend=backend,
        errors=[task_error(row["error"])] if row["error"] else [],
        # pgjobs keeps the worker of the latest attempt only: one entry per attempt, so that
        # TaskResult.attempts counts them (empty while a retry waits for its worker).
        worker_ids=[row["worker_id"] or ""] * attempts,
    )
    if status == "complete":
        object.__setattr__(result, "_return_value", _json(row["result"]))
    return result
