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
