"""Roles and privileges, the search_path attack, injection through names, limits on payloads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

import pgjobs
from pgjobs.reaper import ReapCounts, Reaper, ReaperConfig
from pgjobs.schedules import Scheduler

Conn = psycopg.Connection[dict[str, Any]]


def refused(c: Conn, query: str, params: Any = None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute(query, params)


def test_a_client_may_enqueue_cancel_and_read_only_its_own_jobs(login: Any, conn: Conn) -> None:
    alice, bob = login("pgjobs_client"), login("pgjobs_client")
    mine = alice.execute("SELECT pgjobs.enqueue('t') AS id").fetchone()["id"]  # type: ignore[index]
    bob.execute("SELECT pgjobs.enqueue('t')")
    alice.execute("""SELECT * FROM pgjobs.enqueue_many('[{"task": "u"}]')""")
    assert [r["task"] for r in alice.execute("SELECT task FROM pgjobs.jobs ORDER BY id")] == ["t", "u"]
    assert alice.execute("SELECT pgjobs.cancel(%s) AS s", [mine]).fetchone() == {"s": "aborted"}
    alice.execute("SELECT pgjobs.listen('pgjobs.done')")  # what wait() does for a client
    refused(alice, "SELECT * FROM pgjobs.listeners")
    refused(alice, "DELETE FROM pgjobs.listeners")
    refused(alice, "SELECT * FROM pgjobs.dequeue('x', '{default}', 1)")
    refused(alice, "SELECT pgjobs.complete(%s)", [mine])
    refused(alice, "UPDATE pgjobs.jobs SET status = 'complete'")
    refused(alice, "INSERT INTO pgjobs.jobs (task) VALUES ('sneaky')")
    refused(alice, "DELETE FROM pgjobs.jobs")
    refused(alice, "SELECT * FROM pgjobs.workers")
    refused(alice, "SELECT pgjobs._refuse('a', 'b')")
    refused(alice, "SELECT pgjobs.schedule('s', 't', every => 1)")
    refused(alice, "CREATE TABLE pgjobs.mine (x int)")
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.jobs").fetchone() == {"n": 3}


def test_a_client_reads_its_own_finished_jobs_in_history_and_no_one_elses(login: Any, conn: Conn) -> None:
    alice, bob = login("pgjobs_client"), login("pgjobs_client")
    mine = alice.execute("SELECT pgjobs.enqueue('t') AS id").fetchone()["id"]  # type: ignore[index]
    theirs = bob.execute("SELECT pgjobs.enqueue('t') AS id").fetchone()["id"]  # type: ignore[index]
    conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 2)")
    conn.execute("SELECT pgjobs.complete_many(%s)", [[mine, theirs]])
    conn.execute("SELECT * FROM pgjobs.reap()")
    part = conn.execute("SELECT tableoid::regclass::text AS p FROM pgjobs.jobs WHERE id = %s", [mine]).fetchone()
    assert part is not None and part["p"].startswith("pgjobs.jobs_done_2")  # in history now
    rows = alice.execute("SELECT id, status FROM pgjobs.jobs").fetchall()
    assert rows == [{"id": mine, "status": "complete"}]
    assert alice.execute("SELECT count(*) AS n FROM pgjobs.jobs WHERE id = %s", [theirs]).fetchone() == {"n": 0}
    # The partitions themselves are not the client's to read, or row security would not apply.
    for table in ("pgjobs.jobs_live", "pgjobs.jobs_done", part["p"]):
        refused(alice, f"SELECT * FROM {table}")


def test_a_worker_may_run_jobs_and_read_all_but_not_write_tables(login: Any, conn: Conn) -> None:
    client, worker = login("pgjobs_client"), login("pgjobs_worker")
    client.execute("SELECT pgjobs.enqueue('t')")
    worker.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 1, 5)")
    (job,) = worker.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 5)").fetchall()
    assert worker.execute("SELECT pgjobs.complete(%s) AS ok", [job["id"]]).fetchone() == {"ok": True}
    assert len(worker.execute("SELECT * FROM pgjobs.jobs").fetchall()) == 1
    worker.execute("SELECT * FROM pgjobs.reap()")
    worker.execute("SELECT pgjobs.schedule('s', 't', every => 60)")
    refused(worker, "UPDATE pgjobs.jobs SET status = 'queued'")
    refused(worker, "DROP TABLE pgjobs.jobs")
    refused(worker, "SELECT pgjobs._schedule_job(s, now()) FROM pgjobs.schedules s")
    refused(worker, "SELECT pgjobs.harden()")


def test_a_worker_role_runs_the_scheduler_and_the_reaper_without_writing_a_table(login: Any, conn: Conn) -> None:
    worker = login("pgjobs_worker")
    conn.execute("SELECT pgjobs.schedule('soon', 't', every => 3600, trigger_on_start => true)")
    conn.execute("SELECT pgjobs.worker_register('gone', 'h', 1, 'u', '{default}', 1, 1)")
    orphan = conn.execute("SELECT pgjobs.enqueue('t') AS id").fetchone()["id"]  # type: ignore[index]
    conn.execute("SELECT * FROM pgjobs.dequeue('gone', '{default}', 1)")
    conn.execute("UPDATE pgjobs.workers SET heartbeat_at = now() - interval '1 minute' WHERE id = 'gone'")

    async def main() -> tuple[int, ReapCounts | None]:
        scheduler, reaper = Scheduler(worker.info.dsn), Reaper(worker.info.dsn, ReaperConfig())
        try:
            return await scheduler.run_once(), await reaper.run_once()
        finally:
            await scheduler._pool.close()
            await reaper._pool.close()

    fired, counts = asyncio.run(main())
    assert fired == 1
    assert counts is not None and (counts.dead_workers, counts.reset) == (1, 1)
    assert conn.execute("SELECT status FROM pgjobs.jobs WHERE id = %s", [orphan]).fetchone() == {"status": "queued"}
    # Through the functions only: the table itself is still not the worker's to lock or write.
    refused(worker, "SELECT * FROM pgjobs.schedules FOR UPDATE")
    refused(worker, "UPDATE pgjobs.schedules SET next_run_at = NULL")
    refused(worker, "UPDATE pgjobs.leases SET expires_at = 'infinity'")
    client = login("pgjobs_client")
    refused(client, "SELECT * FROM pgjobs.schedule_due(10)")


def test_the_search_path_cannot_shadow_pgjobs_or_builtins(dsn: str, login: Any, conn: Conn) -> None:
    attacker = login("pgjobs_client")
    role = attacker.execute("SELECT current_user AS r").fetchone()["r"]  # type: ignore[index]
    conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
        sql.Identifier(conn.info.dbname), sql.Identifier(role)))  # fmt: skip
    attacker.execute("CREATE SCHEMA evil")
    attacker.execute("CREATE TABLE evil.calls (f text)")
    attacker.execute("GRANT INSERT ON evil.calls TO PUBLIC")
    for fn, args, returns in [
        ("now", "", "timestamptz"),
        ("jsonb_typeof", "jsonb", "text"),
        ("pg_notify", "text, text", "void"),
        ("coalesce_text", "text", "text"),
        ("queue_channel", "text", "text"),
    ]:
        body = f"INSERT INTO evil.calls VALUES ('{fn}'); SELECT NULL::{returns}"
        attacker.execute(f"CREATE FUNCTION evil.{fn}({args}) RETURNS {returns} LANGUAGE sql AS $${body}$$")
    attacker.execute("CREATE TABLE evil.jobs (id bigint)")  # a table named like ours
    attacker.execute("CREATE OPERATOR evil.= (FUNCTION = int4eq, LEFTARG = int4, RIGHTARG = int4)")
    attacker.execute("SET search_path = evil, pg_catalog, pgjobs")
    job_id = attacker.execute("SELECT pgjobs.enqueue('t', '{\"a\": 1}') AS id").fetchone()["id"]  # type: ignore[index]
    attacker.execute("SELECT pgjobs.cancel(%s)", [job_id])
    assert attacker.execute("SELECT count(*) AS n FROM evil.calls").fetchone() == {"n": 0}
    row = conn.execute("SELECT status, args FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
    assert row == {"status": "aborted", "args": {"a": 1}}


NASTY = [
    "'; DROP TABLE pgjobs.jobs; --",
    'x"); DELETE FROM pgjobs.jobs; --',
    "100%_%s%(x)s",
    "ünïcødé-名前-🚀",
    "a" * 10_000,
    "$$; SELECT 1; $$",
    "\\' OR 1=1",
]


@pytest.mark.parametrize("name", NASTY)
def test_names_users_control_cannot_inject(env_dsn: str, conn: Conn, name: str) -> None:
    kept = pgjobs.enqueue("t")
    # Queue names have a narrow character set: refused, nothing stored.
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        pgjobs.enqueue("t", queue=name)
    # Keys, group keys and schedule names are stored as given (bounded in size).
    short = name[:300]
    job = pgjobs.enqueue("t", key=short, group_key=short, meta={short: short}, args={"v": name})
    row = conn.execute("SELECT key, group_key, meta, args FROM pgjobs.jobs WHERE id = %s", [job.id]).fetchone()
    assert row == {"key": short, "group_key": short, "meta": {short: short}, "args": {"v": name}}
    if len(name) > 1000:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="key"):
            pgjobs.enqueue("t", key=name)
    schedule = name[:200]
    conn.execute("SELECT pgjobs.schedule(%s, 't', every => 60)", [schedule])
    assert conn.execute("SELECT name FROM pgjobs.schedules").fetchone() == {"name": schedule}
    assert conn.execute("SELECT pgjobs.unschedule(%s) AS ok", [schedule]).fetchone() == {"ok": True}
    task = name.replace(" ", "_")[:200]
    assert pgjobs.enqueue(task).task == task
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.jobs WHERE id = %s", [kept.id]).fetchone() == {"n": 1}


def test_payload_caps_are_enforced_and_configurable(conn: Conn) -> None:
    big = Jsonb({"blob": "x" * 2_000_000})
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"args: is \d+ bytes, over the cap"):
        conn.execute("SELECT pgjobs.enqueue('t', %s)", [big])
    # The operator's, for the database (a session's own SET counts for nothing: test_limits).
    database = sql.Identifier(conn.execute("SELECT current_database() AS d").fetchone()["d"])  # type: ignore[index]
    conn.execute(sql.SQL("ALTER DATABASE {} SET pgjobs.max_payload = '4MB'").format(database))
    conn.execute("SELECT pgjobs.enqueue('t', %s)", [big])
    conn.execute(sql.SQL("ALTER DATABASE {} RESET pgjobs.max_payload").format(database))
    small = conn.execute("SELECT pgjobs.enqueue('t') AS id").fetchone()["id"]  # type: ignore[index]
    conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 5)")
    assert conn.execute("SELECT pgjobs.complete(%s, %s) AS ok", [small, big]).fetchone() == {"ok": True}
    result = conn.execute("SELECT result FROM pgjobs.jobs WHERE id = %s", [small]).fetchone()["result"]  # type: ignore[index]
    assert result["pgjobs_truncated"] is True and result["bytes"] > 1_000_000 and result["start"].startswith('{"blob"')


def test_a_huge_error_keeps_its_head_and_tail(conn: Conn) -> None:
    job_id = conn.execute("SELECT pgjobs.enqueue('t', max_attempts => 1) AS id").fetchone()["id"]  # type: ignore[index]
    conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
    error = "HEAD" + "x" * 500_000 + "TAIL"
    conn.execute("SELECT pgjobs.fail(%s, %s)", [job_id, error])
    kept = conn.execute("SELECT error FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()["error"]  # type: ignore[index]
    assert kept.startswith("HEAD") and kept.endswith("TAIL") and "characters cut by pgjobs" in kept
    assert len(kept) < 70_000


def test_nul_characters_are_refused_in_arguments_naming_them(env_dsn: str) -> None:
    with pytest.raises(pgjobs.ArgumentError, match=r"argument 'note' of task 't' contains a NUL"):
        pgjobs.enqueue("t", note="a\x00b")
    with pytest.raises(pgjobs.ArgumentError, match="meta contains a NUL"):
        pgjobs.enqueue("t", meta={"k": "\x00"})
    assert pgjobs.enqueue("t", note="a\\u0000b").args == {"note": "a\\u0000b"}  # a backslash, not a NUL


def test_refusals_carry_their_documented_sqlstate(conn: Conn) -> None:
    cases = [
        ("SELECT pgjobs.enqueue('t', queue => '')", "22023"),
        ("SELECT pgjobs.enqueue('t', '{\"a\": \"\\u0000\"}')", "22P05"),
        ("SELECT pgjobs.enqueue('t', '{not json')", "22P02"),
        ("SELECT pgjobs.enqueue('t', priority => '99999999999'::integer)", "22003"),
        ("SELECT * FROM pgjobs.worker_heartbeat('nobody')", "P0002"),
        ("SELECT * FROM pgjobs.backfill('nobody', '{}')", "P0002"),
    ]
    for query, state in cases:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(query)
        assert err.value.sqlstate == state, (query, err.value)


def test_operator_verbs_belong_to_pgjobs_admin_not_to_workers(conn: Conn, login: Callable[[str], Conn]) -> None:
    job_id = conn.execute("SELECT pgjobs.enqueue('t') AS id").fetchone()["id"]
    conn.execute("SELECT pgjobs.cancel(%s)", [job_id])
    worker, admin = login("pgjobs_worker"), login("pgjobs_admin")
    for call in ("SELECT pgjobs.retry(%s)", "SELECT pgjobs.delete_job(%s)"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker.execute(call, [job_id])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker.execute("SELECT pgjobs.set_queue('q', paused => true)")
    assert worker.execute("SELECT count(*) AS n FROM pgjobs.job_list()").fetchone()["n"] == 1  # reads stay
    assert admin.execute("SELECT pgjobs.retry(%s) AS s", [job_id]).fetchone()["s"] == "queued"
    assert admin.execute("SELECT pgjobs.delete_job(%s) AS d", [job_id]).fetchone()["d"] is True
