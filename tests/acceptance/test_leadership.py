"""Liveness that does not hang on one session: a frozen reaper leader is replaced when its lease
runs out, and when it wakes up it records nothing for the runs it lost."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

from .helpers import Process, run_cli
from .tasks import read_spans
from .test_crashes import query, wait_until

pytestmark = pytest.mark.acceptance

HEART_RATE = 0.5
REAP_INTERVAL = 0.5


def worker(dsn: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Process:
    """A worker with six slots and fast liveness (heart rate and reaper every 0.5 s)."""
    return Process(
        "worker", "tests.acceptance.tasks", "--dsn", dsn, "-c", "6", "--heart-rate", str(HEART_RATE),
        "--reap-interval", str(REAP_INTERVAL), "--poll-interval", "0.2", *extra,
        env={"PGJOBS_ACCEPTANCE_LOG": str(log_dir), **(env or {})},
    )  # fmt: skip


def worker_id(dsn: str, pid: int, status: str = "running") -> str:
    """The id of the process's worker while it has that status ("" otherwise)."""
    rows = query(dsn, "SELECT id FROM pgjobs.workers WHERE pid = %s AND status = %s", [pid, status])
    return str(rows[0]["id"]) if rows else ""


def leader(dsn: str) -> str | None:
    rows = query(dsn, "SELECT holder FROM pgjobs.leases WHERE name = 'reaper' AND expires_at > now()")
    return rows[0]["holder"] if rows else None


def test_a_frozen_leader_is_replaced_and_records_nothing_when_it_wakes(dsn: str, tmp_path: Path) -> None:
    with worker(dsn, tmp_path) as a:
        wait_until(lambda: bool(worker_id(dsn, a.pid)), 20, "A's start")
        a_id = worker_id(dsn, a.pid)
        wait_until(lambda: leader(dsn) == a_id, 20, "A's lease")
        jobs = [{"task": "acceptance.span", "args": {"seconds": 4}, "retry_delay": 0} for _ in range(6)]
        query(dsn, "SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])
        held = "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'active' AND worker_id = %s"
        wait_until(lambda: query(dsn, held, [a_id])[0]["n"] == 6, 20, "A's six claims")
        with worker(dsn, tmp_path) as b:
            wait_until(lambda: bool(worker_id(dsn, b.pid)), 20, "B's start")
            b_id = worker_id(dsn, b.pid)
            assert leader(dsn) == a_id
            a.signal(signal.SIGSTOP)
            try:
                reset_after = wait_until(lambda: query(dsn, held, [a_id])[0]["n"] == 0, 20, "the reset of A's runs")
                (state,) = query(dsn, "SELECT status FROM pgjobs.workers WHERE id = %s", [a_id])
                assert state["status"] == "dead"
                assert leader(dsn) == b_id
                listed = run_cli("workers", "--dsn", dsn).stdout
                assert f"{b_id}  running reaper-leader" in listed, listed
                done = "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'complete' AND worker_id = %s"
                wait_until(lambda: query(dsn, done, [b_id])[0]["n"] == 6, 30, "B finishing the six jobs")
            finally:
                a.signal(signal.SIGCONT)
            # A wakes up: it learns the runs are gone, records nothing, and rejoins as a worker.
            wait_until(lambda: worker_id(dsn, a.pid) == a_id, 20, "A's return")
            wait_until(lambda: "6 run(s)" in a.output() or a.output().count("no longer") >= 6, 20, "A's log")
            b.signal(signal.SIGTERM)
            a.signal(signal.SIGTERM)
            assert b.wait(timeout=30) == 0, b.output()
            assert a.wait(timeout=30) == 0, a.output()
            a_log = a.output()
    rows = query(dsn, "SELECT status, worker_id, attempts FROM pgjobs.jobs")
    assert {(r["status"], r["worker_id"], r["attempts"]) for r in rows} == {("complete", b_id, 2)}
    assert " complete in " not in a_log, a_log
    print(a_log)
    spans = read_spans(tmp_path)
    assert sorted(how for _, pid, _, _, _, how in spans if pid == b.pid) == ["returned"] * 6
    assert all(how == "cancelled" for _, pid, _, _, _, how in spans if pid == a.pid), spans
    # Declared dead and reset within 3 s of freezing (heart rate 0.5 s, reaper every 0.5 s, lease 1.5 s).
    print(f"frozen leader: runs reset {reset_after:.2f} s after SIGSTOP")
    assert reset_after < 3.0 + 1.0, reset_after  # 1 s of slack for a noisy machine
