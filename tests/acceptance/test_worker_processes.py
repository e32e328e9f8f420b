"""Real `pgjobs worker` processes: many at once, groups, signals."""

from __future__ import annotations

import itertools
import random
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .helpers import Process

pytestmark = pytest.mark.acceptance


def read_runs(log_dir: Path) -> list[tuple[int, str, float, float]]:
    runs = []
    for path in log_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            job_id, group, start, end = line.split(",")
            runs.append((int(job_id), group, float(start), float(end)))
    return runs


def wait_until_done(dsn: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE status = 'complete'").fetchone()
            if row and row[0] >= total:
                return
            time.sleep(0.2)
    raise AssertionError(f"not all {total} jobs completed within {timeout} s")


def stop(workers: list[Process]) -> list[int]:
    for w in workers:
        w.signal(signal.SIGTERM)
    return [w.wait(timeout=30) for w in workers]


def test_four_workers_run_every_job_once_and_keep_groups_exclusive(dsn: str, tmp_path: Path) -> None:
    rng = random.Random(7)
    grouped = [
        {"task": "acceptance.record", "args": {"seconds": 0.02}, "group_key": f"g{i % 50}",
         "priority": rng.randint(-5, 5)}
        for i in range(5000)
    ]  # fmt: skip
    free = [{"task": "acceptance.record", "priority": rng.randint(-5, 5)} for _ in range(1000)]
    jobs = grouped + free
    rng.shuffle(jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])

    env = {"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}
    # Both event loops in one fleet: uvloop (pgjobs[fast], the default when installed) and asyncio's.
    workers = [
        Process("--log-level", "warning", "worker", "tests.acceptance.tasks", "--dsn", dsn, "-c", "20",
                "--loop", loop, env=env)
        for loop in ("uvloop", "asyncio", "uvloop", "asyncio")
    ]  # fmt: skip
    try:
        wait_until_done(dsn, len(jobs), timeout=240)
        codes = stop(workers)
        assert codes == [0, 0, 0, 0], [w.output() for w in workers]
    finally:
        for w in workers:
            w.close()

    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT id, status, attempts, group_key FROM pgjobs.jobs").fetchall()
    assert Counter(r["status"] for r in rows) == {"complete": 6000}
    assert all(r["attempts"] == 1 for r in rows)

    runs = read_runs(tmp_path)
    executions = Counter(job_id for job_id, *_ in runs)
    assert len(executions) == 6000 and set(executions.values()) == {1}, "a job ran twice or never"

    by_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, group, start, end in runs:
        if group:
            by_group[group].append((start, end))
    assert len(by_group) == 50
    for group, spans in by_group.items():
        spans.sort()
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= end, f"two jobs of group {group} overlapped"

    # Ungrouped jobs run beside the serialised groups instead of waiting behind them.
    first = min(start for _, _, start, _ in runs)
    last = max(end for *_, end in runs)
    free_done = max(end for _, group, _, end in runs if not group)
    print(f"ungrouped done after {free_done - first:.2f} s of {last - first:.2f} s")
    assert free_done - first < 0.6 * (last - first), (free_done - first, last - first)


def test_sigterm_lets_the_running_job_finish_and_a_second_signal_exits_at_once(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        first = conn.execute("SELECT pgjobs.enqueue('acceptance.record', '{\"seconds\": 1.5}')").fetchone()
    env = {"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}
    assert first is not None
    with Process("worker", "tests.acceptance.tasks", "--dsn", dsn, env=env) as worker:
        _wait_status(dsn, first[0], "active")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.output()
        assert _status(dsn, first[0]) == "complete"

    with psycopg.connect(dsn, autocommit=True) as conn:
        second = conn.execute("SELECT pgjobs.enqueue('acceptance.record_sync', '{\"seconds\": 30}')").fetchone()
    assert second is not None
    with Process("worker", "tests.acceptance.tasks", "--dsn", dsn, env=env) as worker:
        _wait_status(dsn, second[0], "active")
        worker.signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=10) != 0
        assert time.monotonic() - started < 5
        assert "exiting at once" in worker.output()


def test_a_sync_job_past_the_grace_period_is_given_back(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pgjobs.enqueue('acceptance.record_sync', '{\"seconds\": 30}')").fetchone()
    assert row is not None
    args = ("worker", "tests.acceptance.tasks", "--dsn", dsn, "--shutdown-grace", "0.5")
    with Process(*args, env={"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}) as worker:
        _wait_status(dsn, row[0], "active")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, worker.output()
        assert "given back to the queue" in worker.output()
    assert _status(dsn, row[0]) == "queued"


def _status(dsn: str, job_id: int) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return str(row[0])


def _wait_status(dsn: str, job_id: int, status: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _status(dsn, job_id) == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never became {status}")


def test_a_worker_serves_prometheus_metrics(dsn: str, tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.enqueue('acceptance.record') FROM generate_series(1, 3)")
        conn.execute(
            "SELECT pgjobs.enqueue('acceptance.record', queue => 'later', scheduled_at => now() + interval '1 hour')"
        )
    env = {"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}
    worker = Process("worker", "tests.acceptance.tasks", "--dsn", dsn, "--metrics-port", str(port), env=env)
    try:
        wait_until_done(dsn, 3, timeout=60)
        deadline = time.monotonic() + 20
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.2)
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(timeout=30)
        worker.close()
    assert 'pgjobs_worker_jobs_total{outcome="complete",queue="default",task="acceptance.record"} 3.0' in text
    assert 'pgjobs_worker_job_duration_seconds_count{queue="default",task="acceptance.record"} 3.0' in text
    assert 'pgjobs_queue_jobs{queue="later",status="scheduled"} 1.0' in text
    assert 'pgjobs_queue_oldest_queued_seconds{queue="later"} 0.0' in text
    assert 'pgjobs_workers{status="running"} 1.0' in text
