"""The executors without a database: choosing one, exit statuses in words, a stop raised in a
thread, and a child process pool running, crashing and being stopped."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

import pgjobs
from pgjobs._executors import describe_exit, run_in_thread, stop_exception
from pgjobs.worker import Worker


def test_a_task_names_a_known_executor_and_a_process_task_is_sync() -> None:
    with pytest.raises(TypeError, match="executor must be one of thread, process"):
        pgjobs.task(name="unit.bogus", executor="fork")  # type: ignore[call-overload]

    async def nap() -> None:
        pass

    with pytest.raises(TypeError, match="for sync functions"):
        pgjobs.task(name="unit.async_process", executor="process")(nap)
    with pytest.raises(ValueError, match="executor must be one of"):
        Worker("postgresql://unused", executor="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_jobs_per_child"):
        Worker("postgresql://unused", max_jobs_per_child=0)


def test_exit_statuses_in_words() -> None:
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-signal.SIGSEGV) == "killed by signal 11 (SIGSEGV)"
    assert describe_exit(-signal.SIGKILL) == "killed by signal 9 (SIGKILL, perhaps the kernel's out-of-memory killer)"


def test_a_stop_exception_is_job_cancelled_with_its_message() -> None:
    exc = stop_exception("job 7: cancelled while running")()
    assert isinstance(exc, pgjobs.JobCancelled) and str(exc) == "job 7: cancelled while running"


def test_a_cancelled_thread_run_gets_job_cancelled_and_a_blocked_one_is_left_behind() -> None:
    heard: list[str] = []

    def spin() -> None:
        try:
            while True:
                pass
        except pgjobs.JobCancelled as exc:
            heard.append(str(exc))
            raise

    async def cancel_after(call: object, seconds: float, grace: float) -> float:
        run = asyncio.create_task(run_in_thread(call, "unit-run", lambda: "stopped here", grace))  # type: ignore[arg-type]
        await asyncio.sleep(seconds)
        asked = time.monotonic()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return time.monotonic() - asked

    assert asyncio.run(cancel_after(spin, 0.1, 5)) < 2  # waited for the thread, which ended at once
    assert heard == ["stopped here"]
    # The thread is on its last lines once the run's result is in: give it a moment to end.
    for t in threading.enumerate():
        if t.name == "unit-run":
            t.join(2)
    assert not any(t.name == "unit-run" for t in threading.enumerate())
    # A thread in time.sleep hears of it only when the sleep returns: the wait gives up at the grace.
    took = asyncio.run(cancel_after(lambda: time.sleep(1.5), 0.1, 0.2))
    assert 0.2 <= took < 1.0
