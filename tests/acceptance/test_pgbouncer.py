"""Behind PgBouncer in transaction pooling mode: enqueue, the SQL API and `pgjobs worker` work
through it; LISTEN goes to PostgreSQL itself (--listen-dsn) or the worker polls. Without
PGJOBS_POOLED the pooler's refusal of the startup options tells pgjobs what it is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgjobs

from .helpers import Process, run_cli

pytestmark = pytest.mark.acceptance


def wait_for(conn: psycopg.Connection[Any], query: str, expected: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (row := conn.execute(query).fetchone()) != expected:
        assert time.monotonic() < deadline, f"{query} gave {row}, not {expected} within {timeout} s"
        time.sleep(0.05)


def test_the_client_api_works_through_a_transaction_pooler(
    dsn: str, pgbouncer: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pooled = pgbouncer(dsn)
    monkeypatch.setenv("PGJOBS_POOLED", "1")
    monkeypatch.setenv("PGJOBS_DSN", pooled)
    try:
        # More calls than psycopg's prepare threshold (5): a prepared statement would be missing on
        # the next server session PgBouncer hands out.
        jobs = [pgjobs.enqueue("t", i=i, queue="pooled") for i in range(12)]
        ids = pgjobs.enqueue_many([pgjobs.job("t", i=i, queue="pooled") for i in range(12)])
        assert len({j.id for j in jobs} | set(ids)) == 24
        assert pgjobs.get_job(ids[-1]).args == {"i": 11}  # type: ignore[union-attr]
        assert pgjobs.cancel(ids[0]) is pgjobs.JobStatus.ABORTED
        # wait() re-reads instead of listening: its job is cancelled meanwhile from elsewhere.
        with psycopg.connect(dsn, autocommit=True) as direct:
            direct.execute("SELECT pgjobs.cancel(%s)", [jobs[0].id])
        [waited] = pgjobs.wait([jobs[0].id], timeout=5)  # type: ignore[list-item]
        assert waited.status is pgjobs.JobStatus.ABORTED
        with pytest.raises(pgjobs.ConfigurationError, match="session of its own"):
            pgjobs.migrate(pooled)
    finally:
        pgjobs.close()


def test_the_sql_api_works_through_a_transaction_pooler(dsn: str, pgbouncer: Callable[[str], str]) -> None:
    with psycopg.connect(pgbouncer(dsn), autocommit=True, prepare_threshold=None) as conn:
        ids = [conn.execute("SELECT pgjobs.enqueue('t', queue => 'sql')").fetchone()[0] for _ in range(8)]  # type: ignore[index]
        conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{sql}', 8, 5)")
        claimed = [r[0] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{sql}', 8)")]
        assert sorted(claimed) == sorted(ids)
        assert conn.execute("SELECT pgjobs.complete(%s, '1', 1)", [ids[0]]).fetchone() == (True,)
        assert conn.execute("SELECT status FROM pgjobs.worker_heartbeat('w', %s, %s)",
                            [ids[1:], [1] * 7]).fetchone() == ("running",)  # fmt: skip


def test_a_worker_behind_the_pooler_polls_and_hears_cancels_at_its_heartbeats(
    dsn: str, pgbouncer: Callable[[str], str], tmp_path: Path
) -> None:
    pooled = pgbouncer(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.enqueue_many(ARRAY['acceptance.record'], array_fill('{}'::jsonb, ARRAY[30]))")
        slow = conn.execute("SELECT pgjobs.enqueue('acceptance.record', '{\"seconds\": 60}')").fetchone()[0]  # type: ignore[index]
        args = ("--log-level", "info", "worker", "tests.acceptance.tasks", "--dsn", pooled, "--pooled",
                "--heart-rate", "1", "--poll-interval", "0.5", "-c", "4")  # fmt: skip
        with Process(*args, env={"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}) as worker:
            wait_for(conn, "SELECT count(*) FROM pgjobs.jobs WHERE status = 'complete'", (30,))
            wait_for(conn, f"SELECT status FROM pgjobs.jobs WHERE id = {slow}", ("active",))
            conn.execute("SELECT pgjobs.cancel(%s)", [slow])
            wait_for(conn, f"SELECT status FROM pgjobs.jobs WHERE id = {slow}", ("aborted",), timeout=5)
            worker.signal()
            assert worker.wait(30) == 0, worker.output()
            assert "polling every 0.5 s" in worker.output()
            assert "prepared statement" not in worker.output()
        assert conn.execute("SELECT status FROM pgjobs.workers").fetchone() == ("stopped",)


def test_a_worker_behind_the_pooler_listens_on_its_listen_dsn(
    dsn: str, pgbouncer: Callable[[str], str], tmp_path: Path
) -> None:
    pooled = pgbouncer(dsn)
    # Polls 60 s apart: a job that starts at once was announced on the direct LISTEN session.
    args = ("--log-level", "warning", "worker", "tests.acceptance.tasks", "--dsn", pooled, "--pooled",
            "--listen-dsn", dsn, "--poll-interval", "60", "--heart-rate", "1")  # fmt: skip
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        Process(*args, env={"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}) as worker,
    ):
        wait_for(conn, "SELECT count(*) FROM pgjobs.workers WHERE status = 'running'", (1,))
        time.sleep(1.5)  # past the start-up claim
        for _ in range(3):
            job_id = conn.execute("SELECT pgjobs.enqueue('acceptance.record')").fetchone()[0]  # type: ignore[index]
            wait_for(conn, f"SELECT status FROM pgjobs.jobs WHERE id = {job_id}", ("complete",), timeout=10)
        worker.signal()
        assert worker.wait(30) == 0, worker.output()


def test_migrate_refuses_a_transaction_pooler_with_one_clear_line(dsn: str, pgbouncer: Callable[[str], str]) -> None:
    result = run_cli("migrate", "--dsn", pgbouncer(dsn), env={"PGJOBS_POOLED": "1"})
    assert result.returncode != 0 and "not through a transaction pooler" in result.stderr, result.stderr


def test_the_client_api_finds_an_undeclared_pooler_and_switches_to_pooled_mode(
    dsn: str, pgbouncer: Callable[[str], str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pooled = pgbouncer(dsn)
    monkeypatch.delenv("PGJOBS_POOLED", raising=False)
    monkeypatch.setenv("PGJOBS_DSN", pooled)
    caplog.set_level(logging.INFO, logger="pgjobs")
    try:
        # Past psycopg's prepare threshold (5), sync and async: no statement is prepared either.
        jobs = [pgjobs.enqueue("t", i=i, queue="found") for i in range(12)]
        ids = pgjobs.enqueue_many([pgjobs.job("t", i=i, queue="found") for i in range(12)])

        async def more() -> list[int]:
            try:
                return [(await pgjobs.enqueue_async("t", i=i, queue="found")).id for i in range(8)]  # type: ignore[misc]
            finally:
                await pgjobs.close_async()

        more_ids = asyncio.run(more())
        assert len({j.id for j in jobs} | set(ids) | set(more_ids)) == 32
        assert pgjobs.get_job(ids[-1]).args == {"i": 11}  # type: ignore[union-attr]
        switched = [r.getMessage() for r in caplog.records if "set PGJOBS_POOLED=1 to say so" in r.getMessage()]
        assert len(switched) == 1 and switched[0].startswith(pooled) and switched[0].count("\n") == 0, switched
        assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "pgjobs"), caplog.text
        # What needs a session of its own refuses the pooler it found, with one line.
        with pytest.raises(pgjobs.ConfigurationError, match="not through a transaction pooler"):
            pgjobs.migrate(pooled)
        with pytest.raises(pgjobs.ConfigurationError, match="session of its own"):
            next(iter(pgjobs.events(dsn=pooled, timeout=1)))
    finally:
        pgjobs.close()


def test_a_worker_given_an_undeclared_pooler_runs_jobs_in_pooled_mode(
    dsn: str, pgbouncer: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pooled = pgbouncer(dsn)
    monkeypatch.delenv("PGJOBS_POOLED", raising=False)
    args = ("--log-level", "info", "worker", "tests.acceptance.tasks", "--dsn", pooled,
            "--heart-rate", "1", "--poll-interval", "0.5", "-c", "4")  # fmt: skip
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        Process(*args, env={"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}) as worker,
    ):
        conn.execute("SELECT pgjobs.enqueue_many(ARRAY['acceptance.record'], array_fill('{}'::jsonb, ARRAY[20]))")
        wait_for(conn, "SELECT count(*) FROM pgjobs.jobs WHERE status = 'complete'", (20,), timeout=10)
        worker.signal()
        assert worker.wait(30) == 0, worker.output()
        output = worker.output()
        assert output.count("set PGJOBS_POOLED=1 to say so") == 1, output
        assert "unsupported startup parameter" not in output and 'prepared statement "' not in output, output
        assert "database unavailable" not in output, output


def test_a_worker_that_found_a_pooler_does_not_listen_through_it(
    dsn: str, pgbouncer: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pooled = pgbouncer(dsn)
    monkeypatch.delenv("PGJOBS_POOLED", raising=False)
    args = ("--log-level", "info", "worker", "tests.acceptance.tasks", "--dsn", pooled, "--poll-interval", "0.5")
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        Process(*args, env={"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}) as worker,
    ):
        wait_for(conn, "SELECT count(*) FROM pgjobs.workers WHERE status = 'running'", (1,), timeout=10)
        # Registered, the worker starts once its heart's session is open too: wait for its start line.
        deadline = time.monotonic() + 10
        while " started: " not in worker.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.signal()
        assert worker.wait(30) == 0, worker.output()
        assert "polling every 0.5 s" in worker.output(), worker.output()


def test_migrate_through_an_undeclared_pooler_exits_2_with_one_line(
    dsn: str, pgbouncer: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGJOBS_POOLED", raising=False)
    result = run_cli("migrate", "--dsn", pgbouncer(dsn), timeout=30)
    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "not through a transaction pooler" in line and "give the server's DSN" in line, line
