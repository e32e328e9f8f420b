"""Conformance: every job runs and completes once, claims are exclusive, groups stay exclusive."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from .workers import Fleet, enqueue, finished, jobs, query, runs_by_job, wait_until

pytestmark = pytest.mark.conformance


def test_each_job_runs_and_completes_once(one: Fleet) -> None:
    echo_args: list[Any] = [
        {"n": i, "text": 'é ✓ "quoted"', "nested": {"list": [1, 2.5, None, True]}} for i in range(8)
    ]
    echo_args += [[i, "positional", None] for i in range(4)]
    echo_ids = enqueue(one.dsn, *({"task": "conformance.echo", "args": a} for a in echo_args))
    (sleep_id, fail_id) = enqueue(
        one.dsn,
        {"task": "conformance.sleep", "args": {"seconds": 1.2}},
        {"task": "conformance.fail", "args": {"message": "conformance failure 7"}, "max_attempts": 2, "retry_delay": 0},
    )
    worker = one.start().registered()
    # The sleep task reports progress while it runs (a completion sets 1 afterwards).
    wait_until(
        lambda: query(one.dsn, "SELECT 1 FROM pgjobs.jobs WHERE id = %s AND status = 'active' AND progress > 0 "
                      "AND progress < 1", [sleep_id]),
        10, "progress of a running sleep task",
    )  # fmt: skip
    everything = [*echo_ids, sleep_id, fail_id]
    wait_until(lambda: finished(one.dsn, everything), 20, "every job finishing")
    worker.stop()

    rows = jobs(one.dsn, everything)
    for job_id, args in zip(echo_ids, echo_args, strict=True):
        row = rows[job_id]
        assert (row["status"], row["attempts"], row["worker_id"]) == ("complete", 1, worker.id), row
        assert row["result"] == args
    assert (rows[sleep_id]["status"], rows[sleep_id]["result"]) == ("complete", {"slept": 1.2, "attempt": 1})
    assert (rows[fail_id]["status"], rows[fail_id]["attempts"]) == ("failed", 2)
    assert "conformance failure 7" in rows[fail_id]["error"]

    runs = runs_by_job(one.log_dir)
    for job_id in [*echo_ids, sleep_id]:
        assert [(r.attempt, r.pid, r.how) for r in runs[job_id]] == [(1, worker.pid, "returned")], job_id
    assert [(r.attempt, r.how) for r in runs[fail_id]] == [(1, "raised"), (2, "raised")]
    (row,) = query(one.dsn, "SELECT status FROM pgjobs.workers WHERE id = %s", [worker.id])
    assert row["status"] == "stopped"  # worker_stopped on a clean exit


def test_a_claim_never_returns_a_job_another_worker_holds(fleet: Fleet) -> None:
    workers = [fleet.start() for _ in range(3)]
    for w in workers:
        w.registered()
    ids = enqueue(fleet.dsn, *({"task": "conformance.sleep", "args": {"seconds": 0.1}} for _ in range(80)))
    wait_until(lambda: finished(fleet.dsn, ids), 40, "every job finishing")

    rows = jobs(fleet.dsn, ids)
    assert {(r["status"], r["attempts"]) for r in rows.values()} == {("complete", 1)}
    runs = runs_by_job(fleet.log_dir)
    by_id = {w.id: w for w in workers}
    for job_id in ids:
        # Started once, by the process of the worker that completed it.
        assert [(r.attempt, r.pid) for r in runs[job_id]] == [(1, by_id[rows[job_id]["worker_id"]].pid)], job_id
    busy = {by_id[r["worker_id"]] for r in rows.values()}
    assert len(busy) >= 2, "one worker took every job: the test shows nothing about claims"
    assert {w.kind for w in busy} == set(fleet.kinds)


def test_groups_stay_exclusive(fleet: Fleet) -> None:
    # Two slots each for three groups: neither worker can take every group's head at once.
    workers = [fleet.start(concurrency=2) for _ in range(2)]
    for w in workers:
        w.registered()
    groups = ["g0", "g1", "g2"]
    grouped = enqueue(
        fleet.dsn,
        *({"task": "conformance.sleep", "args": {"seconds": 0.15}, "group_key": g} for _ in range(5) for g in groups),
    )
    wait_until(lambda: finished(fleet.dsn, grouped), 30, "every job finishing")

    rows = jobs(fleet.dsn, grouped)
    assert {r["status"] for r in rows.values()} == {"complete"}
    runs = runs_by_job(fleet.log_dir)
    for g in groups:
        spans = sorted((run.start, run.end or 0.0) for i in grouped if rows[i]["group_key"] == g for run in runs[i])
        assert len(spans) == 5
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= end, f"two jobs of group {g} ran at the same time"
    assert len({r["worker_id"] for r in rows.values()}) == 2, "one worker took every job"
