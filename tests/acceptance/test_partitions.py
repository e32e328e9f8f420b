"""Workers cut off from PostgreSQL by a real partition (iptables drops their packets, no reset):
the cut-off worker gives its runs up before anyone may re-run them, a cut-off leader is replaced
when its lease runs out, and the server ends the sessions of a host that never comes back."""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

import pgjobs
from tests.cluster import HOSTS, Cluster
from tests.partition import Partition

from .tasks import read_spans
from .test_crashes import query, wait_until
from .test_leadership import leader, worker, worker_id

pytestmark = pytest.mark.acceptance

HELD = "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'active' AND worker_id = %s"
DONE_BY = "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'complete' AND worker_id = %s"


def assert_no_overlaps(log_dir: Path) -> dict[int, list[tuple[int, str]]]:
    """No two runs of one job overlap in time, stopped runs included; each job's runs in order."""
    runs: dict[int, list[tuple[float, float, int, str]]] = defaultdict(list)
    for job_id, pid, _, start, end, how in read_spans(log_dir):
        runs[job_id].append((start, end, pid, how))
    for job_id, spans in runs.items():
        spans.sort()
        for (_, end, pid, _), (start, _, next_pid, _) in itertools.pairwise(spans):
            assert start >= end, f"job {job_id}: the run in {next_pid} began {end - start:.3f} s before {pid}'s ended"
    return {job_id: [(pid, how) for _, _, pid, how in spans] for job_id, spans in runs.items()}


def six_runs(dsn: str, holder: str, sync: bool) -> None:
    tasks = ["acceptance.span", "acceptance.span_sync"] if sync else ["acceptance.span"]
    jobs = [{"task": tasks[i % len(tasks)], "args": {"seconds": 4}, "retry_delay": 0} for i in range(6)]
    query(dsn, "SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])
    wait_until(lambda: query(dsn, HELD, [holder])[0]["n"] == 6, 20, "six claims")


def sessions(dsn: str, owner: str) -> int:
    rows = query(dsn, "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE %s", [f"% {owner}"])
    return int(rows[0]["n"])


@pytest.mark.parametrize("sync", [False, True], ids=["async", "async-and-sync"])
def test_a_cut_off_worker_gives_up_its_runs_before_they_run_elsewhere_and_rejoins(
    cluster: Cluster, partition: Partition, tmp_path: Path, sync: bool
) -> None:
    dsn = cluster.dsn()
    pgjobs.migrate(dsn)
    with worker(cluster.dsn(host=HOSTS[1]), tmp_path, "--no-reaper") as a:
        wait_until(lambda: bool(worker_id(dsn, a.pid)), 20, "A's start")
        a_id = worker_id(dsn, a.pid)
        six_runs(dsn, a_id, sync)
        with worker(dsn, tmp_path) as b:
            wait_until(lambda: bool(worker_id(dsn, b.pid)), 20, "B's start")
            b_id = worker_id(dsn, b.pid)
            wait_until(lambda: leader(dsn) == b_id, 20, "B's lease")
            partition.cut()
            reset_after = wait_until(lambda: query(dsn, HELD, [a_id])[0]["n"] == 0, 20, "the reset of A's runs")
            wait_until(lambda: query(dsn, DONE_BY, [b_id])[0]["n"] == 6, 30, "B finishing the six jobs")
            partition.heal()
            # A rejoins: its heartbeat goes through again, and with B gone it takes new work.
            rejoin_after = wait_until(
                lambda: query(dsn, "SELECT pgjobs.worker_is_alive(%s) AS alive", [a_id])[0]["alive"], 60, "A's beat"
            )
            b.signal(signal.SIGTERM)
            assert b.wait(timeout=30) == 0, b.output()
        query(dsn, "SELECT pgjobs.enqueue('acceptance.span', '{\"seconds\": 0}')")
        wait_until(lambda: query(dsn, DONE_BY, [a_id])[0]["n"] == 1, 30, "A running a new job")
        a.signal(signal.SIGTERM)
        assert a.wait(timeout=30) == 0, a.output()
        a_log = a.output()
    runs = assert_no_overlaps(tmp_path)
    gave_up = [line for line in a_log.splitlines() if " given up after " in line]
    assert len(gave_up) == 6, a_log
    firsts = [job_runs[0] for job_runs in runs.values() if len(job_runs) == 2]
    assert len(firsts) == 6 and all(first == (a.pid, "cancelled") for first in firsts), runs
    assert a_log.count(" complete in ") == 1, a_log  # the new job only
    print(f"cut-off worker: runs reset {reset_after:.2f} s after the cut; beating {rejoin_after:.2f} s after heal")
    assert reset_after < 3.0 + 1.0, reset_after


def test_a_cut_off_leader_is_replaced_and_the_server_ends_its_sessions(
    cluster: Cluster, partition: Partition, tmp_path: Path
) -> None:
    dsn = cluster.dsn()
    pgjobs.migrate(dsn)
    timeout = 4.0  # PGJOBS_DEAD_PEER_TIMEOUT for the cut-off host (30 s by default)
    env = {"PGJOBS_DEAD_PEER_TIMEOUT": str(timeout)}
    with worker(cluster.dsn(host=HOSTS[1]), tmp_path, env=env) as a:
        wait_until(lambda: bool(worker_id(dsn, a.pid)), 20, "A's start")
        a_id = worker_id(dsn, a.pid)
        wait_until(lambda: leader(dsn) == a_id, 20, "A's lease")
        six_runs(dsn, a_id, sync=False)
        with worker(dsn, tmp_path) as b:
            wait_until(lambda: bool(worker_id(dsn, b.pid)), 20, "B's start")
            b_id = worker_id(dsn, b.pid)
            assert sessions(dsn, a_id) == 2  # the LISTEN session and the pool of one
            partition.cut()
            started = time.monotonic()
            lead_after = wait_until(lambda: leader(dsn) == b_id, 20, "B's lease")
            wait_until(lambda: query(dsn, HELD, [a_id])[0]["n"] == 0, 20, "the reset of A's runs")
            reset_after = time.monotonic() - started
            wait_until(lambda: query(dsn, DONE_BY, [b_id])[0]["n"] == 6, 30, "B finishing the six jobs")
            wait_until(lambda: sessions(dsn, a_id) == 0, 4 * timeout, "the end of A's sessions")
            ended_after = time.monotonic() - started
            # A learns too: its connections fail instead of hanging.
            wait_until(lambda: "database unavailable" in a.output(), 4 * timeout, "A's log")
            learned_after = time.monotonic() - started
            a.signal(signal.SIGKILL)  # a host that never comes back
            b.signal(signal.SIGTERM)
            assert b.wait(timeout=30) == 0, b.output()
            a_log = a.output()
    runs = assert_no_overlaps(tmp_path)
    assert all(job_runs[0] == (a.pid, "cancelled") for job_runs in runs.values()), runs
    assert a_log.count(" given up after ") == 6 and " complete in " not in a_log, a_log
    print(
        f"cut-off leader: lease taken over {lead_after:.2f} s after the cut, runs reset {reset_after:.2f} s, "
        f"server ended its sessions {ended_after:.2f} s, the worker saw its connections fail {learned_after:.2f} s"
    )
    assert reset_after < 3.0 + 1.0, reset_after
    assert ended_after < 2 * timeout + 2, ended_after
