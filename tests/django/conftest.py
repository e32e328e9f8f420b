"""The Django test project on a database of its own: the pgjobs schema, Django set up, a worker process.

Needs PGJOBS_TEST_DSN (the server the database is made on), which Django's settings read when
Django starts, before any fixture runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from tests import fixtures

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = "tests.django.project.settings"

# One database per test process; the worker processes inherit the name.
os.environ["PGJOBS_DJANGO_DB"] = f"pgjobs_django_{os.getpid()}"
os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS

import django  # noqa: E402  (after the settings are chosen)

django.setup()

from django.db import connection, connections  # noqa: E402

try:
    from django.tasks import TaskResult
except ImportError:  # Django 5.2
    from django_tasks import TaskResult


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("PGJOBS_TEST_DSN"):
        skip = pytest.mark.skip(reason="the Django tests need PGJOBS_TEST_DSN (a PostgreSQL server)")
        for item in items:
            if Path(item.path).is_relative_to(Path(__file__).parent):
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def django_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """The project's database, made from the migrated template; its DSN."""
    name = os.environ["PGJOBS_DJANGO_DB"]
    fixtures._create(server_dsn, name, template_db)
    yield make_conninfo(server_dsn, dbname=name)
    connections.close_all()
    fixtures._drop(server_dsn, name)


def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of a statement on Django's connection (autocommit outside atomic())."""
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def wait_finished(result: TaskResult, timeout: float = 30) -> TaskResult:
    """Refresh the result until it has finished (SUCCESSFUL or FAILED)."""
    deadline = time.monotonic() + timeout
    while not result.is_finished:
        if time.monotonic() > deadline:
            raise AssertionError(f"task result {result.id} still {result.status} after {timeout} s")
        time.sleep(0.05)
        result.refresh()
    return result


class WorkerProcess:
    """A `django-admin pgjobs_worker` process and the id it registered with."""

    def __init__(self, proc: subprocess.Popen[bytes], worker_id: str) -> None:
        self.proc, self.id = proc, worker_id

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_worker(*options: str) -> WorkerProcess:
    """Start `python -m django pgjobs_worker` on the test project; return once it has registered."""
    cmd = [sys.executable, "-m", "django", "pgjobs_worker", "--settings", SETTINGS, "--heart-rate", "1",
           "--poll-interval", "0.2", "--shutdown-grace", "5", *options]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = sql("SELECT id FROM pgjobs.workers WHERE pid = %s AND status = 'running'", [proc.pid])
        if rows:
            return WorkerProcess(proc, rows[0][0])
        if proc.poll() is not None:
            raise AssertionError(f"pgjobs_worker exited with status {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("pgjobs_worker did not register within 60 s")


@pytest.fixture(scope="session")
def worker(django_dsn: str) -> Iterator[WorkerProcess]:
    """One worker on the queue "default" for the session's tests."""
    w = start_worker("-q", "default")
    yield w
    w.stop()
    assert w.proc.returncode == 0
