"""The database is not always there: workers ride out a read-only period, wait for a free
connection slot at start, follow a failover to the promoted standby, and keep to two connections."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgjobs
from tests.cluster import Cluster

from .helpers import Process, run_cli
from .test_crashes import query, wait_until
from .test_worker_processes import read_runs

pytestmark = pytest.mark.acceptance


def worker(dsn: str, log_dir: Path, *extra: str) -> Process:
    return Process(
        "worker", "tests.acceptance.tasks", "--dsn", dsn, "-c", "5", "--heart-rate", "1", "--reap-interval", "1",
        "--poll-interval", "0.2", *extra,
        env={"PGJOBS_ACCEPTANCE_LOG": str(log_dir)},
    )  # fmt: skip


def enqueue(dsn: str, n: int, seconds: float = 0.01) -> None:
    jobs = [{"task": "acceptance.record", "args": {"seconds": seconds}, "retry_delay": 0} for _ in range(n)]
    query(dsn, "SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])


def count(dsn: str, status: str) -> int:
    return int(query(dsn, "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = %s", [status])[0]["n"])


def stop(*workers: Process) -> list[str]:
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(timeout=60) == 0, w.output()
    return [w.output() for w in workers]


def warnings_about_the_database(log: str) -> list[str]:
    return [line for line in log.splitlines() if "database unavailable" in line or "database available" in line]


def test_a_read_only_period_is_ridden_out(cluster: Cluster, tmp_path: Path) -> None:
    dsn = cluster.dsn()
    pgjobs.migrate(dsn)
    enqueue(dsn, 1500)
    first, second = worker(dsn, tmp_path), worker(dsn, tmp_path)
    with first, second:
        wait_until(lambda: count(dsn, "complete") >= 200, 60, "the first 200 jobs")
        cluster.alter_system(default_transaction_read_only=True)
        time.sleep(6)
        assert first.popen.poll() is None and second.popen.poll() is None, first.output() + second.output()
        stuck = count(dsn, "complete")
        cluster.alter_system(default_transaction_read_only=None)
        wait_until(lambda: count(dsn, "complete") == 1500, 120, "every job after writes came back")
        logs = stop(first, second)
    assert stuck < 1500
    assert query(dsn, "SELECT status, count(*) AS n FROM pgjobs.jobs GROUP BY status") == [
        {"status": "complete", "n": 1500}
    ]
    for log in logs:
        lines = warnings_about_the_database(log)
        # One line when the outage starts and one when it ends (a second pair at most, if writes
        # came back for one worker between two reloads), not one per retry.
        assert 2 <= len(lines) <= 4, lines
        assert "read-only" in lines[0], lines


def test_workers_that_start_without_a_free_connection_slot_wait_for_one(cluster: Cluster, tmp_path: Path) -> None:
    dsn = cluster.dsn()
    pgjobs.migrate(dsn)
    enqueue(dsn, 200)
    cluster.alter_system(max_connections=8)
    cluster.restart()
    hogs: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            for _ in range(20):
                hogs.append(psycopg.connect(dsn, connect_timeout=5))
        first, second = worker(dsn, tmp_path), worker(dsn, tmp_path)
        with first, second:
            time.sleep(4)
            for w in (first, second):
                assert w.popen.poll() is None, w.output()
                assert "too many clients" in w.output(), w.output()
            for hog in hogs:
                hog.close()
            hogs.clear()
            running = "SELECT count(*) AS n FROM pgjobs.workers WHERE status = 'running'"
            came_up = wait_until(lambda: query(dsn, running)[0]["n"] == 2, 30, "both workers once slots were free")
            wait_until(lambda: count(dsn, "complete") == 200, 60, "every job")
            stop(first, second)
    finally:
        for hog in hogs:
            hog.close()
    print(f"no free connection slot at start: both workers up {came_up:.2f} s after slots were freed")


def test_a_worker_that_never_reaches_the_database_gives_up_after_its_startup_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_cli(
        "worker", "tests.acceptance.tasks", "--dsn", "postgresql://postgres@127.0.0.1:1/postgres",
        "--startup-timeout", "2",
    )  # fmt: skip
    took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("pgjobs: error: the database did not answer within")
    assert "database unavailable (start-up, waiting" in result.stderr
    assert 2 <= took < 30


def test_a_worker_keeps_to_its_connection_budget(dsn: str, tmp_path: Path) -> None:
    with worker(dsn, tmp_path, "-c", "10") as one, worker(dsn, tmp_path, "-c", "10", "--connections", "2") as two:
        wait_until(lambda: len(query(dsn, "SELECT 1 FROM pgjobs.workers WHERE status = 'running'")) == 2, 30, "start")
        enqueue(dsn, 300)
        wait_until(lambda: count(dsn, "complete") == 300, 60, "the jobs")
        names = {}
        for w in (one, two):
            (row,) = query(dsn, "SELECT id FROM pgjobs.workers WHERE pid = %s", [w.pid])
            rows = query(
                dsn,
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s ORDER BY 1",
                [f"pgjobs % {row['id']}"],
            )
            names[w.pid] = [r["application_name"].rsplit(" ", 1)[0] for r in rows]
        stop(one, two)
    assert names[one.pid] == ["pgjobs heart", "pgjobs main"]
    # A pool opens its second connection only when two users want one at once.
    assert names[two.pid][:2] == ["pgjobs heart", "pgjobs main0"]
    assert set(names[two.pid]) <= {"pgjobs heart", "pgjobs main0", "pgjobs main1"}


class Enqueuer(threading.Thread):
    """Enqueues one job per transaction, as an application would, until its server goes away;
    remembers the ids the server acknowledged."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.acked = dsn, list[int]()

    def run(self) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                row = conn.execute("SELECT pgjobs.enqueue('acceptance.record', '{\"seconds\": 0.02}')").fetchone()
                assert row is not None
                self.acked.append(row[0])


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_a_failover_to_the_promoted_standby(cluster: Cluster, tmp_path: Path, synchronous: bool) -> None:
    primary_dsn = cluster.dsn()
    pgjobs.migrate(primary_dsn)
    standby = cluster.standby(synchronous=synchronous)
    both = (
        f"host=127.0.0.1,127.0.0.1 port={cluster.port},{standby.port} user=postgres dbname=postgres "
        "target_session_attrs=read-write"
    )
    # A worker on the primary's host alone holds four runs; it dies with the primary.
    doomed = worker(primary_dsn, tmp_path, "--queue", "slow", "--no-reaper")
    wait_until(lambda: bool(query(primary_dsn, "SELECT 1 FROM pgjobs.workers")), 30, "the doomed worker")
    slow = [{"task": "acceptance.slow_first", "queue": "slow", "retry_delay": 0}] * 4
    query(primary_dsn, "SELECT pgjobs.enqueue_many(%s)", [Jsonb(slow)])
    wait_until(lambda: count(primary_dsn, "active") == 4, 30, "the doomed worker's four runs")
    (doomed_row,) = query(primary_dsn, "SELECT id FROM pgjobs.workers")
    enqueue(primary_dsn, 400, seconds=0.02)
    first, second = worker(both, tmp_path, "--queue", "default", "--queue", "slow"), worker(both, tmp_path)
    with doomed, first, second:
        wait_until(lambda: count(primary_dsn, "complete") >= 100, 60, "the first 100 jobs")
        enqueuer = Enqueuer(primary_dsn)
        enqueuer.start()
        time.sleep(1)
        cluster.stop("immediate")  # the primary's host dies, and the doomed worker with it
        doomed.signal(signal.SIGKILL)
        failed_at = time.monotonic()
        enqueuer.join(timeout=30)
        standby.promote()
        new_dsn = standby.dsn()
        present = {r["id"] for r in query(new_dsn, "SELECT id FROM pgjobs.jobs")}
        wait_until(lambda: count(new_dsn, "complete") == len(present), 120, "every job on the new primary")
        recovered_after = time.monotonic() - failed_at
        # Its runs were reset by the reaper on the new primary: the liveness data came along.
        reset = query(new_dsn, "SELECT worker_id, attempts FROM pgjobs.jobs WHERE queue = 'slow'")
        assert all(r["worker_id"] != doomed_row["id"] and r["attempts"] == 2 for r in reset), reset
        (dead,) = query(new_dsn, "SELECT status FROM pgjobs.workers WHERE id = %s", [doomed_row["id"]])
        assert dead["status"] == "dead"
        for w in (first, second):
            assert w.popen.poll() is None, w.output()
        stop(first, second)
    lost = [i for i in enqueuer.acked if i not in present]
    runs = Counter(job_id for job_id, _, _, _ in read_runs(tmp_path))
    again = sum(1 for n in runs.values() if n > 1)
    print(
        f"failover ({'synchronous' if synchronous else 'asynchronous'}): {len(lost)} of {len(enqueuer.acked)} "
        f"acknowledged enqueues lost, {again} jobs ran again (their completion or claim was lost), all done "
        f"{recovered_after:.1f} s after the primary died"
    )
    assert len(enqueuer.acked) > 0
    assert set(runs) == present  # every job that exists ran
    if synchronous:
        assert lost == []
