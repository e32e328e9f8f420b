"""pgjobs: a PostgreSQL-native work queue for Python and for any language that speaks SQL."""

from ._database import redact, resolve_dsn
from .client import (
    JobRequest,
    cancel,
    cancel_async,
    close,
    close_async,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
    get_job,
    get_job_async,
    job,
    wait,
    wait_async,
)
from .errors import ArgumentError, ConfigurationError, PgjobsError, SchemaError, UnknownTaskError
from .job import Job, JobStatus
from .migrations import migrate
from .tasks import Task, task
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "ConfigurationError",
    "Job",
    "JobRequest",
    "JobStatus",
    "PgjobsError",
    "SchemaError",
    "Task",
    "UnknownTaskError",
    "Worker",
    "cancel",
    "cancel_async",
    "close",
    "close_async",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
    "get_job",
    "get_job_async",
    "job",
    "migrate",
    "redact",
    "resolve_dsn",
    "task",
    "wait",
    "wait_async",
]
