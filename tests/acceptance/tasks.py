"""Tasks run by the acceptance tests' worker processes.

Each run appends ``job id, group, start, end`` to a file of its process's own in the directory
named by PGJOBS_ACCEPTANCE_LOG, so a test can count executions and check their overlaps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pgjobs
from pgjobs import Job

_log = Path(os.environ.get("PGJOBS_ACCEPTANCE_LOG", ".")) / f"{os.getpid()}.log"


def _record(job: Job, start: float, end: float) -> None:
    with _log.open("a") as f:
        f.write(f"{job.id},{job.group_key or ''},{start!r},{end!r}\n")


@pgjobs.task(name="acceptance.record", pass_job=True)
async def record(job: Job, seconds: float = 0.0) -> None:
    start = time.time()
    if seconds:
        await asyncio.sleep(seconds)
    _record(job, start, time.time())


@pgjobs.task(name="acceptance.record_sync", pass_job=True)
def record_sync(job: Job, seconds: float = 0.0) -> None:
    start = time.time()
    time.sleep(seconds)
    _record(job, start, time.time())


@pgjobs.task(name="acceptance.crash_first", pass_job=True)
async def crash_first(job: Job, seconds: float = 0.0) -> None:
    """Kills its own process on a job's first attempt where PGJOBS_CRASH_TASK=1."""
    if job.attempts == 1 and os.environ.get("PGJOBS_CRASH_TASK") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    await record(job, seconds)
