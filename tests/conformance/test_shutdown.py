"""Conformance: SIGTERM stops claiming, lets short runs finish, gives the rest back uncounted."""

from __future__ import annotations

import signal
import time

import pytest

from .workers import SHUTDOWN_GRACE, Fleet, enqueue, jobs, query, read_runs, runs_by_job, wait_until

pytestmark = pytest.mark.conformance


def test_sigterm_gives_unfinished_jobs_back_without_counting_the_attempt(one: Fleet) -> None:
    short, long = enqueue(
        one.dsn,
        {"task": "conformance.sleep", "args": {"seconds": 1}},
        {"task": "conformance.sleep", "args": {"seconds": 60}},
    )
    worker = one.start().registered()
    wait_until(lambda: {r.job for r in read_runs(one.log_dir)} == {short, long}, 10, "the runs")
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    (late,) = enqueue(one.dsn, {"task": "conformance.echo", "args": ["too late"]})
    assert worker.popen.wait(timeout=SHUTDOWN_GRACE + 15) == 0, one.outputs()

    rows = jobs(one.dsn, [short, long, late])
    # The short run finished within the shutdown grace; the long one went back to the queue as if
    # never claimed; nothing was claimed after the signal.
    assert (rows[short]["status"], rows[short]["attempts"]) == ("complete", 1)
    assert (rows[long]["status"], rows[long]["attempts"], rows[long]["worker_id"]) == ("queued", 0, None)
    assert (rows[late]["status"], rows[late]["attempts"]) == ("queued", 0)
    runs = runs_by_job(one.log_dir)
    assert [r.how for r in runs[short]] == ["returned"]
    assert [r.how for r in runs[long]] == ["stopped"]
    assert late not in runs
    (row,) = query(one.dsn, "SELECT status FROM pgjobs.workers WHERE id = %s", [worker.id])
    assert row["status"] == "stopped"
