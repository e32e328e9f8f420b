"""Demo tasks for `pgjobs demo` and `pgjobs worker pgjobs.demo`."""

from __future__ import annotations

import asyncio
import random

from .tasks import task


@task
async def greet(name: str) -> str:
    """An async task: waits a little, returns a greeting."""
    await asyncio.sleep(random.uniform(0.01, 0.2))
    return f"hello, {name}"


@task
def add(a: float, b: float) -> float:
    """A sync task: runs in the worker's thread pool."""
    return a + b


@task(retries=2, retry_delay=0.2, retry_backoff=False)
def flaky(n: int) -> int:
    """Fails about one run in four, to show retries."""
    if random.random() < 0.25:
        raise RuntimeError(f"flaky({n}) failed on purpose")
    return n * n
