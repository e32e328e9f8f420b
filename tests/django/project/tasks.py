"""The test project's tasks: found by the worker in this app's tasks module."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.db import connection

try:
    from django.tasks import TaskContext, task
except ImportError:  # Django 5.2
    from django_tasks import TaskContext, task


class Boom(Exception):
    """What the failing task raises."""


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def greet(name: str, *, greeting: str = "hello") -> str:
    return f"{greeting}, {name}"


@task
def fail(message: str) -> None:
    raise Boom(message)


@task(takes_context=True)
def describe(context: TaskContext, tag: str) -> dict[str, Any]:
    result = context.task_result
    return {"attempt": context.attempt, "id": result.id, "status": str(result.status), "tag": tag}


@task(takes_context=True)
def flaky(context: TaskContext) -> int:
    if context.attempt == 1:
        raise Boom("first attempt")
    return int(context.attempt)


@task
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@task
def count_jobs(task_name: str) -> int:
    """Reads the database through Django's connection, from the worker's thread."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pgjobs.jobs WHERE task = %s", [task_name])
        return int(cursor.fetchone()[0])


@task
def where() -> int:
    return os.getpid()
