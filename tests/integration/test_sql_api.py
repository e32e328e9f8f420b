"""The SQL API as another language would call it: plain statements through a connection."""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def job(conn: Conn, job_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row


def dequeue(conn: Conn, n: int = 10, queues: list[str] | None = None, worker: str = "w1") -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM pgjobs.dequeue(%s, %s, %s)", [worker, queues or ["default"], n]).fetchall()


def test_enqueue_with_named_arguments_stores_every_option(conn: Conn) -> None:
    job_id = one(
        conn,
        """SELECT pgjobs.enqueue('email.send', '{"to":"a@b.c"}', priority => -5, queue => 'mail',
               group_key => 'user:1', max_attempts => 5, timeout => 30, heartbeat => 10,
               retry_delay => 2, retry_backoff => 60, ttl => 0, meta => '{"source":"psql"}')""",
    )
    row = job(conn, job_id)
    assert row["task"] == "email.send"
    assert row["args"] == {"to": "a@b.c"}
    assert (row["priority"], row["queue"], row["group_key"]) == (-5, "mail", "user:1")
    assert (row["max_attempts"], row["timeout"], row["heartbeat"]) == (5, 30, 10)
    assert (row["retry_delay"], row["retry_backoff"], row["ttl"]) == (2, 60, 0)
    assert row["meta"] == {"source": "psql"}
    assert row["status"] == "queued" and row["attempts"] == 0


def test_enqueue_defaults(conn: Conn) -> None:
    row = job(conn, one(conn, "SELECT pgjobs.enqueue('t')"))
    assert row["args"] == {} and row["queue"] == "default" and row["priority"] == 0
    assert row["max_attempts"] == 3 and row["timeout"] == 0 and row["ttl"] == 86400
    assert row["scheduled_at"] <= one(conn, "SELECT now()")


def test_enqueue_in_a_rolled_back_transaction_leaves_nothing_and_wakes_nobody(dsn: str, conn: Conn) -> None:
    conn.execute('LISTEN "pgjobs.queue.default"')
    with psycopg.connect(dsn) as other:
        other.execute("SELECT pgjobs.enqueue('t')")
        other.rollback()
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 0
    assert list(conn.notifies(timeout=0.3)) == []


def test_one_notification_per_queue_per_transaction(dsn: str, conn: Conn) -> None:
    conn.execute('LISTEN "pgjobs.queue.default"; LISTEN "pgjobs.queue.other"')
    with psycopg.connect(dsn) as other:
        for _ in range(5):
            other.execute("SELECT pgjobs.enqueue('t')")
        other.execute("SELECT pgjobs.enqueue('t', queue => 'other')")
        other.execute("""SELECT pgjobs.enqueue_many('[{"task":"a"},{"task":"b"}]')""")
    notes = list(conn.notifies(timeout=0.5))
    assert Counter(n.channel for n in notes) == {"pgjobs.queue.default": 1, "pgjobs.queue.other": 1}
    assert all(n.payload == "" for n in notes)  # no job data in payloads


def test_key_deduplicates_while_a_job_is_unfinished(conn: Conn) -> None:
    first = one(conn, "SELECT pgjobs.enqueue('t', key => 'k')")
    assert one(conn, "SELECT pgjobs.enqueue('t', '[1]', key => 'k')") == first
    dequeue(conn)
    assert one(conn, "SELECT pgjobs.enqueue('t', key => 'k')") == first  # active counts too
    assert one(conn, "SELECT pgjobs.complete(%s)", [first])
    second = one(conn, "SELECT pgjobs.enqueue('t', key => 'k')")
    assert second != first
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 2


def test_concurrent_enqueues_with_one_key_add_one_job(dsn: str, conn: Conn) -> None:
    ids: list[int] = []
    barrier = threading.Barrier(8)

    def enqueue() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            barrier.wait()
            row = c.execute("SELECT pgjobs.enqueue('t', key => 'same')").fetchone()
            assert row is not None
            ids.append(row[0])

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 1


def test_enqueue_many_returns_ids_in_input_order_and_deduplicates_keys(conn: Conn) -> None:
    existing = one(conn, "SELECT pgjobs.enqueue('t', key => 'k1')")
    rows = conn.execute(
        """SELECT * FROM pgjobs.enqueue_many(%s)""",
        [
            Jsonb(
                [
                    {"task": "a", "args": [1], "priority": 3},
                    {"task": "b", "key": "k2", "queue": "q2"},
                    {"task": "c", "key": "k2"},
                    {"task": "d", "key": "k1", "delay": 60},
                ]
            )
        ],
    ).fetchall()
    assert [r["item"] for r in rows] == [0, 1, 2, 3]
    ids = [r["id"] for r in rows]
    assert ids[1] == ids[2] and ids[3] == existing and len({ids[0], ids[1], existing}) == 3
    assert job(conn, ids[0])["args"] == [1] and job(conn, ids[0])["priority"] == 3
    assert job(conn, ids[1])["queue"] == "q2"
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 3


def test_enqueue_many_from_arrays_spreads_single_values_and_deduplicates_keys(conn: Conn) -> None:
    existing = one(conn, "SELECT pgjobs.enqueue('t', key => 'k1')")
    rows = conn.execute(
        """SELECT * FROM pgjobs.enqueue_many(
               task => ARRAY['a'], args => ARRAY['[1]', '{"x": 2}', '{}', '{}']::jsonb[],
               queue => ARRAY['q1', NULL, 'q2', 'q2'], priority => ARRAY[5],
               key => ARRAY[NULL, 'k2', 'k2', 'k1'], delay => '{}')"""
    ).fetchall()
    assert [r["item"] for r in rows] == [0, 1, 2, 3]
    ids = [r["id"] for r in rows]
    assert ids[1] == ids[2] and ids[3] == existing and len({ids[0], ids[1], existing}) == 3
    first, second = job(conn, ids[0]), job(conn, ids[1])
    assert (first["task"], first["args"], first["queue"], first["priority"]) == ("a", [1], "q1", 5)
    assert (second["args"], second["queue"], second["priority"], second["key"]) == ({"x": 2}, "default", 5, "k2")
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 3
    assert conn.execute("SELECT * FROM pgjobs.enqueue_many(task => '{}', args => '{}')").fetchall() == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("SELECT pgjobs.enqueue_many(ARRAY['a', 'b', 'c'], ARRAY['{}', '{}']::jsonb[])", "args: must hold one"),
        ("SELECT pgjobs.enqueue_many(ARRAY['a', 'b c'], ARRAY['{}']::jsonb[])", "jobs[1].task"),
        ("SELECT pgjobs.enqueue_many(ARRAY['a'], ARRAY['{}', '{}']::jsonb[], ttl => ARRAY[1, -9])", "jobs[1].ttl"),
        # Two wrong jobs: the first in array order is the one reported.
        (
            "SELECT pgjobs.enqueue_many(ARRAY['a', 'b', 'c'], ARRAY['{}', '5', '{}']::jsonb[], ttl => ARRAY[1, 1, -9])",
            "jobs[1].args",
        ),
        # Options one for all are checked on the first job; every job's arguments and meta on their own.
        ("SELECT pgjobs.enqueue_many(ARRAY['a'], ARRAY['{}', '{}']::jsonb[], queue => ARRAY['a b'])", "jobs[0].queue"),
        ("SELECT pgjobs.enqueue_many(ARRAY['a b'], ARRAY['{}', '5']::jsonb[])", "jobs[0].task"),
        (
            "SELECT pgjobs.enqueue_many(ARRAY['a'], ARRAY['{}', '{}', '5']::jsonb[], queue => ARRAY['q'])",
            "jobs[2].args",
        ),
        (
            "SELECT pgjobs.enqueue_many(ARRAY['a'], ARRAY['{}', '{}']::jsonb[], meta => ARRAY['{}', '[]']::jsonb[])",
            "jobs[1].meta",
        ),
        (
            "SELECT pgjobs.enqueue_many(ARRAY['a'], ARRAY['{}', jsonb_build_object('x', repeat('x', 2000000))])",
            "jobs[1].args: is",
        ),
    ],
)
def test_enqueue_many_from_arrays_refuses_bad_input_and_adds_nothing(conn: Conn, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=rf"pgjobs: {re.escape(message)}"):
        conn.execute(call)
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_enqueue_many_takes_thousands_in_one_call(conn: Conn) -> None:
    docs = [{"task": "t", "args": {"i": i}} for i in range(5000)]
    ids = [r["id"] for r in conn.execute("SELECT * FROM pgjobs.enqueue_many(%s)", [Jsonb(docs)])]
    assert len(ids) == 5000 and ids == sorted(ids)
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 5000


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("SELECT pgjobs.enqueue('bad task')", "task"),
        ("SELECT pgjobs.enqueue('')", "task"),
        ("SELECT pgjobs.enqueue('t', '5')", "args"),
        ("SELECT pgjobs.enqueue('t', queue => 'a b')", "queue"),
        ("SELECT pgjobs.enqueue('t', max_attempts => 0)", "max_attempts"),
        ("SELECT pgjobs.enqueue('t', timeout => -5)", "timeout"),
        ("SELECT pgjobs.enqueue('t', meta => '[]')", "meta"),
        ("SELECT pgjobs.enqueue('t', scheduled_at => 'infinity')", "scheduled_at"),
        ("""SELECT pgjobs.enqueue_many('[{"task":"a"},{"tsk":"b"}]')""", "jobs[1].tsk"),
        ("""SELECT pgjobs.enqueue_many('[{"task":"a"},{"task":"b","ttl":-7}]')""", "jobs[1].ttl"),
        ("""SELECT pgjobs.enqueue_many('{"task":"a"}')""", "jobs"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error_and_adds_nothing(conn: Conn, call: str, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        conn.execute(call)
    assert f"pgjobs: {message}" in str(err.value)
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 0


def test_dequeue_orders_by_priority_then_scheduled_time_then_id(conn: Conn) -> None:
    a = one(conn, "SELECT pgjobs.enqueue('a', priority => 0, scheduled_at => now() - interval '1 min')")
    b = one(conn, "SELECT pgjobs.enqueue('b', priority => -1)")
    c = one(conn, "SELECT pgjobs.enqueue('c', priority => 0, scheduled_at => now() - interval '2 min')")
    d = one(conn, "SELECT pgjobs.enqueue('d', priority => 0, scheduled_at => now() - interval '2 min')")
    e = one(conn, "SELECT pgjobs.enqueue('e', priority => 5)")
    order = [dequeue(conn, 1)[0]["id"] for _ in range(5)]
    assert order == [b, c, d, a, e]
    assert dequeue(conn) == []


def test_dequeue_marks_jobs_active_for_the_worker(conn: Conn) -> None:
    one(conn, "SELECT pgjobs.enqueue('t')")
    (row,) = dequeue(conn, worker="worker-7")
    assert row["status"] == "active" and row["attempts"] == 1 and row["worker_id"] == "worker-7"
    assert row["started_at"] is not None and row["touched_at"] is not None


def test_dequeue_skips_future_jobs_and_other_queues(conn: Conn) -> None:
    one(conn, "SELECT pgjobs.enqueue('later', scheduled_at => now() + interval '1 hour')")
    one(conn, "SELECT pgjobs.enqueue('elsewhere', queue => 'other')")
    assert dequeue(conn) == []
    assert [r["task"] for r in dequeue(conn, queues=["other", "third"])] == ["elsewhere"]


def test_dequeue_returns_one_job_per_group_and_does_not_hold_back_the_rest(conn: Conn) -> None:
    for i in range(3):
        one(conn, "SELECT pgjobs.enqueue('g', priority => -1, group_key => 'A', args => %s)", [Jsonb([i])])
    one(conn, "SELECT pgjobs.enqueue('g', group_key => 'B')")
    for _ in range(3):
        one(conn, "SELECT pgjobs.enqueue('free')")
    rows = dequeue(conn, 10)
    assert Counter(r["group_key"] for r in rows) == {"A": 1, "B": 1, None: 3}
    assert [r["args"] for r in rows if r["group_key"] == "A"] == [[0]]
    assert dequeue(conn, 10) == []  # A is still running
    a = next(r for r in rows if r["group_key"] == "A")
    one(conn, "SELECT pgjobs.complete(%s)", [a["id"]])
    assert [r["args"] for r in dequeue(conn, 10)] == [[1]]


def test_concurrent_dequeues_never_return_two_jobs_of_one_group(dsn: str, conn: Conn) -> None:
    conn.execute(
        "SELECT pgjobs.enqueue_many(%s)",
        [Jsonb([{"task": "t", "group_key": f"g{i % 10}"} for i in range(400)])],
    )
    active_by_group: Counter[str] = Counter()
    violations: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def work(n: int) -> None:
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
            barrier.wait()
            while True:
                rows = c.execute("SELECT * FROM pgjobs.dequeue(%s, '{default}', 3)", [f"w{n}"]).fetchall()
                if not rows:
                    left = c.execute("SELECT count(*) AS n FROM pgjobs.jobs WHERE status <> 'complete'").fetchone()
                    if left and left["n"] == 0:
                        return
                    continue
                with lock:
                    for r in rows:
                        active_by_group[r["group_key"]] += 1
                        if active_by_group[r["group_key"]] > 1:
                            violations.append(r["group_key"])
                with lock:
                    for r in rows:
                        active_by_group[r["group_key"]] -= 1
                c.execute("SELECT pgjobs.complete_many(%s)", [[r["id"] for r in rows]])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert violations == []
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs WHERE status = 'complete' AND attempts = 1") == 400


def test_dequeue_refuses_repeatable_read(dsn: str) -> None:
    with psycopg.connect(dsn) as c:
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.InvalidTransactionState):
            c.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 1)")


