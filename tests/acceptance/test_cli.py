"""The `pgjobs` command as a user runs it: clear one-line errors, the job commands, the demo."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from .helpers import Process, run_cli

pytestmark = pytest.mark.acceptance


def assert_one_clear_line(result: object, *needles: str) -> None:
    assert result.returncode != 0  # type: ignore[attr-defined]
    err = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_a_wrong_dsn_is_one_line_without_the_password() -> None:
    result = run_cli("migrate", "--dsn", "postgresql://me:hunter2@127.0.0.1:1/db?connect_timeout=2")
    assert_one_clear_line(result, "cannot connect", "***")
    assert "hunter2" not in result.stderr + result.stdout


def test_a_missing_task_module_is_one_line(dsn: str) -> None:
    result = run_cli("worker", "no_such_module_here", "--dsn", dsn)
    assert_one_clear_line(result, "no_such_module_here")


def test_a_missing_schema_names_the_command_that_fixes_it(empty_dsn: str) -> None:
    result = run_cli("worker", "pgjobs.demo", "--dsn", empty_dsn)
    assert_one_clear_line(result, "pgjobs migrate")
    assert run_cli("migrate", "--dsn", empty_dsn).returncode == 0
    assert "nothing to do" in run_cli("migrate", "--dsn", empty_dsn).stdout


def started_line(worker: Process, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = next((ln for ln in worker.output().splitlines() if " started: " in ln), None)
        if line:
            return line
        assert worker.popen.poll() is None, worker.output()
        time.sleep(0.1)
    raise AssertionError(f"the worker did not start within {timeout} s: {worker.output()}")


def test_the_worker_takes_uvloop_when_installed_and_says_when_it_is_not(dsn: str, tmp_path: Path) -> None:
    with Process("worker", "tests.acceptance.tasks", "--dsn", dsn) as worker:
        assert "uvloop event loop" in started_line(worker)
    # Where uvloop cannot be imported, auto falls back to asyncio's loop and --loop uvloop refuses.
    hidden = tmp_path / "uvloop"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('not on this machine')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    assert_one_clear_line(
        run_cli("worker", "tests.acceptance.tasks", "--dsn", dsn, "--loop", "uvloop", env=env), "pgjobs[fast]"
    )
    with Process("worker", "tests.acceptance.tasks", "--dsn", dsn, env=env) as worker:
        assert "asyncio event loop" in started_line(worker)


def test_enqueue_show_and_cancel_a_job(dsn: str) -> None:
    enqueued = run_cli("enqueue", "app.hello", '{"name": "x"}', "--priority", "3", "--dsn", dsn)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = int(enqueued.stdout)
    shown = json.loads(run_cli("job", str(job_id), "--dsn", dsn).stdout)
    assert shown["args"] == {"name": "x"} and shown["priority"] == 3 and shown["status"] == "queued"
    cancelled = run_cli("cancel", str(job_id), "--dsn", dsn)
    assert cancelled.stdout.strip() == "aborted"
    assert_one_clear_line(run_cli("cancel", "999999", "--dsn", dsn), "no job 999999")
    assert_one_clear_line(run_cli("enqueue", "t", "{not json", "--dsn", dsn), "JSON")
    assert_one_clear_line(run_cli("enqueue", "t", "--queue", "bad queue", "--dsn", dsn), "queue")


def test_the_demo_runs_real_jobs(dsn: str) -> None:
    result = run_cli("demo", "--jobs", "9", "--rate", "50", "--dsn", dsn, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("jobs: ")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status, count(*) FROM pgjobs.jobs GROUP BY status").fetchall()
    counts = dict(rows)
    # The demo's flaky task may fail all its attempts now and then: that is what it shows.
    assert sum(counts.values()) == 9 and set(counts) <= {"complete", "failed"} and counts["complete"] >= 6


def test_a_module_with_a_bad_cron_expression_is_one_line(dsn: str) -> None:
    result = run_cli("worker", "tests.acceptance.bad_tasks", "--dsn", dsn)
    assert_one_clear_line(result, "bad cron expression", "61 * * * *")


def test_garbage_arguments_are_one_line(dsn: str) -> None:
    assert_one_clear_line(run_cli("job", "12", "--dsn", "not a dsn at all"), "cannot connect")
    assert_one_clear_line(run_cli("backfill", "x", "--start", "yesterday", "--end", "now", "--dsn", dsn), "ISO")
    assert_one_clear_line(run_cli("schedules", "pause", "--dsn", dsn), "NAME")
    assert_one_clear_line(run_cli("worker-stop", "nobody", "--dsn", dsn), "no worker")
    assert_one_clear_line(run_cli("enqueue", "t", "[1]", "--priority", "99999999", "--dsn", dsn), "priority")


def test_queue_commands_pause_limit_and_list(dsn: str) -> None:
    assert run_cli("enqueue", "t", "--queue", "emails", "--dsn", dsn).returncode == 0
    paused = run_cli("queue", "pause", "emails", "--dsn", dsn)
    assert paused.returncode == 0 and "emails  paused" in paused.stdout, paused.stderr
    limited = run_cli("queue", "limit", "emails", "--rate", "600/m", "--max-active", "5", "--group-rate", "2/10s",
                      "--dsn", dsn)  # fmt: skip
    assert "rate=600/60s max-active=5 group-rate=2/10s" in limited.stdout, limited.stderr
    listed = run_cli("queues", "--dsn", dsn).stdout
    assert "emails  paused  queued=1" in listed
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT paused, rate_limit, rate_period, max_active FROM pgjobs.queues").fetchone()
    assert row == (True, 600, 60.0, 5)
    assert "emails  running" in run_cli("queue", "resume", "emails", "--dsn", dsn).stdout
    assert_one_clear_line(run_cli("queue", "limit", "emails", "--rate", "fast", "--dsn", dsn), "not a rate")
    assert_one_clear_line(run_cli("queue", "limit", "emails", "--max-active", "-1", "--dsn", dsn), "max_active")
    assert_one_clear_line(run_cli("queue", "limit", "emails", "--dsn", dsn), "needs --rate")


def test_jobs_retry_and_delete_commands(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_id = conn.execute("SELECT pgjobs.enqueue('app.t', max_attempts => 1)").fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
        conn.execute("SELECT pgjobs.fail(%s, 'boom')", [job_id])
    listed = run_cli("jobs", "--status", "failed", "--json", "--dsn", dsn)
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [job_id], listed.stderr
    assert run_cli("retry", str(job_id), "--dsn", dsn).stdout.strip() == "queued"
    assert_one_clear_line(run_cli("retry", str(job_id), "--dsn", dsn), "neither failed nor aborted")
    assert "0 job(s) queued again" in run_cli("retry", "--failed", "--queue", "default", "--dsn", dsn).stdout
    assert run_cli("delete", str(job_id), "--dsn", dsn).stdout.strip() == "deleted"
    assert_one_clear_line(run_cli("delete", str(job_id), "--dsn", dsn), f"no job {job_id}")
    assert json.loads(run_cli("queues", "--json", "--dsn", dsn).stdout or "null") is None  # nothing left


def test_bulk_retry_goes_in_steps_with_progress_and_listings_speak_json(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.enqueue_many(ARRAY['app.t'], array_fill('{}'::jsonb, ARRAY[1200]))")
        conn.execute("SELECT pgjobs.enqueue('app.other')")
        conn.execute("SELECT pgjobs.worker_register('w1', 'host', 1, 'me', '{default}', 4, 60)")
        claimed = conn.execute("SELECT id FROM pgjobs.dequeue('w1', '{default}', 2000)").fetchall()
        conn.execute(
            "SELECT pgjobs.fail(id, 'boom', retry => false) FROM unnest(%s::bigint[]) AS id", [[r[0] for r in claimed]]
        )
        retried = run_cli("retry", "--failed", "--task", "app.t", "--dsn", dsn)
        assert retried.returncode == 0 and retried.stdout.strip() == "1200 job(s) queued again", retried.stderr
        # Not a terminal: plain progress lines on stderr, never more than one a tenth.
        lines = retried.stderr.splitlines()
        assert lines[-1] == "retry: 1200/1200" and 3 <= len(lines) <= 11, lines
        counts = dict(conn.execute("SELECT task, count(*) FROM pgjobs.jobs WHERE status = 'queued' GROUP BY task"))
        assert counts == {"app.t": 1200}  # app.other stays failed
        conn.execute("SELECT pgjobs.schedule('nightly', 'app.t', cron => '0 3 * * *')")
    workers = [json.loads(line) for line in run_cli("workers", "--json", "--dsn", dsn).stdout.splitlines()]
    assert [(w["id"], w["status"]) for w in workers] == [("w1", "running")]
    listed = [json.loads(line) for line in run_cli("schedules", "--json", "--dsn", dsn).stdout.splitlines()]
    assert [(s["name"], s["cron"]) for s in listed] == [("nightly", "0 3 * * *")]


def test_health_exit_status_follows_what_it_finds(dsn: str) -> None:
    healthy = run_cli("health", "--dsn", dsn)
    assert healthy.returncode == 0 and healthy.stdout.splitlines()[-1] == "pgjobs health: OK", healthy.stdout
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.enqueue('app.t')")
        stranded = run_cli("health", "--dsn", dsn)  # a job is due and no worker is alive
        assert stranded.returncode == 2 and "CRITICAL workers_alive - 0" in stranded.stdout, stranded.stdout
        conn.execute("SELECT pgjobs.worker_register('w1', 'host', 1, 'me', '{default}', 4, 60)")
        assert run_cli("health", "--dsn", dsn).returncode == 0
        waited = run_cli("health", "--age", "0:100000", "--json", "--dsn", dsn)
    assert waited.returncode == 1
    states = {(r["metric"], r["subject"]): r["state"] for r in json.loads(waited.stdout)}
    assert states[("queue_oldest_seconds", "default")] == "WARNING" and states[("workers_alive", "")] == "OK"
