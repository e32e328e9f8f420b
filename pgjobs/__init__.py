"""pgjobs: a PostgreSQL-native work queue for Python and for any language that speaks SQL."""

from ._database import redact, resolve_dsn
from .client import (
    Event,
    JobRequest,
    cancel,
    cancel_async,
    close,
    close_async,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
    events,
    events_async,
    get_job,
    get_job_async,
    is_alive,
    is_alive_async,
    job,
    reap,
    reap_async,
    stop_worker,
    stop_worker_async,
    wait,
    wait_async,
)
from .errors import ArgumentError, ConfigurationError, JobCancelled, PgjobsError, SchemaError, UnknownTaskError
from .job import Job, JobStatus
from .migrations import migrate
from .queue import Queue, queues, queues_async, set_queue, set_queue_async
from .reaper import ReapCounts, Reaper, ReaperConfig
from .schedules import BackfillSummary, Schedule, Scheduler, SchedulerConfig, backfill, periodic
from .tasks import Task, task
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BackfillSummary",
    "ConfigurationError",
    "Event",
    "Job",
    "JobCancelled",
    "JobRequest",
    "JobStatus",
    "PgjobsError",
    "Queue",
    "ReapCounts",
    "Reaper",
    "ReaperConfig",
    "Schedule",
    "Scheduler",
    "SchedulerConfig",
    "SchemaError",
    "Task",
    "UnknownTaskError",
    "Worker",
    "backfill",
    "cancel",
    "cancel_async",
    "close",
    "close_async",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
    "events",
    "events_async",
    "get_job",
    "get_job_async",
    "is_alive",
    "is_alive_async",
    "job",
    "migrate",
    "periodic",
    "queues",
    "queues_async",
    "reap",
    "reap_async",
    "redact",
    "resolve_dsn",
    "set_queue",
    "set_queue_async",
    "stop_worker",
    "stop_worker_async",
    "task",
    "wait",
    "wait_async",
]
