"""Tasks that run in the process executor's children, for tests/integration/test_executors.py.

Importing this module registers them; the tests take them out of this process's registry again
(see test_executors.process_tasks), since a Worker left to every registered task would otherwise
start a process pool for them. The children import this module and find them registered.
"""

from __future__ import annotations

import os
from typing import Any

import pgjobs
from pgjobs import Job


@pgjobs.task(name="exec.pid", executor="process")
def pid(tag: str = "") -> list[Any]:
    return [os.getpid(), tag]


@pgjobs.task(name="exec.progress", pass_job=True, executor="process")
def progress(job: Job, label: str) -> dict[str, Any]:
    touched = job.update(progress=0.5, meta={"label": label})
    return {"touched": touched, "id": job.id, "attempts": job.attempts, "pid": os.getpid(), "queue": job.queue}


@pgjobs.task(name="exec.boom", executor="process")
def boom() -> None:
    raise ValueError("boom in a child")


ALL = (pid, progress, boom)
