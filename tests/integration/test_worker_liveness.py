"""A Worker in this process: its row, timeouts, heartbeats, cancels, remote stop, progress."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

import pgjobs
from pgjobs import Job, JobStatus, ReaperConfig, _database
from pgjobs.reaper import ReapCounts
from pgjobs.schedules import SchedulerConfig

from .test_worker import nap, run_with_worker, sync_nap

FAST = {"heart_rate": 0.2, "reaper": ReaperConfig(interval=0.2), "poll_interval": 0.2}


@pgjobs.task(name="live.busy", pass_job=True)
async def busy(job: Job, seconds: float, report: bool) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if report:
            assert await job.update_async(progress=min(1.0, 1 - (deadline - time.monotonic()) / seconds))
        await asyncio.sleep(0.2)
    return "done"


@pgjobs.task(name="live.sync_progress", pass_job=True)
def sync_progress(job: Job) -> float:
    assert job.update(progress=0.5, meta={"stage": "half"})
    return job.progress


async def wait_for(dsn: str, job_id: int | None, timeout: float = 30) -> Job:
    assert job_id is not None
    (job,) = await pgjobs.wait_async([job_id], timeout, dsn=dsn)
    return job


def test_a_worker_registers_its_row_and_marks_it_stopped(env_dsn: str, conn: psycopg.Connection[Any]) -> None:
    async def body(worker: pgjobs.Worker) -> str:
        # Alive once registered (a registry holding process tasks starts their pool first).
        for _ in range(100):
            if await pgjobs.is_alive_async(worker.id):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the worker never registered as alive")
        return worker.id

    worker_id = run_with_worker(env_dsn, body, concurrency=3, queues=["a", "b"], **FAST)
    row = conn.execute("SELECT * FROM pgjobs.workers WHERE id = %s", [worker_id]).fetchone()
    assert row is not None
    assert (row["status"], row["queues"], row["concurrency"], row["heart_rate"]) == ("stopped", ["a", "b"], 3, 0.2)
    assert row["pid"] > 0 and row["hostname"] and row["os_user"] and row["stopped_at"]
    assert not pgjobs.is_alive(worker_id)


def test_a_job_past_its_timeout_is_killed_and_retried_then_failed(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> Job:
        job = await nap.enqueue_async(30, timeout=0.5, retries=1, retry_delay=0)
        return await wait_for(env_dsn, job.id)

    job = run_with_worker(env_dsn, body, **FAST)
    assert job.status is JobStatus.FAILED and job.attempts == 2
    assert job.error is not None and job.error.startswith("timeout: ran longer than 0.5")


def test_a_sync_job_past_its_timeout_frees_its_slot(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> list[Job]:
        stuck = await sync_nap.enqueue_async(30, timeout=0.5, retries=0)
        after = await nap.enqueue_async(0, priority=1)
        return [await wait_for(env_dsn, stuck.id), await wait_for(env_dsn, after.id)]

    stuck, after = run_with_worker(env_dsn, body, concurrency=1, **FAST)
    assert stuck.status is JobStatus.FAILED and stuck.error is not None and "timeout" in stuck.error
    assert after.status is JobStatus.COMPLETE  # ran while the abandoned thread still slept


def test_a_job_that_touches_its_heartbeat_is_left_alone_and_one_that_does_not_is_killed(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> list[Job]:
        kept = await busy.enqueue_async(seconds=2.5, report=True, heartbeat=1)
        silent = await busy.enqueue_async(seconds=2.5, report=False, heartbeat=1, retries=0)
        return [await wait_for(env_dsn, kept.id), await wait_for(env_dsn, silent.id)]

    # The worker's own beats come every 30 s here, so only job.update() keeps a run fresh.
    kept, silent = run_with_worker(env_dsn, body, heart_rate=30, reaper=ReaperConfig(interval=0.2), poll_interval=0.2)
    assert kept.status is JobStatus.COMPLETE and kept.attempts == 1 and kept.progress == 1
    assert silent.status is JobStatus.FAILED and silent.error is not None and silent.error.startswith("heartbeat")


def test_cancelling_a_running_job_stops_it(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> tuple[Job, float]:
        job = await nap.enqueue_async(30)
        assert job.id is not None
        while (await pgjobs.get_job_async(job.id)).status is not JobStatus.ACTIVE:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        asked = time.monotonic()
        assert await pgjobs.cancel_async(job.id) is JobStatus.ABORTING
        done = await wait_for(env_dsn, job.id)
        return done, time.monotonic() - asked

    # Heartbeats every 30 s: the NOTIFY makes the worker beat at once, and the beat stops the run.
    job, took = run_with_worker(env_dsn, body, heart_rate=30, poll_interval=0.2)
    assert job.status is JobStatus.ABORTED and job.result is None
    assert took < 5


_heard_cancel: list[tuple[bool, str]] = []


@pgjobs.task(name="live.sync_until_cancelled", pass_job=True)
def sync_until_cancelled(job: Job) -> str:
    # JobCancelled comes from job.update() or, raised in the thread by the worker, from anywhere.
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            job.update()
            time.sleep(0.02)
    except pgjobs.JobCancelled as exc:
        _heard_cancel.append((job.cancelled, str(exc)))
        return "stopped"
    return "never told"


def test_a_sync_task_hears_that_its_run_was_cancelled(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> Job:
        job = await sync_until_cancelled.enqueue_async()
        assert job.id is not None
        while (await pgjobs.get_job_async(job.id)).status is not JobStatus.ACTIVE:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
        await pgjobs.cancel_async(job.id)
        done = await wait_for(env_dsn, job.id)
        for _ in range(100):
            if _heard_cancel:
                break
            await asyncio.sleep(0.05)
        return done

    _heard_cancel.clear()
    job = run_with_worker(env_dsn, body, heart_rate=30, poll_interval=0.2)
    assert job.status is JobStatus.ABORTED and job.result is None  # its "stopped" is not recorded
    assert _heard_cancel == [(True, f"job {job.id}: cancelled while running")]


def test_a_worker_stops_when_asked_through_the_database(env_dsn: str) -> None:
    async def main() -> str:
        worker = pgjobs.Worker(env_dsn, heart_rate=30, poll_interval=0.2)
        running = asyncio.create_task(worker.run())
        while not await pgjobs.is_alive_async(worker.id):
            await asyncio.sleep(0.05)
        assert await pgjobs.stop_worker_async(worker.id) == "stopping"
        await asyncio.wait_for(running, timeout=10)
        return worker.id

    worker_id = asyncio.run(main())
    with psycopg.connect(env_dsn, row_factory=dict_row) as conn:
        row = conn.execute("SELECT status FROM pgjobs.workers WHERE id = %s", [worker_id]).fetchone()
    assert row == {"status": "stopped"}


def test_job_update_from_a_sync_task(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> Job:
        job = await sync_progress.enqueue_async(meta={"owner": "me"})
        return await wait_for(env_dsn, job.id)

    job = run_with_worker(env_dsn, body, **FAST)
    assert job.status is JobStatus.COMPLETE and job.result == 0.5
    assert job.meta == {"owner": "me", "stage": "half"}


def test_events_follow_a_job_through_its_states(env_dsn: str) -> None:
    async def body(_: pgjobs.Worker) -> list[str]:
        seen: list[str] = []
        ready = asyncio.Event()

        async def follow() -> None:
            stream = pgjobs.events_async(dsn=env_dsn, timeout=20)
            ready.set()
            async for event in stream:
                seen.append(event.status)
                if event.status.finished:
                    return

        follower = asyncio.create_task(follow())
        await ready.wait()
        await asyncio.sleep(0.5)  # let it LISTEN
        await nap.enqueue_async(0)
        await asyncio.wait_for(follower, 20)
        return seen

    assert run_with_worker(env_dsn, body, **FAST) == ["queued", "active", "complete"]


def test_the_reaper_keeps_up_when_more_jobs_finish_than_a_pass_may_move(env_dsn: str) -> None:
    # 12,000 finished jobs in the hot table, more than a pass moves in one batch (5 x batch_size):
    # the reaper empties it at once, keeps those with a ttl in history and deletes the ttl -1 ones.
    with psycopg.connect(env_dsn, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO pgjobs.jobs (task, status, ttl, completed_at)
               SELECT 't', 'complete', CASE WHEN i % 2 = 0 THEN 60 ELSE -1 END, now() - interval '2 minutes'
               FROM generate_series(1, 12000) i"""
        )

    async def main() -> tuple[int, int]:
        # An interval far longer than the test: the first pass has to do it all.
        reaper = pgjobs.reaper.Reaper(env_dsn, ReaperConfig(interval=3600, batch_size=1000))
        task = asyncio.create_task(reaper.run())
        try:
            deadline = time.monotonic() + 20
            async with await psycopg.AsyncConnection.connect(env_dsn, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    live = (await (await conn.execute("SELECT count(*) FROM pgjobs.jobs_live")).fetchone() or [0])[0]
                    if live == 0:
                        break
                    await asyncio.sleep(0.1)
                kept = (await (await conn.execute("SELECT count(*) FROM pgjobs.jobs")).fetchone() or [0])[0]
            return live, kept
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert asyncio.run(main()) == (0, 6000)


# Runs of live.recorded: (job id, attempt, whether the worker was fenced when the task began).
recorded_runs: list[tuple[int, int, bool]] = []
fenced_now: list[pgjobs.Worker] = []


@pgjobs.task(name="live.recorded", pass_job=True)
async def recorded(job: Job) -> str:
    assert job.id is not None
    recorded_runs.append((job.id, job.attempts, any(w._fence.fenced for w in fenced_now)))
    return "ran"


def fence_now(worker: pgjobs.Worker) -> None:
    """Make the fence begin at this very moment, as when the heart's last beat went through
    longer ago than fence_after: the heart's next beat lifts it again."""
    worker._heart.last_ok = float("-inf")
    worker._fence.check()
    assert worker._fence.fenced


class FencedWhileClaiming(pgjobs.Worker):
    """The fence begins while the first claim that returns jobs is in flight."""

    fenced_once = False

    async def _exchange(self, n: int) -> list[Job]:
        jobs = await super()._exchange(n)
        if jobs and not self.fenced_once:
            self.fenced_once = True
            fence_now(self)
        return jobs


class FencedAsTheClaimStarts(pgjobs.Worker):
    """The fence begins as the first claimed job is started, before its task could begin."""

    fenced_once = False

    def _start(self, job: Job) -> None:
        super()._start(job)
        if not self.fenced_once:
            self.fenced_once = True
            fence_now(self)


@pytest.mark.parametrize("worker_class", [FencedWhileClaiming, FencedAsTheClaimStarts])
def test_a_claim_that_meets_the_fence_is_given_back_or_run_never_stranded(
    env_dsn: str, worker_class: type[pgjobs.Worker]
) -> None:
    recorded_runs.clear()

    async def main() -> list[Job]:
        ids = await pgjobs.enqueue_many_async([recorded.job(retry_delay=0) for _ in range(3)])
        worker = worker_class(env_dsn, heart_rate=0.3, poll_interval=0.2, concurrency=4, reaper=None)
        fenced_now[:] = [worker]
        running = asyncio.create_task(worker.run())
        try:
            return await pgjobs.wait_async(ids, 20, dsn=env_dsn)
        finally:
            worker.stop()
            await running
            assert worker._fence.fences == 1

    jobs = asyncio.run(main())
    assert [j.status for j in jobs] == [JobStatus.COMPLETE] * 3, [(j.status, j.error) for j in jobs]
    # No task began while its worker was fenced, and each job ran exactly once to completion.
    assert not [r for r in recorded_runs if r[2]], recorded_runs
    assert sorted(r[0] for r in recorded_runs) == sorted(j.id for j in jobs)
    if worker_class is FencedAsTheClaimStarts:
        # The first run was given up by the fence before it began: a failed attempt, retried.
        assert sorted(j.attempts for j in jobs) == [1, 1, 2]
    else:
        # Given back unstarted: the attempt is not counted.
        assert [j.attempts for j in jobs] == [1, 1, 1]


class Injected(Exception):
    """An unforeseen failure, raised once inside one of the worker's services."""


def fail_once(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, calls: list[int]) -> None:
    """Make owner.name raise Injected on its first call, and count every call after that."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise Injected(f"injected into {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize(
    ("service", "owner", "name"),
    [
        ("the heartbeat", "pgjobs._liveness.Heart", "_beat"),
        ("the heartbeat", "psycopg.Connection", "notifies"),  # the LISTEN between beats
        ("the fence", "pgjobs._liveness.Fence", "check"),
        ("the reaper", "pgjobs.reaper.Reaper", "run_once"),
        ("the reaper", "pgjobs.reaper.Reaper", "vacuum_if_due"),
        ("the scheduler", "pgjobs.schedules.Scheduler", "run_once"),
    ],
)
def test_a_service_that_fails_unexpectedly_is_logged_and_restarted(
    env_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, service: str, owner: str,
    name: str,
) -> None:  # fmt: skip
    module, _, cls = owner.rpartition(".")
    calls: list[int] = []
    fail_once(monkeypatch, getattr(__import__(module, fromlist=[cls]), cls), name, calls)
    if name == "vacuum_if_due":
        monkeypatch.setattr("pgjobs.reaper.Reaper.run_once", lambda self: asyncio.sleep(0, ReapCounts()))

    async def body(worker: pgjobs.Worker) -> tuple[int, Job]:
        deadline = time.monotonic() + 15
        while len(calls) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        job = await nap.enqueue_async(0)
        return worker._fence.fences, await wait_for(env_dsn, job.id)

    options = {**FAST, "scheduler": SchedulerConfig(interval=0.2)}
    fences, job = run_with_worker(env_dsn, body, **options)
    assert len(calls) >= 3, f"{name} was not called again after it failed"
    failures = [r for r in caplog.records if "failed unexpectedly; restarting it" in r.getMessage()]
    assert [r.getMessage().split(" failed")[0] for r in failures] == [service]
    assert failures[0].exc_info is not None and isinstance(failures[0].exc_info[1], Injected)
    assert job.status is JobStatus.COMPLETE and fences == 0


# Stored past enqueue's own checks (by hand, or by an older version): JSON nested 5,000 deep, and
# an integer of 5,001 digits (jsonb writes 1e5000 out in full), which Python cannot decode.
DEEP = "(repeat('[', 5000) || repeat(']', 5000))::jsonb"
POISONS = {
    "args nested 5,000 deep": f"UPDATE pgjobs.jobs SET args = {DEEP} WHERE id = %s",
    "an integer of 5,001 digits": """UPDATE pgjobs.jobs SET args = '{"seconds": 1e5000}'::jsonb WHERE id = %s""",
    "meta nested 5,000 deep": f"UPDATE pgjobs.jobs SET meta = jsonb_build_object('x', {DEEP}) WHERE id = %s",
}


def test_a_job_whose_json_cannot_be_decoded_fails_alone_and_the_worker_goes_on(
    env_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    poisoned = {}
    for what, update in POISONS.items():
        job = nap.enqueue(0, retries=5)
        conn.execute(update, [job.id])
        poisoned[what] = job.id
    good = [nap.enqueue(0) for _ in range(3)]

    async def body(worker: pgjobs.Worker) -> list[Job]:
        ids = [*poisoned.values(), *(j.id for j in good)]
        jobs = await pgjobs.wait_async([i for i in ids if i is not None], 20, dsn=env_dsn)
        later = await nap.enqueue_async(0)  # claimed by the same worker after the poison
        return [*jobs, await wait_for(env_dsn, later.id)]

    jobs = run_with_worker(env_dsn, body, concurrency=8, **FAST)
    by_id = {j.id: j for j in jobs}
    for what, job_id in poisoned.items():
        job = by_id[job_id]
        assert (job.status, job.attempts) == (JobStatus.FAILED, 1), (what, job.status, job.error)
        assert job.error is not None and "cannot be decoded" in job.error, (what, job.error)
        # Read back, it is there, undecodable, for anyone to look at.
        assert isinstance(job.args, _database.Undecodable) or isinstance(job.meta, _database.Undecodable)
    assert all(by_id[j.id].status is JobStatus.COMPLETE for j in good)
    assert jobs[-1].status is JobStatus.COMPLETE
