"""PgjobsBackend: Django's task backend contract on pgjobs, enqueueing through Django's own connection."""

from __future__ import annotations

import atexit
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from ... import _database, _sql
from ...client import job
from ._compat import BaseTaskBackend, InvalidTask, Task, TaskResult, TaskResultDoesNotExist, task_enqueued
from ._mapping import encode_arguments, find_task, task_result, to_django_priority, to_pgjobs_priority

# The pgjobs options a backend's OPTIONS["JOB_OPTIONS"] may set for every job it enqueues.
JOB_OPTIONS = frozenset({"retries", "timeout", "heartbeat", "retry_delay", "retry_backoff", "ttl"})
# Django tasks fail at their first exception, as with Django's own backends, unless JOB_OPTIONS
# asks for retries.
DEFAULT_JOB_OPTIONS: Mapping[str, Any] = {"retries": 0}
_QUEUE = re.compile(r"^[A-Za-z0-9_.:-]{1,48}$")

_pools: dict[str, ConnectionPool[Any]] = {}
_pools_lock = threading.Lock()


def _pool(dsn: str) -> ConnectionPool[Any]:
    """One pool per separate DSN in this process (Django makes a backend per thread)."""
    with _pools_lock:
        pool = _pools.get(dsn)
        if pool is None:
            kwargs = {"autocommit": True, **_database.session_params(dsn)}
            pool = ConnectionPool(dsn, min_size=1, max_size=4, kwargs=kwargs, open=True, name="pgjobs django")
            atexit.register(pool.close)
            _pools[dsn] = pool
        return pool


class PgjobsBackend(BaseTaskBackend):
    """A task backend that stores Django tasks as pgjobs jobs, run by ``django-admin pgjobs_worker``.

    ``OPTIONS``: ``DATABASE``, the alias in ``DATABASES`` whose connection enqueues (default
    ``"default"``), so a job enqueued in ``transaction.atomic()`` exists only if it commits; or
    ``DSN``, a separate PostgreSQL that pgjobs reaches with a pool of its own (enqueues then commit
    at once, outside Django's transactions); ``JOB_OPTIONS``, pgjobs options for every job
    (``retries`` (default 0), ``timeout``, ``heartbeat``, ``retry_delay``, ``retry_backoff``, ``ttl``).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = {**self.options}
        self.dsn: str | None = options.pop("DSN", None)
        self.database: str = options.pop("DATABASE", "default")
        job_options = {**DEFAULT_JOB_OPTIONS, **options.pop("JOB_OPTIONS", {})}
        if options:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) {', '.join(sorted(options))} "
                "(known: DATABASE, DSN, JOB_OPTIONS)"
            )
        unknown = set(job_options) - JOB_OPTIONS
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['JOB_OPTIONS']: unknown option(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(JOB_OPTIONS))})"
            )
        self.job_options = job_options

    # -- the contract -----------------------------------------------------------------------------
    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if not _QUEUE.match(task.queue_name):
            raise InvalidTask(
                f"queue_name {task.queue_name!r}: pgjobs queues are 1-48 characters of A-Z a-z 0-9 _ . : -"
            )
        if len(task.module_path) > 200:
            raise InvalidTask(f"{task.module_path!r}: pgjobs task names are at most 200 characters")

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        """Store a job for the task; on Django's connection it joins the current transaction."""
        self.validate_task(task)
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):  # USE_TZ = False: local time
            run_after = timezone.make_aware(run_after, timezone.get_default_timezone())
        # pgjobs.job() applies its own rules to the options (retries, a bool backoff, durations).
        o = job(task.module_path, args=[], **self.job_options).options
        params = {
            "task": task.module_path,
            "args": encode_arguments(args, kwargs),
            "queue": task.queue_name,
            "priority": to_pgjobs_priority(task.priority),
            "scheduled_at": run_after,
            **{k: o[k] for k in ("max_attempts", "timeout", "heartbeat", "retry_delay", "retry_backoff", "ttl")},
        }
        row = self._fetch("django_job_enqueue", params)
        assert row is not None
        result = task_result(task, row, self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The result of a job by id (a job's id, as a string), read from ``pgjobs.jobs``."""
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(f"no task result {result_id!r}: ids are pgjobs job ids") from None
        row = self._fetch("django_job_get", {"id": job_id})
        if row is None:
            raise TaskResultDoesNotExist(f"no task result {result_id!r}")
        return task_result(self._task(row), row, self.alias)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        if self.dsn is not None:
            return []
        if self.database not in settings.DATABASES:
            return [checks.Error(f"TASKS[{self.alias!r}]: DATABASE {self.database!r} is not in DATABASES")]
        if connections[self.database].vendor != "postgresql":
            return [checks.Error(f"TASKS[{self.alias!r}]: DATABASE {self.database!r} is not PostgreSQL")]
        return []

    def worker_dsn(self) -> str:
        """Where this backend's jobs are: its DSN, or that of its DATABASES entry."""
        return self.dsn if self.dsn is not None else database_dsn(self.database)

    # -- helpers ----------------------------------------------------------------------------------
    def _task(self, row: Mapping[str, Any]) -> Task:
        """The Django task a job runs, with the job's queue and priority."""
        found = find_task(row["task"])
        if found is None:
            raise TaskResultDoesNotExist(f"job {row['id']} runs {row['task']!r}, which is not a Django task")
        try:
            return found.using(
                priority=to_django_priority(row["priority"]), queue_name=row["queue"], backend=self.alias
            )
        except InvalidTask:  # enqueued by other means, on a queue this backend does not list
            return found

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        if self.dsn is not None:
            with _pool(self.dsn).connection() as conn, conn.cursor() as cursor:
                yield cursor
        else:
            with connections[self.database].cursor() as cursor:
                yield cursor

    def _fetch(self, name: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """One row of a query of django.sql, as a dict (None when there is none)."""
        text = _sql.query(name, "django.sql").as_string(None)
        with self._cursor() as cursor:
            cursor.execute(text, params)
            row = cursor.fetchone()
            return None if row is None else dict(zip([d[0] for d in cursor.description], row, strict=True))


def database_dsn(alias: str) -> str:
    """A libpq DSN for a ``DATABASES`` entry: its NAME, USER, PASSWORD, HOST and PORT, and the
    OPTIONS that are libpq parameters (sslmode, options…)."""
    s = connections[alias].settings_dict
    keywords = {d.keyword.decode() for d in pq.Conninfo.get_defaults()}
    params = {"dbname": s.get("NAME"), "user": s.get("USER"), "password": s.get("PASSWORD"),
              "host": s.get("HOST"), "port": s.get("PORT")}  # fmt: skip
    params.update({k: v for k, v in (s.get("OPTIONS") or {}).items() if k in keywords and isinstance(v, str | int)})
    return make_conninfo(**{k: str(v) for k, v in params.items() if v not in (None, "")})
