"""Exceptions raised by pgjobs."""

from __future__ import annotations


class PgjobsError(Exception):
    """Base class of every error pgjobs raises on purpose."""


class ConfigurationError(PgjobsError):
    """The database cannot be reached or configured (a wrong DSN, no embedded server)."""


class DatabaseUnavailable(ConfigurationError):
    """The database does not answer now (down, starting, out of connection slots, out of reach);
    a later attempt may succeed."""


class SchemaError(PgjobsError):
    """The pgjobs schema is missing or older than this version of pgjobs expects."""


class ArgumentError(PgjobsError, ValueError):
    """A job's arguments, options or result cannot be stored as given."""


class QueueFull(PgjobsError):
    """A queue with a maximum depth (``max_queued``, see set_queue) refused jobs: nothing of the call
    was enqueued; or, for enqueue_many with ``on_full="wait"``, ``ids`` holds the id of each job
    enqueued before the time ran out and None for each still refused."""

    #: The SQLSTATE of pgjobs' refusal in SQL.
    SQLSTATE = "PJ001"

    def __init__(self, message: str, ids: list[int | None] | None = None) -> None:
        super().__init__(message)
        self.ids = ids


class UnknownTaskError(PgjobsError, LookupError):
    """No task of that name is registered."""


class JobCancelled(PgjobsError):
    """The worker stopped this run (``job.update()`` in a task whose run was stopped; see Job.cancelled)."""


class JobException(PgjobsError):
    """Jobs an embedded worker ran failed for good; ``failures`` holds (job id, task, error)."""

    def __init__(self, failures: list[tuple[int, str, str | None]]) -> None:
        self.failures = failures
        lines = [f"job {job_id} {task}: {_last_line(error)}" for job_id, task, error in failures]
        super().__init__(f"{len(failures)} job(s) failed:\n" + "\n".join(lines))


def _last_line(error: str | None) -> str:
    """The last line of a traceback: the exception and its message."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else "failed"
