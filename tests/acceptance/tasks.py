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


@pgjobs.task(name="acceptance.slow_first", pass_job=True)
async def slow_first(job: Job, seconds: float = 60.0) -> None:
    """Takes `seconds` on a job's first attempt and no time on later ones: a run a crash cuts short."""
    await record(job, seconds if job.attempts == 1 else 0.0)


def read_spans(log_dir: Path) -> list[tuple[int, int, int, float, float, str]]:
    """(job id, pid, attempt, start, end, how it ended) of every run of acceptance.span and
    acceptance.span_sync, whether it finished or was stopped."""
    spans = []
    for path in log_dir.glob("*.spans"):
        for line in path.read_text().splitlines():
            job_id, pid, attempt, start, end, how = line.split(",")
            spans.append((int(job_id), int(pid), int(attempt), float(start), float(end), how))
    return spans


def _span(job: Job, start: float, how: str) -> None:
    with _log.with_suffix(".spans").open("a") as f:
        f.write(f"{job.id},{os.getpid()},{job.attempts},{start!r},{time.time()!r},{how}\n")


@pgjobs.task(name="acceptance.span", pass_job=True)
async def span(job: Job, seconds: float = 0.0) -> None:
    """Sleeps, and logs its span even when it is cancelled: a stopped run's end is when it stopped."""
    start, how = time.time(), "cancelled"
    try:
        await asyncio.sleep(seconds)
        how = "returned"
    finally:
        _span(job, start, how)


@pgjobs.task(name="acceptance.span_sync", pass_job=True)
def span_sync(job: Job, seconds: float = 0.0) -> None:
    """A sync task that stops as soon as its run is stopped: it touches its run every 50 ms."""
    start, how = time.time(), "returned"
    try:
        while time.time() - start < seconds:
            job.update(progress=(time.time() - start) / seconds)
            time.sleep(0.05)
    except pgjobs.JobCancelled:
        how = "cancelled"
        raise
    finally:
        _span(job, start, how)
