"""Tasks the process executor's acceptance tests run: ones that spin, crash, exit or hog memory.

A task that spins first writes its process id to ``<job id>.pid`` in the directory named by
PGJOBS_ACCEPTANCE_LOG, so that a test can watch that process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import pgjobs
from pgjobs import Job


def _pid_file(job: Job) -> None:
    path = Path(os.environ.get("PGJOBS_ACCEPTANCE_LOG", ".")) / f"{job.id}.pid"
    path.write_text(str(os.getpid()))


@pgjobs.task(name="proc.add")
def add(a: int, b: int) -> int:
    return a + b


@pgjobs.task(name="proc.spin", pass_job=True)
def spin(job: Job) -> None:
    _pid_file(job)
    while True:
        pass


@pgjobs.task(name="proc.spin_stubborn", pass_job=True)
def spin_stubborn(job: Job) -> None:
    """Spins and ignores SIGTERM: only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _pid_file(job)
    while True:
        pass


@pgjobs.task(name="proc.segfault")
def segfault() -> None:
    ctypes.string_at(0)


@pgjobs.task(name="proc.exit")
def exit_now(status: int) -> None:
    os._exit(status)


@pgjobs.task(name="proc.hog")
def hog() -> None:
    """Takes 10 MB more every 10 ms, touching every page, until something stops it."""
    held = []
    while True:
        held.append(b"x" * 10_000_000)
        time.sleep(0.01)
