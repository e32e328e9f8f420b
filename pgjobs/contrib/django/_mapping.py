"""How Django's tasks and pgjobs' jobs correspond: priorities, arguments, statuses, errors, results."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

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

# The last line of a traceback the worker stores for a Django task: the exception's class path
# (a note the task runner adds, so that no message text can be mistaken for it).
EXCEPTION_NOTE = "pgjobs.contrib.django: exception class "
# What a standard traceback's last line starts with: "module.Class: message" or "Class".
_LAST_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")
# The class of failures that no exception of the task caused (a timeout, a cancel, a crash).
OTHER_FAILURE = "pgjobs.errors.PgjobsError"


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
    """A stored error as Django's TaskError: the class from the note the runner added, or from the
    last line of a plain traceback, else pgjobs' own error class (the run was stopped, its
    process died, the task is unknown…)."""
    lines = error.rstrip("\n").split("\n")
    last = lines[-1]
    if last.startswith(EXCEPTION_NOTE):
        path, traceback = last[len(EXCEPTION_NOTE) :].strip(), "\n".join(lines[:-1]) + "\n"
    else:
        traceback = error
        found = _LAST_LINE.match(last) if error.startswith("Traceback") else None
        path = OTHER_FAILURE if found is None else found.group(1)
        if "." not in path:
            path = f"builtins.{path}"
    return TaskError(exception_class_path=path, traceback=traceback)


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
