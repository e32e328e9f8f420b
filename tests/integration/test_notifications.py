"""Notifications are hints: a login with no pgjobs grant at all NOTIFYs pgjobs' channels, and
nothing changes but a query to look."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs
from pgjobs import Event, Job, JobStatus

from .test_worker import run_with_worker
from .test_worker_liveness import wait_for


@pgjobs.task(name="hint.nap")
async def hint_nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


@pytest.fixture
def stranger(dsn: str) -> Iterator[str]:
    """The DSN of a login that holds no pgjobs role and no grant."""
    name = f"stranger_{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, user=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def notify(dsn: str, channel: str, payload: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def worker_status(dsn: str, worker_id: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status::text FROM pgjobs.workers WHERE id = %s", [worker_id]).fetchone()
    assert row is not None
    return str(row[0])


def test_forged_cancels_and_stop_requests_stop_nothing(env_dsn: str, stranger: str) -> None:
    async def body(worker: pgjobs.Worker) -> tuple[Job, str, int]:
        job = await hint_nap.enqueue_async(2)
        assert job.id is not None
        while (await pgjobs.get_job_async(job.id)).status is not JobStatus.ACTIVE:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        beats = worker._heart.beats
        for channel, payload in (
            ("pgjobs.cancel", str(job.id)),
            ("pgjobs.cancel", ",".join(str(job.id + i) for i in range(1000))),
            ("pgjobs.worker", worker.id),
        ):
            await asyncio.to_thread(notify, stranger, channel, payload)
        done = await wait_for(env_dsn, job.id)
        return done, await asyncio.to_thread(worker_status, env_dsn, worker.id), worker._heart.beats - beats

    # Heartbeats every 30 s: a beat during the run came from a notification.
    job, status, beats = run_with_worker(env_dsn, body, heart_rate=30, poll_interval=0.2)
    assert (job.status, job.attempts, job.result) == (JobStatus.COMPLETE, 1, "rested")
    assert status == "running"
    assert beats >= 1  # the hints were looked into, at the cost of a beat


def test_forged_completions_neither_wake_wait_wrongly_nor_make_it_raise(env_dsn: str, stranger: str) -> None:
    (job_id,) = pgjobs.enqueue_many([hint_nap.job(0)])

    def forge() -> None:
        time.sleep(0.3)
        for payload in ("not-a-number", f"{job_id}", f"{job_id},x,-1,{job_id}"):
            notify(stranger, "pgjobs.done", payload)

    threading.Thread(target=forge).start()
    (job,) = pgjobs.wait([job_id], timeout=1.5, dsn=env_dsn)
    assert job.status is JobStatus.QUEUED


def test_events_reports_only_what_the_database_confirms(env_dsn: str, stranger: str) -> None:
    queued, done = pgjobs.enqueue_many([hint_nap.job(0), hint_nap.job(0)])
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 1, 5)")
        conn.execute("SELECT * FROM pgjobs.dequeue('w', '{default}', 2)")
        conn.execute("SELECT pgjobs.release('w', %s)", [[queued]])

    seen: list[Event] = []

    def follow() -> None:
        seen.extend(pgjobs.events(dsn=env_dsn, timeout=2.5))

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.8)  # it LISTENs
    for payload in (f"{queued}:complete", "1:pwned", "x:y", f"{queued}:failed,{done}:aborted", "99999:queued"):
        notify(stranger, "pgjobs.events", payload)
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pgjobs.complete(%s)", [done]).fetchone() == (True,)
    follower.join()
    assert seen == [Event(done, JobStatus.COMPLETE)]


def test_a_flood_of_forged_notifications_costs_ten_beats_a_second_at_most(env_dsn: str, stranger: str) -> None:
    async def body(worker: pgjobs.Worker) -> tuple[int, float]:
        await asyncio.sleep(0.5)  # registered and beating (every 30 s)
        beats, started = worker._heart.beats, time.monotonic()

        def flood() -> None:
            with psycopg.connect(stranger, autocommit=True) as conn:
                for _ in range(300):
                    conn.execute("SELECT pg_notify('pgjobs.cancel', '1'), pg_notify('pgjobs.worker', %s)", [worker.id])

        await asyncio.to_thread(flood)
        await asyncio.sleep(0.3)
        return worker._heart.beats - beats, time.monotonic() - started

    beats, seconds = run_with_worker(env_dsn, body, heart_rate=30, poll_interval=0.2)
    assert 1 <= beats <= 10 * seconds + 2, (beats, seconds)
