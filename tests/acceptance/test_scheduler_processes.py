"""Five real worker processes running the scheduler on a 1-second cron; the schedule commands."""

from __future__ import annotations

import datetime as dt
import itertools
import signal
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from .helpers import Process, run_cli

pytestmark = pytest.mark.acceptance


def test_five_schedulers_on_a_one_second_cron_fire_every_tick_once(dsn: str, tmp_path: Path) -> None:
    workers = [
        Process("--log-level", "warning", "worker", "tests.acceptance.periodic_tasks", "--dsn", dsn,
                "--schedule-interval", "0.5")
        for _ in range(5)
    ]  # fmt: skip
    try:
        time.sleep(15)  # five schedulers contend for each of some 13 ticks once they all run
        for w in workers:
            w.signal(signal.SIGTERM)
        assert [w.wait(timeout=30) for w in workers] == [0] * 5, [w.output() for w in workers]
    finally:
        for w in workers:
            w.close()
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        ticks = [r["tick"] for r in conn.execute("SELECT tick FROM pgjobs.schedule_runs ORDER BY tick")]
        jobs = conn.execute(
            """SELECT (meta->>'tick')::timestamptz AS tick, count(*) AS n FROM pgjobs.jobs
               WHERE meta->>'schedule' = 'every-second' GROUP BY 1 ORDER BY 1"""
        ).fetchall()
    assert len(ticks) >= 10, len(ticks)
    gaps = {b - a for a, b in itertools.pairwise(ticks)}
    assert gaps == {dt.timedelta(seconds=1)}, "a tick was skipped or fired off the schedule"
    assert [j["tick"] for j in jobs] == ticks and {j["n"] for j in jobs} == {1}, "a tick enqueued twice"


def test_a_stored_cron_that_never_fires_stops_no_worker_from_firing_the_others(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:  # stored by hand, past the checks
        conn.execute("INSERT INTO pgjobs.schedules (name, task, cron) VALUES ('feb-30', 'app.t', '0 0 30 2 *')")
    with Process("--log-level", "warning", "worker", "tests.acceptance.periodic_tasks", "--dsn", dsn,
                 "--schedule-interval", "0.2") as worker:  # fmt: skip
        # Four seconds of scheduling from the registration on: a loaded machine may take seconds to start.
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT count(*) FROM pgjobs.workers").fetchone() != (1,):
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.05)
        time.sleep(4)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.output()
        output = worker.output()
    with psycopg.connect(dsn) as conn:
        fired = conn.execute("SELECT count(*) FROM pgjobs.schedule_runs WHERE schedule = 'every-second'").fetchone()
    assert fired is not None and fired[0] >= 2, output
    warned = [line for line in output.splitlines() if "feb-30" in line]
    assert len(warned) == 1 and "WARNING" in warned[0] and "no date ever matches it" in warned[0], output


def test_the_schedule_commands(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.schedule('daily', 'app.t', cron => '0 6 * * *')")
    listed = run_cli("schedules", "--dsn", dsn)
    assert "daily" in listed.stdout and "enabled" in listed.stdout
    assert run_cli("schedules", "pause", "daily", "--dsn", dsn).stdout.strip() == "paused"
    assert "paused" in run_cli("schedules", "--dsn", dsn).stdout
    assert run_cli("schedules", "resume", "daily", "--dsn", dsn).stdout.strip() == "resumed"
    dry = run_cli("backfill", "daily", "--start", "2026-10-01", "--end", "2026-11-01", "--dry-run", "--dsn", dsn)
    assert dry.returncode == 0 and "31 ticks: 31 would enqueue" in dry.stdout, dry.stderr
    done = run_cli("backfill", "daily", "--start", "2026-10-01", "--end", "2026-11-01", "--dsn", dsn)
    assert "31 enqueued" in done.stdout and "backfill daily: 31/31" in done.stderr
    again = run_cli("backfill", "daily", "--start", "2026-10-01", "--end", "2026-11-01", "--dsn", dsn)
    assert "0 enqueued, 0 rerun, 31 skipped" in again.stdout
    bad = run_cli("backfill", "nope", "--start", "2026-10-01", "--end", "2026-11-01", "--dsn", dsn)
    assert bad.returncode == 1 and "no schedule named 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    assert run_cli("schedules", "remove", "daily", "--dsn", dsn).stdout.strip() == "removed"
