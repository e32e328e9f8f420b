"""The conformance suite's tasks for `pgjobs worker` (tests/conformance/tasks.js is their Node twin).

The contract every worker under test implements, by these names:

- ``conformance.echo`` returns its arguments as stored (a JSON object or array).
- ``conformance.sleep`` ``{"seconds": s, "gate": path}`` sleeps s seconds, or less when ``gate`` is
  given: until a file of that path exists (looking every 50 ms). It touches its run with its
  progress (``pgjobs.touch``) every 0.25 s, and returns ``{"slept": s, "attempt": <the run's
  attempt>}``.
- ``conformance.fail`` ``{"message": m}`` raises (throws) an error whose text holds m.

Each run appends JSON lines to a file of its process's own in the directory
``$PGJOBS_CONFORMANCE_LOG``: ``{"job": id, "attempt": n, "event": "start", "t": unix_seconds}``
when it starts, and ``{"job": id, "attempt": n, "event": "end", "how": h, "t": unix_seconds}``
when it ends, ``h`` being ``returned``, ``raised`` or ``stopped`` (the worker stopped the run).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pgjobs
from pgjobs import Job

T = TypeVar("T")

_log = Path(os.environ.get("PGJOBS_CONFORMANCE_LOG", ".")) / f"{os.getpid()}.jsonl"


def _record(job: Job, event: str, how: str | None = None) -> None:
    line: dict[str, Any] = {"job": job.id, "attempt": job.attempts, "event": event, "t": time.time()}
    if how is not None:
        line["how"] = how
    with _log.open("a") as f:
        f.write(json.dumps(line) + "\n")


def _open(gate: str | None) -> bool:
    """Whether a sleep's gate file exists (a stat: quick enough for the event loop)."""
    return gate is not None and os.path.exists(gate)


async def _logged(job: Job, body: Callable[[], Awaitable[T]]) -> T:
    _record(job, "start")
    try:
        result = await body()
    except (asyncio.CancelledError, pgjobs.JobCancelled):
        _record(job, "end", "stopped")
        raise
    except BaseException:
        _record(job, "end", "raised")
        raise
    _record(job, "end", "returned")
    return result


@pgjobs.task(name="conformance.echo", pass_job=True)
async def echo(job: Job, *args: Any, **kwargs: Any) -> Any:
    async def body() -> Any:
        return job.args

    return await _logged(job, body)


@pgjobs.task(name="conformance.sleep", pass_job=True)
async def sleep(job: Job, seconds: float, gate: str | None = None) -> dict[str, Any]:
    async def body() -> dict[str, Any]:
        began = touched = time.monotonic()
        while (left := seconds - (time.monotonic() - began)) > 0 and not _open(gate):
            await asyncio.sleep(min(left, 0.05))
            if time.monotonic() - touched >= 0.25:
                touched = time.monotonic()
                await job.update_async(progress=min(1.0, (touched - began) / seconds))
        return {"slept": seconds, "attempt": job.attempts}

    return await _logged(job, body)


@pgjobs.task(name="conformance.fail", pass_job=True)
async def fail(job: Job, message: str) -> None:
    async def body() -> None:
        raise RuntimeError(message)

    return await _logged(job, body)
