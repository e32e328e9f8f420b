"""A Hypothesis state machine over the SQL API: enqueue, claim, finish, kill, reap in any order.

Invariants: no group ever has two active jobs, no job is lost (every job exists and is queued,
finished, or held by a registered worker), and a worker's late writes to a run that was reset
change nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from psycopg.rows import dict_row

WORKERS = ["w1", "w2", "w3"]
GROUPS = [None, "a", "b"]


class QueueMachine(RuleBasedStateMachine):
    dsn: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        self.enqueued = 0
        self.held: dict[int, tuple[str, int]] = {}  # job id -> (worker, attempt) as each worker believes

    def teardown(self) -> None:
        self.conn.close()

    def one(self, sql: str, params: Any = None) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else next(iter(row.values()))

    @initialize()
    def start(self) -> None:
        self.conn.execute("TRUNCATE pgjobs.jobs, pgjobs.workers RESTART IDENTITY")
        for w in WORKERS:
            self.conn.execute("SELECT pgjobs.worker_register(%s, 'h', 1, 'u', '{default}', 3, 1)", [w])

    @rule(group=st.sampled_from(GROUPS), priority=st.integers(-2, 2), attempts=st.integers(1, 3))
    def enqueue(self, group: str | None, priority: int, attempts: int) -> None:
        self.conn.execute(
            "SELECT pgjobs.enqueue('t', group_key => %s, priority => %s, max_attempts => %s, retry_delay => 0)",
            [group, priority, attempts],
        )
        self.enqueued += 1

    @rule(worker=st.sampled_from(WORKERS), n=st.integers(1, 3))
    def claim(self, worker: str, n: int) -> None:
        for row in self.conn.execute("SELECT * FROM pgjobs.dequeue(%s, '{default}', %s)", [worker, n]):
            self.held[row["id"]] = (worker, row["attempts"])

    @rule(pick=st.integers(0, 1000), succeed=st.booleans())
    def finish(self, pick: int, succeed: bool) -> None:
        # Draw a position, not an id: what is held depends on the database, not on Hypothesis.
        if not self.held:
            return
        job_id = sorted(self.held)[pick % len(self.held)]
        _, attempt = self.held.pop(job_id)
        current = self.conn.execute("SELECT status, attempts FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
        ours = current is not None and current["attempts"] == attempt and current["status"] in ("active", "aborting")
        if succeed:
            done = self.one("SELECT pgjobs.complete(%s, NULL, %s)", [job_id, attempt])
            assert done is ours
        else:
            status = self.one("SELECT pgjobs.fail(%s, 'x', %s)", [job_id, attempt])
            assert (status is not None) is ours

    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        if self.enqueued:
            self.conn.execute("SELECT pgjobs.cancel(%s)", [pick % self.enqueued + 1])

    @rule(worker=st.sampled_from(WORKERS))
    def kill(self, worker: str) -> None:
        """The worker stops beating (as if killed); what it holds is left to the reaper."""
        self.conn.execute("UPDATE pgjobs.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", [worker])

    @rule(worker=st.sampled_from(WORKERS))
    def beat(self, worker: str) -> None:
        mine = [(j, a) for j, (w, a) in self.held.items() if w == worker]
        row = self.conn.execute(
            "SELECT * FROM pgjobs.worker_heartbeat(%s, %s::bigint[], %s::int[])",
            [worker, [j for j, _ in mine], [a for _, a in mine]],
        ).fetchone()
        assert row is not None
        for job_id in row["lost"]:
            self.held.pop(job_id)  # the worker drops runs that are no longer its own

    @rule()
    def reap(self) -> None:
        self.conn.execute("SELECT * FROM pgjobs.reap()")

    @invariant()
    def no_group_has_two_active_jobs(self) -> None:
        rows = self.conn.execute(
            """SELECT group_key FROM pgjobs.jobs WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL
               GROUP BY group_key HAVING count(*) > 1"""
        ).fetchall()
        assert rows == []

    @invariant()
    def no_job_is_lost(self) -> None:
        assert self.one("SELECT count(*) FROM pgjobs.jobs") == self.enqueued
        orphans = self.one(
            """SELECT count(*) FROM pgjobs.jobs j
               WHERE j.status IN ('active', 'aborting')
                 AND NOT EXISTS (SELECT FROM pgjobs.workers w WHERE w.id = j.worker_id)"""
        )
        assert orphans == 0
        assert self.one("SELECT count(*) FROM pgjobs.jobs WHERE attempts > max_attempts") == 0


def test_no_sequence_of_operations_breaks_groups_or_loses_a_job(dsn: str) -> None:
    QueueMachine.dsn = dsn
    run_state_machine_as_test(QueueMachine, settings=settings(max_examples=25, stateful_step_count=40, deadline=None))
