"""Conformance: liveness. A reset run records nothing, kill -9 loses nothing, cancel stops a run
within a heart rate, a worker that cannot beat gives its runs up, lost sessions are reopened."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .workers import SLACK, Fleet, enqueue, finished, jobs, query, read_runs, runs_by_job, wait_until

pytestmark = pytest.mark.conformance

GRACE = 2.1  # heart rates the reaper waits before it declares a worker dead (pgjobs.reap's default)


def started(log_dir: Path, job_id: int, attempt: int = 1) -> bool:
    return any(r.job == job_id and r.attempt == attempt for r in read_runs(log_dir))


def ended(log_dir: Path, job_id: int, attempt: int = 1) -> float | None:
    return next((r.end for r in read_runs(log_dir) if r.job == job_id and r.attempt == attempt and r.end), None)


def test_the_completion_of_a_reset_run_changes_nothing(one: Fleet, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # Queued again 1.5 s after the reset: the reset run ends first (a worker that runs the next
    # attempt beside a run it still thinks its own would blur what this test looks at).
    sleep = {"task": "conformance.sleep", "args": {"seconds": 30, "gate": str(gate)}}
    (job_id,) = enqueue(one.dsn, {**sleep, "retry_delay": 1.5, "retry_backoff": 0})
    worker = one.start().registered()
    wait_until(lambda: started(one.log_dir, job_id), 10, "the run")

    # Right after one of its heartbeats, the worker is declared dead and its run reset (as after a
    # partition), and the run ends at once: its completion goes out before the next heartbeat could
    # tell the worker the run is lost. The attempt fence must refuse it.
    def beat() -> object:
        return query(one.dsn, "SELECT heartbeat_at FROM pgjobs.workers WHERE id = %s", [worker.id])[0]["heartbeat_at"]

    def declare_dead() -> bool:
        with psycopg.connect(one.dsn, autocommit=True, row_factory=dict_row) as conn:
            conn.execute("BEGIN")
            conn.execute(
                "UPDATE pgjobs.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", [worker.id]
            )
            (counts,) = conn.execute("SELECT * FROM pgjobs.reap()").fetchall()
            # The reaper skips a run whose row is locked (a touch in flight): try again.
            conn.execute("COMMIT" if counts["reset"] == 1 else "ROLLBACK")
            return bool(counts["reset"] == 1)

    last = beat()
    wait_until(lambda: beat() != last, 5 * worker.heart_rate, "a heartbeat")
    wait_until(declare_dead, 0.5 * worker.heart_rate, "the reset")
    gate.touch()
    wait_until(lambda: ended(one.log_dir, job_id), 5, "the end of the reset run")
    wait_until(lambda: finished(one.dsn, [job_id]), 15, "the job finishing")

    row = jobs(one.dsn, [job_id])[job_id]
    assert (row["status"], row["attempts"], row["result"]) == ("complete", 2, {"slept": 30, "attempt": 2}), row
    (first, second) = runs_by_job(one.log_dir)[job_id]
    # The first run returned and its completion was refused; on a machine slow enough for the next
    # heartbeat to come first, the worker stopped it instead. Either way it recorded nothing.
    assert (first.attempt, second.attempt, second.how) == (1, 2, "returned")
    assert first.how in ("returned", "stopped")
    # Declared dead, the worker is running again once its heartbeats go through.
    wait_until(lambda: query(one.dsn, "SELECT pgjobs.worker_is_alive(%s) AS a", [worker.id])[0]["a"], 10, "revival")


def test_kill_9_gets_the_runs_reset_and_finished_by_another_worker(fleet: Fleet, tmp_path: Path) -> None:
    # The runs last until the gate opens after the kill: however slow the survivor is to start,
    # the doomed worker dies mid-run.
    gate = tmp_path / "gate"
    sleep = {"task": "conformance.sleep", "args": {"seconds": 60, "gate": str(gate)}, "retry_delay": 0}
    doomed = fleet.start().registered()
    ids = enqueue(fleet.dsn, sleep, sleep)
    wait_until(lambda: all(started(fleet.log_dir, i) for i in ids), 10, "the runs")
    survivor = fleet.start().registered()
    doomed.signal(signal.SIGKILL)
    doomed.popen.wait(timeout=10)
    gate.touch()

    # The reaper declares the worker dead once it missed 2.1 heart rates (database clock); the
    # survivor's own reaper may be first.
    def reset() -> bool:
        query(fleet.dsn, "SELECT * FROM pgjobs.reap()")
        return all(r["worker_id"] != doomed.id for r in jobs(fleet.dsn, ids).values())

    wait_until(reset, GRACE * doomed.heart_rate + 10, "the reset")
    wait_until(lambda: finished(fleet.dsn, ids), 20, "the jobs finishing")

    rows = jobs(fleet.dsn, ids)
    for job_id in ids:
        row = rows[job_id]
        assert (row["status"], row["attempts"], row["worker_id"]) == ("complete", 2, survivor.id), row
        assert row["result"] == {"slept": 60, "attempt": 2}
    runs = runs_by_job(fleet.log_dir)
    for job_id in ids:
        assert [(r.attempt, r.pid, r.how) for r in runs[job_id]] == [
            (1, doomed.pid, None),  # killed mid-run
            (2, survivor.pid, "returned"),
        ]
    (row,) = query(fleet.dsn, "SELECT status FROM pgjobs.workers WHERE id = %s", [doomed.id])
    assert row["status"] == "dead"


def test_cancel_stops_a_running_job_within_a_heart_rate(one: Fleet) -> None:
    told, silent = enqueue(one.dsn, *({"task": "conformance.sleep", "args": {"seconds": 60}} for _ in range(2)))
    worker = one.start().registered()
    wait_until(lambda: started(one.log_dir, told) and started(one.log_dir, silent), 10, "the runs")

    # pgjobs.cancel tells the worker on channel pgjobs.cancel; a run marked aborting without a
    # word stands for a notification the worker missed: its next heartbeat must say so.
    t0 = time.time()
    assert query(one.dsn, "SELECT pgjobs.cancel(%s) AS s", [told])[0]["s"] == "aborting"
    query(one.dsn, "UPDATE pgjobs.jobs SET status = 'aborting' WHERE id = %s", [silent])
    wait_until(lambda: finished(one.dsn, [told, silent]), worker.heart_rate + SLACK + 5, "the runs stopping")

    rows = jobs(one.dsn, [told, silent])
    assert {r["status"] for r in rows.values()} == {"aborted"}
    for job_id in (told, silent):
        (run,) = runs_by_job(one.log_dir)[job_id]
        assert run.how == "stopped" and run.end is not None
        assert run.end - t0 < worker.heart_rate + SLACK, f"job {job_id} stopped {run.end - t0:.2f} s after cancel"
        assert (rows[job_id]["completed_at"].timestamp() - t0) < worker.heart_rate + SLACK


def test_a_worker_that_cannot_beat_gives_its_runs_up_before_the_reaper_could(one: Fleet) -> None:
    (job_id,) = enqueue(one.dsn, {"task": "conformance.sleep", "args": {"seconds": 60}, "retry_delay": 0})
    worker = one.start().registered()
    wait_until(lambda: started(one.log_dir, job_id), 10, "the run")

    # Holding the worker's row makes every heartbeat wait, as a cut-off network would.
    with psycopg.connect(one.dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT FROM pgjobs.workers WHERE id = %s FOR UPDATE", [worker.id])
        t0 = time.time()
        stopped = wait_until(lambda: ended(one.log_dir, job_id), GRACE * worker.heart_rate + 5, "the run given up")
    # The reaper may declare the worker dead 2.1 heart rates after its last beat, which was before t0.
    assert stopped - t0 < GRACE * worker.heart_rate + 0.25, f"given up {stopped - t0:.2f} s after the last beat"
    assert runs_by_job(one.log_dir)[job_id][0].how == "stopped"
    # Once a beat goes through, it claims again: the job's next attempt runs.
    wait_until(lambda: started(one.log_dir, job_id, attempt=2), 15, "the next attempt")


def test_a_worker_reopens_sessions_the_server_ends(one: Fleet) -> None:
    (running,) = enqueue(one.dsn, {"task": "conformance.sleep", "args": {"seconds": 1.5}})
    one.start().registered()
    wait_until(lambda: started(one.log_dir, running), 10, "the run")
    ended_sessions = query(
        one.dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    assert ended_sessions, "the worker had no session to end"
    later = enqueue(one.dsn, *({"task": "conformance.echo", "args": [i]} for i in range(5)))
    wait_until(lambda: finished(one.dsn, [running, *later]), 20, "every job finishing")

    rows = jobs(one.dsn, [running, *later])
    assert {(r["status"], r["attempts"]) for r in rows.values()} == {("complete", 1)}
    assert rows[running]["result"] == {"slept": 1.5, "attempt": 1}  # recorded once the session was back


def test_the_database_settles_a_run_under_the_worker_id_that_the_worker_does_not_hold(one: Fleet) -> None:
    # A claim whose answer never reached the worker leaves a job active under its id that it will
    # never run: a job claimed by hand, under the worker's id, from a queue it does not work, stands
    # for one. The worker's heartbeats let the database settle it as a failed attempt; its own runs,
    # running or just finished, are never settled.
    (mine,) = enqueue(one.dsn, {"task": "conformance.sleep", "args": {"seconds": 60}})
    worker = one.start().registered()
    wait_until(lambda: started(one.log_dir, mine), 10, "the run")
    (lost,) = query(
        one.dsn,
        "SELECT id FROM pgjobs.enqueue_many(%s)",
        [Jsonb([{"task": "conformance.echo", "args": [1], "queue": "elsewhere", "retry_delay": 0}])],
    )
    t0 = time.monotonic()
    (claimed,) = query(one.dsn, "SELECT id FROM pgjobs.dequeue(%s, '{elsewhere}', 1)", [worker.id])
    assert claimed["id"] == lost["id"]

    def settled() -> dict[str, Any] | None:
        row = jobs(one.dsn, [lost["id"]])[lost["id"]]
        return row if row["status"] != "active" else None

    # Claimed between two beats, it is settled by the second beat after the claim.
    row = wait_until(settled, 2 * worker.heart_rate + SLACK, "the settlement")
    took = time.monotonic() - t0
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 1, None), row
    assert row["error"] == f"lost by worker {worker.id}: it no longer held this run"
    # Its own run goes on, through more beats than it took to settle the other.
    time.sleep(max(took, 2 * worker.heart_rate))
    assert jobs(one.dsn, [mine])[mine]["status"] == "active"
    (run,) = runs_by_job(one.log_dir)[mine]
    assert run.end is None
    # Quick runs that finish between beats are never settled either.
    quick = enqueue(one.dsn, *({"task": "conformance.echo", "args": [i]} for i in range(20)))
    wait_until(lambda: finished(one.dsn, quick), 20, "the quick runs")
    assert {r["status"] for r in jobs(one.dsn, quick).values()} == {"complete"}
    assert all(len(runs_by_job(one.log_dir)[i]) == 1 for i in quick)


def test_forged_cancels_and_stop_requests_are_hints_that_change_nothing(one: Fleet) -> None:
    # Any login may NOTIFY any channel: a worker takes pgjobs.cancel and pgjobs.worker as hints to
    # ask the database (a beat), and obeys the answer, never the payload.
    (job_id,) = enqueue(one.dsn, {"task": "conformance.sleep", "args": {"seconds": 1.5}})
    worker = one.start().registered()
    wait_until(lambda: started(one.log_dir, job_id), 10, "the run")
    for channel, payload in (("pgjobs.cancel", str(job_id)), ("pgjobs.worker", worker.id)):
        query(one.dsn, "SELECT pg_notify(%s, %s)", [channel, payload])
    wait_until(lambda: finished(one.dsn, [job_id]), 15, "the run finishing")
    assert jobs(one.dsn, [job_id])[job_id]["status"] == "complete"
    (run,) = runs_by_job(one.log_dir)[job_id]
    assert run.how == "returned"
    (row,) = query(one.dsn, "SELECT status FROM pgjobs.workers WHERE id = %s", [worker.id])
    assert row["status"] == "running"
    assert worker.popen.poll() is None
