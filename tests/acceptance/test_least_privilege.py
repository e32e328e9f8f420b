"""A real `pgjobs worker` logged in as a role that is a member of pgjobs_worker alone, the
least-privilege deployment the security guide (docs/guides/security.md) describes: it runs jobs, fires
schedules and leads the reaper, and nothing it runs is refused."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from .helpers import Process, run_cli
from .test_crashes import query, wait_until

pytestmark = pytest.mark.acceptance

Conn = psycopg.Connection[dict[str, Any]]


def test_a_worker_with_only_pgjobs_worker_rights_runs_jobs_fires_schedules_and_reaps(
    dsn: str, conn: Conn, login: Callable[[str], Conn], tmp_path: Path
) -> None:
    role = login("pgjobs_worker")
    me = role.execute("SELECT current_user AS me").fetchone()["me"]  # type: ignore[index]
    granted = conn.execute(
        """SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
           JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s""",
        [me],
    ).fetchall()
    assert granted == [{"rolname": "pgjobs_worker"}]
    assert role.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == {"rolsuper": False}

    # A worker that died holding a run: the reaper must mark it dead and give the run back.
    conn.execute("SELECT pgjobs.worker_register('gone', 'h', 1, 'u', '{default}', 1, 1)")
    orphan = conn.execute("SELECT pgjobs.enqueue('acceptance.record', retry_delay => 0) AS id").fetchone()["id"]  # type: ignore[index]
    assert len(conn.execute("SELECT * FROM pgjobs.dequeue('gone', '{default}', 1)").fetchall()) == 1
    conn.execute("UPDATE pgjobs.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = 'gone'")
    jobs = [conn.execute("SELECT pgjobs.enqueue('acceptance.record') AS id").fetchone()["id"] for _ in range(5)]  # type: ignore[index]
    # A stored schedule besides the @periodic one (every second) the worker stores itself.
    conn.execute("SELECT pgjobs.schedule('stored', 'acceptance.record', every => 1, trigger_on_start => true)")

    def runs(schedule: str) -> int:
        rows = query(dsn, "SELECT count(*) AS n FROM pgjobs.schedule_runs WHERE schedule = %s", [schedule])
        return int(rows[0]["n"])

    def status(*ids: int) -> set[str]:
        return {r["status"] for r in query(dsn, "SELECT status FROM pgjobs.jobs WHERE id = ANY (%s)", [list(ids)])}

    with Process(
        "--log-level", "info", "worker", "tests.acceptance.tasks", "tests.acceptance.periodic_tasks",
        "--dsn", role.info.dsn, "--heart-rate", "0.5", "--reap-interval", "0.5", "--schedule-interval", "0.5",
        "--poll-interval", "0.2", env={"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)},
    ) as worker:  # fmt: skip
        try:
            wait_until(lambda: status(*jobs) == {"complete"}, 30, "the jobs' runs")
            wait_until(lambda: query(dsn, "SELECT status FROM pgjobs.workers WHERE id = 'gone'")[0]["status"] == "dead",
                       30, "the dead worker's reaping")  # fmt: skip
            wait_until(lambda: status(orphan) == {"complete"}, 30, "the orphaned run, reset and run again")
            wait_until(lambda: runs("every-second") >= 3 and runs("stored") >= 3, 30, "the schedules' ticks")
            leader = query(dsn, "SELECT holder FROM pgjobs.leases WHERE name = 'reaper' AND expires_at > now()")
            mine = query(dsn, "SELECT id FROM pgjobs.workers WHERE pid = %s", [worker.pid])
            assert leader and mine and leader[0]["holder"] == mine[0]["id"]
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        finally:
            output = worker.output()
    (attempts,) = query(dsn, "SELECT attempts FROM pgjobs.jobs WHERE id = %s", [orphan])
    assert attempts["attempts"] == 2, output  # the first attempt died with 'gone'
    scheduled = query(dsn, "SELECT count(*) AS n FROM pgjobs.jobs WHERE meta->>'schedule' IS NOT NULL")
    assert scheduled[0]["n"] >= 6, output
    assert "permission denied" not in output.lower(), output
    assert "ERROR" not in output and "Traceback" not in output, output
    assert "this worker now runs the reaper" in output, output


def test_reaper_options_out_of_bounds_are_refused_before_the_worker_starts(dsn: str) -> None:
    done = run_cli("worker", "tests.acceptance.tasks", "--dsn", dsn, "--lease-ttl", "86400")
    assert done.returncode == 1 and "lease_ttl must be more than 0 and at most 600 seconds" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert query(dsn, "SELECT count(*) AS n FROM pgjobs.workers") == [{"n": 0}]
    reaped = run_cli("reap", "--dsn", dsn, "--grace-multiplier", "-1")
    assert reaped.returncode == 1 and "grace_multiplier: must be at least 1.5" in reaped.stderr, reaped.stderr