def test_complete_records_the_result_and_announces_it(dsn: str, conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t')")
    dequeue(conn)
    conn.execute("SELECT pgjobs.listen('pgjobs.done')")
    assert one(conn, """SELECT pgjobs.complete(%s, '{"answer": 42}')""", [job_id]) is True
    row = job(conn, job_id)
    assert row["status"] == "complete" and row["result"] == {"answer": 42} and row["completed_at"]
    assert [n.payload for n in conn.notifies(timeout=0.5)] == [str(job_id)]
    assert one(conn, "SELECT pgjobs.complete(%s)", [job_id]) is False  # already complete


def test_complete_is_fenced_by_the_attempt(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t')")
    dequeue(conn)
    assert one(conn, "SELECT pgjobs.complete(%s, NULL, 2)", [job_id]) is False
    assert job(conn, job_id)["status"] == "active"
    assert one(conn, "SELECT pgjobs.complete(%s, NULL, 1)", [job_id]) is True


def test_fail_retries_then_fails(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t', max_attempts => 2, retry_delay => 0)")
    dequeue(conn)
    assert one(conn, "SELECT pgjobs.fail(%s, 'first')", [job_id]) == "queued"
    row = job(conn, job_id)
    assert row["error"] == "first" and row["worker_id"] is None
    dequeue(conn)
    assert one(conn, "SELECT pgjobs.fail(%s, 'second')", [job_id]) == "failed"
    row = job(conn, job_id)
    assert (row["status"], row["attempts"], row["error"]) == ("failed", 2, "second")
    assert one(conn, "SELECT pgjobs.fail(%s, 'late')", [job_id]) is None


def test_fail_without_retry_fails_at_once(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t', max_attempts => 5)")
    dequeue(conn)
    assert one(conn, "SELECT pgjobs.fail(%s, 'no', retry => false)", [job_id]) == "failed"


def test_retry_delay_is_fixed_without_backoff(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t', retry_delay => 30, retry_backoff => 0)")
    dequeue(conn)
    one(conn, "SELECT pgjobs.fail(%s, 'x')", [job_id])
    wait = one(conn, "SELECT extract(epoch FROM scheduled_at - now()) FROM pgjobs.jobs WHERE id = %s", [job_id])
    assert 29 < wait <= 30


def test_retry_backoff_doubles_per_attempt_with_jitter_and_a_cap(conn: Conn) -> None:
    delays = conn.execute(
        """SELECT a, max(d) AS hi, min(d) AS lo FROM (
               SELECT a, pgjobs.retry_delay_for(a, 10, 50) AS d
               FROM generate_series(1, 4) a, generate_series(1, 400)) s
           GROUP BY a ORDER BY a"""
    ).fetchall()
    highs = [r["hi"] for r in delays]
    assert 9 < highs[0] <= 10 and 18 < highs[1] <= 20 and 38 < highs[2] <= 40 and 45 < highs[3] <= 50
    assert all(r["lo"] < 3 for r in delays)  # jitter spreads retries down towards zero
    assert one(conn, "SELECT pgjobs.retry_delay_for(1000, 1, 'Infinity')") < float("inf")


def test_cancel_queued_active_finished_and_unknown_jobs(conn: Conn) -> None:
    queued = one(conn, "SELECT pgjobs.enqueue('q')")
    active = one(conn, "SELECT pgjobs.enqueue('a', priority => -1)")
    dequeue(conn, 1)
    assert one(conn, "SELECT pgjobs.cancel(%s)", [queued]) == "aborted"
    assert one(conn, "SELECT pgjobs.cancel(%s)", [active]) == "aborting"
    assert one(conn, "SELECT pgjobs.fail(%s, 'stopped')", [active]) == "aborted"
    assert one(conn, "SELECT pgjobs.cancel(%s)", [active]) == "aborted"  # unchanged
    assert one(conn, "SELECT pgjobs.cancel(-1)") is None
    assert dequeue(conn) == []


def test_release_gives_jobs_back_without_counting_the_attempt(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t')")
    dequeue(conn, worker="w1")
    assert one(conn, "SELECT pgjobs.release('someone-else', %s)", [[job_id]]) == 0
    assert one(conn, "SELECT pgjobs.release('w1', %s)", [[job_id]]) == 1
    row = job(conn, job_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 0, None)


def explain_nested(conn: Conn) -> list[str]:
    """From now on, the plan of every statement the session runs, functions' statements included,
    with actual row counts; the list fills as statements run."""
    conn.execute("LOAD 'auto_explain'")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET auto_explain.log_analyze = on")
    conn.execute("SET auto_explain.log_level = notice")
    conn.execute("SET client_min_messages = notice")
    plans: list[str] = []
    conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
    return plans


def test_the_claim_walks_its_index_in_order_and_stops_early(conn: Conn) -> None:
    """The claim must read a handful of index entries, not sort the backlog: with 20,000 queued and
    50,000 finished jobs, its index scan returns only the rows it locks; claiming grouped jobs and
    completing them probe rows by id too, never scanning the table nor reading history."""
    conn.execute(
        """INSERT INTO pgjobs.jobs (task, status, completed_at)
           SELECT 'done', 'complete', now() FROM generate_series(1, 50000)"""
    )
    conn.execute("INSERT INTO pgjobs.jobs (task, priority) SELECT 't', i % 7 FROM generate_series(1, 20000) i")
    conn.execute(
        "INSERT INTO pgjobs.jobs (task, priority, group_key) SELECT 't', -1, 'g' || i FROM generate_series(1, 3) i"
    )
    conn.execute("ANALYZE pgjobs.jobs")
    plans = explain_nested(conn)
    claimed = dequeue(conn, 5)
    assert len(claimed) == 5 and sum(1 for j in claimed if j["group_key"]) == 3
    conn.execute("SELECT pgjobs.complete_many(%s)", [[j["id"] for j in claimed]])
    claim = next(p for p in plans if "LockRows" in p)
    index = "Index Scan using jobs_live_queue_priority_scheduled_at_id_idx"
    scans = [line for line in claim.splitlines() if index in line]
    assert scans, claim
    for line in scans:
        rows = float(line.split("actual time=")[1].split("rows=")[1].split()[0])  # PG 18 prints 5.00
        assert rows <= 10, line
    updates = [p for p in plans if "Update on jobs" in p]
    assert len(updates) == 3, plans  # ungrouped claims, grouped claims, completions
    for plan in updates:
        assert "Bitmap Heap Scan" not in plan and "Seq Scan on jobs" not in plan, plan
    # Claims and completions read the hot table only: history is pruned from their plans.
    for plan in [claim, *updates]:
        assert "jobs_live" in plan and "jobs_done" not in plan, plan


def test_a_worker_session_that_started_on_an_empty_queue_still_walks_the_indexes(dsn: str, conn: Conn) -> None:
    """Workers usually start before the jobs come: the plans their session makes at its first calls,
    on an empty table, must not scan the whole table once it holds 20,000 jobs."""
    conn.execute("VACUUM ANALYZE pgjobs.jobs")  # the statistics of an empty table
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as worker:
        worker.execute("SELECT pgjobs.worker_register('w1', 'h', 1, 'u', '{default}', 10, 5)")
        for _ in range(6):  # past the calls PostgreSQL plans one by one
            assert dequeue(worker, 5) == []
            worker.execute("SELECT * FROM pgjobs.complete_and_dequeue('w1', '{default}', 5)").fetchall()
            worker.execute("SELECT pgjobs.complete_many('{}')")
            worker.execute("SELECT * FROM pgjobs.worker_heartbeat('w1')").fetchall()
        conn.execute("INSERT INTO pgjobs.jobs (task) SELECT 't' FROM generate_series(1, 20000)")
        plans = explain_nested(worker)
        claimed = dequeue(worker, 5)
        ids, attempts = [j["id"] for j in claimed], [j["attempts"] for j in claimed]
        worker.execute("SELECT * FROM pgjobs.complete_and_dequeue('w1', '{default}', 5, %s, NULL, %s)", [ids, attempts])
        worker.execute("SELECT * FROM pgjobs.worker_heartbeat('w1', %s, %s)", [ids, attempts]).fetchall()
        one(worker, "SELECT pgjobs.fail(%s, 'boom')", [ids[0]])
    assert len(claimed) == 5
    touching = [p for p in plans if "jobs_live" in p]
    assert len(touching) >= 5, plans
    for plan in touching:
        assert "Seq Scan on jobs_live" not in plan, plan


def test_complete_and_dequeue_records_finished_runs_and_claims_in_one_call(conn: Conn) -> None:
    first = [one(conn, "SELECT pgjobs.enqueue('t', %s)", [Jsonb({"n": i})]) for i in range(3)]
    later = [one(conn, "SELECT pgjobs.enqueue('t', meta => %s)", [Jsonb({"m": i})]) for i in range(2)]
    claimed = conn.execute("SELECT * FROM pgjobs.complete_and_dequeue('w1', '{default}', 3)").fetchall()
    assert [r["id"] for r in claimed] == first and all(r["claimed"] for r in claimed)
    assert claimed[0]["args"] == {"n": 0} and claimed[0]["attempts"] == 1 and claimed[0]["meta"] is None
    stored = job(conn, first[0])
    for column in ("task", "queue", "priority", "max_attempts", "scheduled_at", "enqueued_at", "started_at", "ttl"):
        assert claimed[0][column] == stored[column], column
    # One run is no longer current (its attempt does not match): reported, not completed.
    rows = conn.execute(
        """SELECT * FROM pgjobs.complete_and_dequeue('w1', '{default}', 5, %s, ARRAY['1', '2', NULL]::jsonb[], %s)""",
        [first, [1, 1, 7]],
    ).fetchall()
    assert [(r["id"], r["claimed"]) for r in rows] == [(first[2], False), (later[0], True), (later[1], True)]
    assert rows[1]["meta"] == {"m": 0} and rows[2]["task"] is not None
    assert [job(conn, i)["status"] for i in first] == ["complete", "complete", "active"]
    assert job(conn, first[1])["result"] == 2
    # Nothing to claim: only the completions.
    rows = conn.execute("SELECT * FROM pgjobs.complete_and_dequeue('w1', '{default}', 0, %s)", [later]).fetchall()
    assert rows == [] and {job(conn, i)["status"] for i in later} == {"complete"}


def test_complete_and_dequeue_refuses_bad_input_and_changes_nothing(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t')")
    dequeue(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="max_jobs"):
        conn.execute("SELECT * FROM pgjobs.complete_and_dequeue('w1', '{default}', -1, %s)", [[job_id]])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="attempts"):
        conn.execute("SELECT * FROM pgjobs.complete_and_dequeue('w1', '{default}', 1, %s, NULL, '{1,2}')", [[job_id]])
    assert job(conn, job_id)["status"] == "active"


def test_enqueue_many_names_an_unknown_option_and_adds_nothing(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"jobs\[1\]\.colour: is not an enqueue parameter"):
        conn.execute("""SELECT * FROM pgjobs.enqueue_many('[{"task": "a"}, {"task": "b", "colour": "red"}]')""")
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs") == 0
