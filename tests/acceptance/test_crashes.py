"""Crashes with real processes: kill -9 at the worst moments, and PostgreSQL restarting mid-run."""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import pgjobs
from tests.cluster import Cluster

from .helpers import Process, run_cli
from .test_worker_processes import read_runs

pytestmark = pytest.mark.acceptance

HEART_RATE = 0.3
REAP_INTERVAL = 0.3
GRACE = 2.1


def worker(dsn: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Process:
    return Process(
        "worker", "tests.acceptance.tasks", "--dsn", dsn, "-c", "5",
        "--heart-rate", str(HEART_RATE), "--reap-interval", str(REAP_INTERVAL), "--poll-interval", "0.2",
        *extra,
        env={"PGJOBS_ACCEPTANCE_LOG": str(log_dir), **(env or {})},
    )  # fmt: skip


def query(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def all_finished(dsn: str) -> bool:
    return query(dsn, "SELECT count(*) AS n FROM pgjobs.jobs WHERE status NOT IN ('complete', 'failed')")[0]["n"] == 0


def assert_no_run_overlaps_itself(log_dir: Path) -> dict[int, int]:
    """Runs of one job never overlap in time; returns how many runs each job had."""
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for job_id, _, start, end in read_runs(log_dir):
        spans[job_id].append((start, end))
    for job_id, runs in spans.items():
        runs.sort()
        for (_, end), (next_start, _) in itertools.pairwise(runs):
            assert next_start >= end, f"job {job_id} ran twice at the same time"
    return {job_id: len(runs) for job_id, runs in spans.items()}


def test_kill_9_mid_job_another_worker_completes_it_once(dsn: str, tmp_path: Path) -> None:
    (row,) = query(dsn, "SELECT pgjobs.enqueue('acceptance.record', '{\"seconds\": 1.5}', retry_delay => 0) AS id")
    job_id = row["id"]
    with worker(dsn, tmp_path) as doomed:
        wait_until(lambda: query(dsn, "SELECT status FROM pgjobs.jobs")[0]["status"] == "active", 20, "the claim")
        (holder,) = query(dsn, "SELECT w.id, w.pid FROM pgjobs.workers w JOIN pgjobs.jobs j ON j.worker_id = w.id")
        assert holder["pid"] == doomed.pid
        with worker(dsn, tmp_path) as survivor:
            wait_until(
                lambda: len(query(dsn, "SELECT 1 FROM pgjobs.workers WHERE status = 'running'")) == 2, 20, "start"
            )
            doomed.signal(signal.SIGKILL)
            doomed.wait(timeout=10)
            reset_after = wait_until(
                lambda: query(dsn, "SELECT attempts FROM pgjobs.jobs")[0]["attempts"] == 2, 30, "the reset"
            )
            wait_until(lambda: all_finished(dsn), 30, "the completion")
            survivor.signal(signal.SIGTERM)
            assert survivor.wait(timeout=30) == 0, survivor.output()
    (job,) = query(dsn, "SELECT status, attempts, worker_id FROM pgjobs.jobs WHERE id = %s", [job_id])
    assert (job["status"], job["attempts"]) == ("complete", 2) and job["worker_id"] != holder["id"]
    (dead,) = query(dsn, "SELECT status FROM pgjobs.workers WHERE id = %s", [holder["id"]])
    assert dead["status"] == "dead"
    assert assert_no_run_overlaps_itself(tmp_path) == {job_id: 1}
    # Detected within heartbeat x grace + one reaper interval (plus slack for a noisy machine).
    assert reset_after < HEART_RATE * GRACE + REAP_INTERVAL + 3.0, reset_after


@pytest.mark.parametrize("moment", ["after_claim", "during_task", "before_record"])
def test_kill_9_at_the_worst_moments_loses_nothing(dsn: str, tmp_path: Path, moment: str) -> None:
    task = "acceptance.crash_first" if moment == "during_task" else "acceptance.record"
    jobs = [{"task": task, "args": {"seconds": 0.05}, "retry_delay": 0, "group_key": f"g{i % 3}"} for i in range(30)]
    query(dsn, "SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])
    env = {"PGJOBS_FAULT": moment} if moment != "during_task" else {"PGJOBS_CRASH_TASK": "1"}
    with worker(dsn, tmp_path, env=env) as doomed:
        assert doomed.wait(timeout=30) == -signal.SIGKILL, doomed.output()
        with worker(dsn, tmp_path) as survivor:
            wait_until(lambda: all_finished(dsn), 60, "every job finishing")
            survivor.signal(signal.SIGTERM)
            assert survivor.wait(timeout=30) == 0, survivor.output()
    rows = query(dsn, "SELECT status, count(*) AS n FROM pgjobs.jobs GROUP BY status")
    assert rows == [{"status": "complete", "n": 30}]
    runs = assert_no_run_overlaps_itself(tmp_path)
    assert len(runs) == 30
    if moment == "after_claim":
        assert set(runs.values()) == {1}  # claimed but never started: nothing ran twice
    else:
        assert set(runs.values()) <= {1, 2}  # at least once; the crashed run may have finished its work


def test_a_postgres_restart_mid_run_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    # A private server of the version under test: restarting the shared one would break the tests
    # that run beside this one.
    dsn = cluster.dsn()
    pgjobs.migrate(dsn)
    jobs = [{"task": "acceptance.record", "args": {"seconds": 0.02}} for _ in range(600)]
    query(dsn, "SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])
    extra = ("--heart-rate", "2", "--reap-interval", "1")
    with worker(dsn, tmp_path, *extra) as first, worker(dsn, tmp_path, *extra) as second:
        wait_until(
            lambda: query(dsn, "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'complete'")[0]["n"] >= 100,
            60,
            "the first hundred jobs",
        )
        cluster.restart()
        wait_until(lambda: all_finished(dsn), 120, "every job finishing after the restart")
        for w in (first, second):
            w.signal(signal.SIGTERM)
        for w in (first, second):
            assert w.wait(timeout=30) == 0, w.output()
        assert "connection" in first.output() + second.output()  # they noticed, and reconnected
    rows = query(dsn, "SELECT status, count(*) AS n FROM pgjobs.jobs GROUP BY status")
    assert rows == [{"status": "complete", "n": 600}]
    assert len(assert_no_run_overlaps_itself(tmp_path)) == 600


def test_cancel_and_stop_from_another_process(dsn: str, tmp_path: Path) -> None:
    (row,) = query(dsn, "SELECT pgjobs.enqueue('acceptance.record', '{\"seconds\": 60}') AS id")
    with worker(dsn, tmp_path, "--heart-rate", "30") as w:
        wait_until(lambda: query(dsn, "SELECT status FROM pgjobs.jobs")[0]["status"] == "active", 20, "the claim")
        cancelled = run_cli("cancel", str(row["id"]), "--dsn", dsn)
        assert cancelled.stdout.strip() == "aborting", cancelled.stderr
        # Heartbeats are 30 s apart: the stop arrives by NOTIFY.
        took = wait_until(lambda: query(dsn, "SELECT status FROM pgjobs.jobs")[0]["status"] == "aborted", 10, "abort")
        assert took < 5
        listed = run_cli("workers", "--dsn", dsn).stdout
        (me,) = query(dsn, "SELECT id FROM pgjobs.workers")
        assert me["id"] in listed and "running" in listed
        assert run_cli("worker-stop", me["id"], "--dsn", dsn).stdout.strip() == "stopping"
        assert w.wait(timeout=20) == 0, w.output()
    assert query(dsn, "SELECT status FROM pgjobs.workers") == [{"status": "stopped"}]
    assert "killed" in run_cli("reap", "--dsn", dsn).stdout
    assert read_runs(tmp_path) == []  # the cancelled run never finished
