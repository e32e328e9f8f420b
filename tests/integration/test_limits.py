"""Limits on what a job stores (docs/guides/security.md, Limits): JSON that every mainstream decoder reads, and a
payload cap that is the operator's, not a client's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import pgjobs

Conn = psycopg.Connection[dict[str, Any]]

# As psql would send them: JSON text that PostgreSQL parses itself.
DEEP = "(repeat('[', 1000) || repeat(']', 1000))::jsonb"
HUGE = """'{"n": 1e5000}'::jsonb"""


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def nested(depth: int) -> str:
    """depth arrays, one inside the other, as JSON text."""
    return "[" * depth + "]" * depth


def refused(conn: Conn, query: str, params: Any = None, match: str = "") -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=match):
        conn.execute(query, params)


def count(conn: Conn) -> int:
    return int(one(conn, "SELECT count(*) FROM pgjobs.jobs"))


def run(conn: Conn, args: str = "'{}'") -> int:
    """A job, claimed: its id."""
    job_id = int(one(conn, f"SELECT pgjobs.enqueue('t', {args})"))
    conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")
    return job_id


def test_deep_nesting_and_huge_numbers_are_refused_by_every_enqueue(conn: Conn) -> None:
    depth = r"args: nests arrays and objects more than 64 deep"
    number = r"args: holds a number of more than 308 characters"
    for doc, why in ((DEEP, depth), (HUGE, number)):
        refused(conn, f"SELECT pgjobs.enqueue('t', {doc})", match=f"^pgjobs: {why}")
        refused(conn, f"SELECT pgjobs.enqueue_job('t', {doc})", match=f"^pgjobs: {why}")
        refused(conn, f"SELECT pgjobs.enqueue('t', meta => jsonb_build_object('m', {doc}))", match="meta: ")
        # enqueue_many: arrays (one for all, one a job), a JSON array, with dependencies.
        refused(conn, f"SELECT * FROM pgjobs.enqueue_many(ARRAY['t'], ARRAY[{doc}])", match=f"jobs\\[0\\]\\.{why}")
        refused(conn, f"SELECT * FROM pgjobs.enqueue_many(ARRAY['t'], ARRAY['{{}}', {doc}])", match=r"jobs\[1\]\.args")
        refused(
            conn,
            f"SELECT * FROM pgjobs.enqueue_many(ARRAY['t'], ARRAY['{{}}'::jsonb], "
            f"meta => ARRAY[jsonb_build_object('m', {doc})])",
            match=r"jobs\[0\]\.meta",
        )
        refused(
            conn,
            f"""SELECT * FROM pgjobs.enqueue_many(jsonb_build_array('{{"task": "t"}}'::jsonb,
                                                                  jsonb_build_object('task', 't', 'args', {doc})))""",
            match=f"jobs\\[1\\]\\.{why}",
        )
        refused(
            conn,
            f"""SELECT * FROM pgjobs.enqueue_many(jsonb_build_array('{{"task": "t"}}'::jsonb,
                    jsonb_build_object('task', 't', 'depends_on_items', '[0]'::jsonb,
                                       'meta', jsonb_build_object('m', {doc}))))""",
            match=r"jobs\[1\]\.meta",
        )
    assert count(conn) == 0


def test_the_limits_are_exact(conn: Conn) -> None:
    # 64 arrays deep is the limit; the smallest document 65 deep (520 bytes) is refused.
    one(conn, "SELECT pgjobs.enqueue('t', %s::jsonb)", [nested(64)])
    one(conn, "SELECT pgjobs.enqueue('t', %s::jsonb)", ["[" * 62 + '{"a": {}}' + "]" * 62])
    refused(conn, "SELECT pgjobs.enqueue('t', %s::jsonb)", [nested(65)], match="64 deep")
    deep_object = '{"a": ' * 64 + "{}" + "}" * 64  # 65 objects
    refused(conn, "SELECT pgjobs.enqueue('t', %s::jsonb)", [deep_object], match="64 deep")
    # A number of 308 characters as stored is the limit, however it was written: 1e307 is stored
    # as 308 digits, 1e308 as 309; -1e-306 as -0.(305 zeros)1.
    for ok in ("1e307", "-1e306", "-1e-305", "9223372036854775807", "1.7976931348623157e300", "0." + "3" * 306):
        one(conn, "SELECT pgjobs.enqueue('t', %s::jsonb)", [f'{{"k": [1, {ok}]}}'])
    for bad in ("1e308", "-1e307", "-1e-306", "1" + "0" * 400, "0." + "3" * 307):
        refused(conn, "SELECT pgjobs.enqueue('t', %s::jsonb)", [f'{{"k": [1, {bad}]}}'], match="308 characters")
    # Digits in a string are text, whatever their number.
    one(conn, "SELECT pgjobs.enqueue('t', %s)", [Jsonb({"s": "1" * 5000})])
    assert count(conn) == 9


def test_a_result_past_the_limits_is_kept_as_a_note_and_the_job_completes(conn: Conn) -> None:
    first, second, third = (run(conn) for _ in range(3))
    assert one(conn, f"SELECT pgjobs.complete(%s, {DEEP})", [first]) is True
    done = conn.execute(f"SELECT pgjobs.complete_many(%s, ARRAY[{HUGE}, '[1, 2]']) AS id", [[second, third]])
    assert sorted(r["id"] for r in done) == [second, third]
    results = {r["id"]: r for r in conn.execute("SELECT id, status, result FROM pgjobs.jobs ORDER BY id").fetchall()}
    assert {r["status"] for r in results.values()} == {"complete"}
    deep, huge = results[first]["result"], results[second]["result"]
    assert deep["pgjobs_truncated"] is True and "64 deep" in deep["reason"] and deep["start"].startswith("[[[[")
    assert huge["pgjobs_truncated"] is True and "308 characters" in huge["reason"]
    assert huge["start"].startswith('{"n": 1000') and len(huge["start"]) == 1000
    assert results[third]["result"] == [1, 2]


@pgjobs.task(name="limits.shaped")
def shaped(kind: str) -> Any:
    if kind == "deep":
        value: list[Any] = []
        for _ in range(99):
            value = [value]
        return value  # 100 deep: Python encodes it, a .NET or Rust reader would not read it
    return 10**400 if kind == "huge" else {"ok": kind}


def test_a_worker_completes_runs_whose_results_are_past_the_limits(env_dsn: str) -> None:
    async def main() -> list[pgjobs.Job]:
        worker = pgjobs.Worker(env_dsn, poll_interval=0.2)
        running = asyncio.create_task(worker.run())
        try:
            ids = await pgjobs.enqueue_many_async([shaped.job(kind) for kind in ("deep", "huge", "fine")])
            return await pgjobs.wait_async(ids, 30, dsn=env_dsn)
        finally:
            worker.stop()
            await running

    deep, huge, fine = asyncio.run(main())
    assert [j.status for j in (deep, huge, fine)] == [pgjobs.JobStatus.COMPLETE] * 3
    assert deep.result["pgjobs_truncated"] is True and "64 deep" in deep.result["reason"]
    assert huge.result["pgjobs_truncated"] is True and huge.result["start"].startswith("1000")
    assert fine.result == {"ok": "fine"}


def test_touch_caps_and_checks_the_meta_it_merges(conn: Conn) -> None:
    job_id = run(conn)
    touch = "SELECT pgjobs.touch(%s, 1, 0.5, %s)"
    assert one(conn, touch, [job_id, Jsonb({"step": 1})]) is True
    refused(
        conn,
        f"SELECT pgjobs.touch(%s, 1, NULL, jsonb_build_object('m', {DEEP}))",
        [job_id],
        match="^pgjobs: meta: nests",
    )
    refused(conn, f"SELECT pgjobs.touch(%s, 1, NULL, {HUGE})", [job_id], match="^pgjobs: meta: holds a number")
    refused(conn, touch, [job_id, Jsonb({"blob": "x" * 5_000_000})], match=r"^pgjobs: meta: is \d+ bytes, over the cap")
    # Each part under the cap, the merged meta over it: refused, and the stored meta stays.
    half = "y" * 600_000
    assert one(conn, touch, [job_id, Jsonb({"a": half})]) is True
    refused(conn, touch, [job_id, Jsonb({"b": half})], match="merged into the job's meta makes it")
    row = conn.execute("SELECT meta, progress FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
    assert row == {"meta": {"step": 1, "a": half}, "progress": 0.5}
    assert one(conn, "SELECT pgjobs.touch(%s, 1, 0.75)", [job_id]) is True  # no meta: nothing to check


def test_a_session_cannot_lift_the_cap_for_itself(conn: Conn, login: Callable[[str], Conn]) -> None:
    big = Jsonb({"blob": "x" * 2_000_000})
    for session in (conn, login("pgjobs_client"), login("pgjobs_worker")):
        session.execute("SET pgjobs.max_payload = '1GB'")
        assert one(session, "SELECT pgjobs.max_payload()") == 1048576
        refused(session, "SELECT pgjobs.enqueue('t', %s)", [big], match=r"args: is \d+ bytes, over the cap of 1048576")
        refused(session, "SELECT pgjobs.enqueue('t', meta => %s)", [big], match="meta: is")
    client = login("pgjobs_client")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        client.execute(
            sql.SQL("ALTER DATABASE {} SET pgjobs.max_payload = '1GB'").format(
                sql.Identifier(one(client, "SELECT current_database()"))
            )
        )
    assert count(conn) == 0


def test_the_operator_sets_the_cap_for_the_database(dsn: str, conn: Conn) -> None:
    database = sql.Identifier(one(conn, "SELECT current_database()"))
    big = Jsonb({"blob": "x" * 2_000_000})
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as before:  # opened before the change
        conn.execute(sql.SQL("ALTER DATABASE {} SET pgjobs.max_payload = '4MB'").format(database))
        assert one(before, "SELECT pgjobs.max_payload()") == 4 * 1024 * 1024  # at once, for every session
        one(before, "SELECT pgjobs.enqueue('t', %s)", [big])
        before.execute("SET pgjobs.max_payload = '1GB'")  # a session's own value counts for nothing
        refused(before, "SELECT pgjobs.enqueue('t', %s)", [Jsonb({"blob": "x" * 5_000_000})], match="cap of 4194304")
        conn.execute(sql.SQL("ALTER DATABASE {} RESET pgjobs.max_payload").format(database))
        refused(before, "SELECT pgjobs.enqueue('t', %s)", [big], match="cap of 1048576")
    # Every database's (ALTER ROLE ALL SET), under this database's own: shown in a transaction
    # rolled back, so that no other database on the server sees it.
    conn.execute("BEGIN")
    try:
        conn.execute("ALTER ROLE ALL SET pgjobs.max_payload = '2MB'")
        assert one(conn, "SELECT pgjobs.max_payload()") == 2 * 1024 * 1024
        conn.execute(sql.SQL("ALTER DATABASE {} SET pgjobs.max_payload = '3MB'").format(database))
        assert one(conn, "SELECT pgjobs.max_payload()") == 3 * 1024 * 1024
    finally:
        conn.execute("ROLLBACK")
    assert one(conn, "SELECT pgjobs.max_payload()") == 1048576


def test_a_cap_below_8_kb_counts_as_8_kb(conn: Conn) -> None:
    job_id = run(conn)
    database = sql.Identifier(one(conn, "SELECT current_database()"))
    conn.execute(sql.SQL("ALTER DATABASE {} SET pgjobs.max_payload = '1kB'").format(database))
    assert one(conn, "SELECT pgjobs.max_payload()") == 8192
    one(conn, "SELECT pgjobs.enqueue('t', %s)", [Jsonb({"s": "x" * 8000})])
    refused(conn, "SELECT pgjobs.enqueue('t', %s)", [Jsonb({"s": "x" * 9000})], match="over the cap of 8192")
    refused(conn, "SELECT * FROM pgjobs.enqueue_many(ARRAY['t'], %s)", [[Jsonb({"s": "x" * 9000})]], match="8192")
    refused(conn, "SELECT pgjobs.touch(%s, 1, NULL, %s)", [job_id, Jsonb({"s": "x" * 9000})], match="8192")
    assert one(conn, "SELECT pgjobs.touch(%s, 1, NULL, %s)", [job_id, Jsonb({"a": "x" * 5000})]) is True
    refused(conn, "SELECT pgjobs.touch(%s, 1, NULL, %s)", [job_id, Jsonb({"b": "x" * 5000})], match="merged")
    assert one(conn, "SELECT pgjobs.complete(%s, %s)", [job_id, Jsonb({"s": "x" * 9000})]) is True
    assert one(conn, "SELECT result FROM pgjobs.jobs WHERE id = %s", [job_id])["pgjobs_truncated"] is True


def test_a_compressed_argument_is_measured_uncompressed(conn: Conn) -> None:
    # 20 MB of one letter, kept compressed in a table of the client's own: a few hundred kB stored.
    conn.execute("CREATE TEMP TABLE payload AS SELECT jsonb_build_object('blob', repeat('x', 20000000)) AS a")
    stored = conn.execute("SELECT pg_column_size(a) AS n, pg_column_compression(a) AS how FROM payload").fetchone()
    assert stored is not None and stored["how"] is not None and stored["n"] < 1048576
    refused(conn, "SELECT pgjobs.enqueue('t', a) FROM payload", match=r"args: is 2000\d{4} bytes, over the cap")
    refused(conn, "SELECT pgjobs.enqueue('t', meta => a) FROM payload", match=r"meta: is 2000\d{4} bytes")
    refused(
        conn,
        "SELECT * FROM pgjobs.enqueue_many(ARRAY['t'], ARRAY(SELECT a FROM payload))",
        match=r"jobs\[0\]\.args: is",
    )
    job_id = run(conn)
    assert one(conn, "SELECT pgjobs.complete(%s, a) FROM payload", [job_id]) is True
    result = one(conn, "SELECT result FROM pgjobs.jobs WHERE id = %s", [job_id])
    assert result["pgjobs_truncated"] is True and result["bytes"] > 20_000_000
    assert count(conn) == 1
