"""Jobs that wait for others: claimed once their parents completed, aborted when one did not."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgjobs
from pgjobs import JobStatus

Conn = psycopg.Connection[dict[str, Any]]


def enqueue(conn: Conn, task: str = "t", depends_on: list[int] | None = None, **options: Any) -> int:
    names = "".join(f", {k} => %({k})s" for k in options)
    row = conn.execute(
        f"SELECT pgjobs.enqueue(%(task)s, depends_on => %(depends_on)s{names}) AS id",
        {"task": task, "depends_on": depends_on, **options},
    ).fetchone()
    assert row is not None
    return int(row["id"])


def status(conn: Conn, *ids: int) -> list[str]:
    rows = conn.execute("SELECT id, status FROM pgjobs.jobs WHERE id = ANY (%s)", [list(ids)]).fetchall()
    by_id = {r["id"]: r["status"] for r in rows}
    return [by_id[i] for i in ids]


def claim(conn: Conn, n: int = 10) -> list[int]:
    return [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{default}', %s)", [n]).fetchall()]


def complete(conn: Conn, job_id: int) -> None:
    conn.execute("SELECT pgjobs.complete(%s)", [job_id])


def test_a_chain_runs_in_order(conn: Conn) -> None:
    a = enqueue(conn)
    b = enqueue(conn, depends_on=[a])
    c = enqueue(conn, depends_on=[b])
    assert status(conn, a, b, c) == ["queued", "waiting", "waiting"]
    assert claim(conn) == [a]
    complete(conn, a)
    assert claim(conn) == [b]
    complete(conn, b)
    assert claim(conn) == [c]


def test_a_job_waits_for_every_parent_and_its_queue_is_woken(conn: Conn, dsn: str) -> None:
    a, b = enqueue(conn), enqueue(conn)
    c = enqueue(conn, depends_on=[a, b], queue="after")
    claim(conn)
    complete(conn, a)
    assert status(conn, c) == ["waiting"]
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute('LISTEN "pgjobs.queue.after"')
        complete(conn, b)
        assert [n.channel for n in listener.notifies(timeout=1, stop_after=1)] == ["pgjobs.queue.after"]
    assert status(conn, c) == ["queued"]


def test_a_failed_parent_aborts_its_dependants_transitively_naming_it(conn: Conn) -> None:
    a = enqueue(conn, max_attempts=1)
    b = enqueue(conn, depends_on=[a])
    c = enqueue(conn, depends_on=[a])
    d = enqueue(conn, depends_on=[b, c])
    e = enqueue(conn, depends_on=[d])
    other = enqueue(conn)
    assert claim(conn) == [a, other]
    conn.execute("SELECT pgjobs.fail(%s, 'boom')", [a])
    assert status(conn, a, b, c, d, e, other) == ["failed", "aborted", "aborted", "aborted", "aborted", "active"]
    rows = conn.execute("SELECT id, error FROM pgjobs.jobs WHERE id = ANY (%s)", [[b, d, e]]).fetchall()
    errors = {r["id"]: r["error"] for r in rows}
    assert errors[b] == f"parent job {a} ended failed"
    assert errors[d].startswith("parent job ") and errors[d].endswith("ended aborted")
    assert errors[e] == f"parent job {d} ended aborted"


def test_a_parent_that_will_retry_keeps_its_dependants_waiting(conn: Conn) -> None:
    a = enqueue(conn, max_attempts=2, retry_delay=0)
    b = enqueue(conn, depends_on=[a])
    claim(conn)
    conn.execute("SELECT pgjobs.fail(%s, 'once')", [a])
    assert status(conn, a, b) == ["queued", "waiting"]
    assert claim(conn) == [a]
    complete(conn, a)
    assert status(conn, b) == ["queued"]


def test_cancelling_a_waiting_job_aborts_it_and_its_dependants(conn: Conn) -> None:
    a = enqueue(conn)
    b = enqueue(conn, depends_on=[a])
    c = enqueue(conn, depends_on=[b])
    assert conn.execute("SELECT pgjobs.cancel(%s) AS s", [b]).fetchone() == {"s": "aborted"}
    assert status(conn, a, b, c) == ["queued", "aborted", "aborted"]


def test_parents_already_finished_decide_at_once(conn: Conn) -> None:
    done = enqueue(conn)
    failed = enqueue(conn, max_attempts=1)
    claim(conn)
    complete(conn, done)
    conn.execute("SELECT pgjobs.fail(%s, 'no')", [failed])
    assert status(conn, enqueue(conn, depends_on=[done])) == ["queued"]
    assert status(conn, enqueue(conn, depends_on=[done, failed])) == ["aborted"]


def test_two_parents_finishing_at_once_release_their_child(dsn: str, conn: Conn) -> None:
    a, b = enqueue(conn), enqueue(conn)
    c = enqueue(conn, depends_on=[a, b])
    claim(conn)
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute("SELECT pgjobs.complete(%s)", [a])  # not committed yet
        other = threading.Thread(target=lambda: (second.execute("SELECT pgjobs.complete(%s)", [b]), second.commit()))
        other.start()
        other.join(0.5)
        assert other.is_alive()  # it waits for the first to commit: the two take turns
        first.commit()
        other.join(10)
    assert status(conn, c) == ["queued"]


def test_a_waiting_job_holds_its_key(conn: Conn) -> None:
    a = enqueue(conn)
    b = enqueue(conn, depends_on=[a], key="k")
    assert enqueue(conn, key="k") == b
    assert conn.execute("SELECT pgjobs.has_job('k') AS h").fetchone() == {"h": True}
    assert conn.execute("SELECT pgjobs.has_job('nope') AS h").fetchone() == {"h": False}


def test_enqueue_many_makes_a_dag_in_one_call(conn: Conn) -> None:
    jobs = [{"task": "extract"}, {"task": "a", "depends_on_items": [0]}, {"task": "b", "depends_on_items": [0]},
            {"task": "load", "depends_on_items": [1, 2]}]  # fmt: skip
    ids = [r["id"] for r in conn.execute("SELECT id FROM pgjobs.enqueue_many(%s) ORDER BY item", [Jsonb(jobs)])]
    assert status(conn, *ids) == ["queued", "waiting", "waiting", "waiting"]
    rows = conn.execute("SELECT depends_on FROM pgjobs.jobs WHERE id = %s", [ids[3]]).fetchone()
    assert rows is not None and sorted(rows["depends_on"]) == [ids[1], ids[2]]
    for expected in ([ids[0]], sorted(ids[1:3]), [ids[3]]):
        got = claim(conn)
        assert sorted(got) == expected
        for job_id in got:
            complete(conn, job_id)


@pytest.mark.parametrize(
    ("jobs", "field"),
    [
        ([{"task": "a", "depends_on_items": [0]}], r"jobs\[0\]\.depends_on_items"),  # itself
        ([{"task": "a"}, {"task": "b", "depends_on_items": [2]}, {"task": "c"}], r"jobs\[1\]\.depends_on_items"),
        ([{"task": "a"}, {"task": "b", "depends_on": [2**40]}], r"jobs\[1\]\.depends_on: names jobs that do not exist"),
        ([{"task": "a", "depends_on": ["x"]}], r"jobs\[0\]\.depends_on"),
    ],
)
def test_bad_dependencies_are_refused_and_nothing_is_enqueued(conn: Conn, jobs: list[Any], field: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=field):
        conn.execute("SELECT * FROM pgjobs.enqueue_many(%s)", [Jsonb(jobs)])
    assert conn.execute("SELECT count(*) AS n FROM pgjobs.jobs").fetchone() == {"n": 0}


def test_python_depends_on_takes_jobs_ids_and_requests_of_the_same_call(env_dsn: str) -> None:
    first = pgjobs.enqueue("t")
    second = pgjobs.enqueue("t", depends_on=[first])
    assert second.status is JobStatus.WAITING and second.depends_on == [first.id]
    extract = pgjobs.job("extract")
    load = pgjobs.job("load", depends_on=[extract, first.id])
    ids = pgjobs.enqueue_many([extract, load])
    got = pgjobs.get_job(ids[1])
    assert got is not None and sorted(got.depends_on or []) == sorted([ids[0], first.id])
    with pytest.raises(pgjobs.ArgumentError, match="enqueue_many"):
        pgjobs.enqueue("t", depends_on=[pgjobs.job("unsent")])
    assert pgjobs.has_job("k") is False
    pgjobs.enqueue("t", key="k", depends_on=[first])
    assert pgjobs.has_job("k") is True
