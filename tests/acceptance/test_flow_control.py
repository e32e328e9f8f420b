"""Queue settings under real worker processes: every worker obeys one limit together."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from .helpers import Process

pytestmark = pytest.mark.acceptance


def run_workers(dsn: str, tmp_path: Path, total: int, *args: str, timeout: float = 120) -> None:
    env = {"PGJOBS_ACCEPTANCE_LOG": str(tmp_path)}
    workers = [
        Process("--log-level", "warning", "worker", "tests.acceptance.tasks", "--dsn", dsn, "-c", "20", *args, env=env)
        for _ in range(4)
    ]
    try:
        deadline = time.monotonic() + timeout
        with psycopg.connect(dsn, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE status = 'complete'").fetchone() != (total,):
                if time.monotonic() >= deadline:
                    # What a stall looks like, to tell a stuck worker from a stuck claim.
                    states = conn.execute(
                        "SELECT status, worker_id, count(*) FROM pgjobs.jobs GROUP BY 1, 2 ORDER BY 1, 2"
                    ).fetchall()
                    exits = [w.popen.poll() for w in workers]
                    pytest.fail(
                        f"not all {total} jobs completed within {timeout} s: jobs {states}, worker exits {exits}\n"
                        + "\n".join(f"--- worker {i}:\n{w.output()[-3000:]}" for i, w in enumerate(workers))
                    )
                time.sleep(0.2)
            # A worker still starting (slow imports on a loaded machine) has no signal handler yet:
            # the jobs may all be done before then. Registered, it has one.
            while conn.execute("SELECT count(*) FROM pgjobs.workers").fetchone() != (len(workers),):
                if time.monotonic() >= deadline:
                    pytest.fail(f"not all {len(workers)} workers registered within {timeout} s")
                time.sleep(0.05)
        for w in workers:
            w.signal(signal.SIGTERM)
        assert [w.wait(timeout=30) for w in workers] == [0, 0, 0, 0], [w.output() for w in workers]
    finally:
        for w in workers:
            w.close()


def enqueue(dsn: str, jobs: list[dict[str, object]], **settings: object) -> None:
    names = ", ".join(f"{k} => %({k})s" for k in settings)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SELECT pgjobs.set_queue('default', {names})", settings)
        conn.execute("SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])


def starts_and_ends(dsn: str) -> list[tuple[float, float, str | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM completed_at)::float8, group_key"
            " FROM pgjobs.jobs ORDER BY started_at"
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_rate_limit_holds_across_four_workers(dsn: str, tmp_path: Path) -> None:
    limit, period, total = 20, 1.0, 120
    enqueue(dsn, [{"task": "acceptance.record"} for _ in range(total)], rate_limit=limit, rate_period=period)
    run_workers(dsn, tmp_path, total)
    starts = [s for s, _, _ in starts_and_ends(dsn)]
    # No window of one period holds more claims than the limit (the database clock of each claim).
    busiest = max(sum(1 for t in starts if s - period < t <= s) for s in starts)
    assert busiest <= limit
    rate = (len(starts) - limit) / (starts[-1] - starts[0])
    print(f"{rate:.1f} claims/s for a limit of {limit}/s")
    assert rate > 0.6 * limit / period  # loosely: the limit does not stall the queue


def test_max_active_and_group_max_active_hold_across_four_workers(dsn: str, tmp_path: Path) -> None:
    jobs = [{"task": "acceptance.record", "args": {"seconds": 0.05}, "group_key": f"g{i % 3}"} for i in range(60)]
    jobs += [{"task": "acceptance.record", "args": {"seconds": 0.05}} for _ in range(60)]
    enqueue(dsn, jobs, max_active=5, group_max_active=2)
    run_workers(dsn, tmp_path, len(jobs))
    spans = starts_and_ends(dsn)

    def most_at_once(group: str | None = "any") -> int:
        chosen = [(s, e) for s, e, g in spans if group == "any" or g == group]
        return max(sum(1 for s2, e2 in chosen if s2 <= s < e2) for s, _ in chosen)

    assert most_at_once() <= 5
    assert all(most_at_once(g) <= 2 for g in ("g0", "g1", "g2"))
    assert most_at_once() >= 3  # the workers did run jobs side by side


def test_a_group_rate_limit_holds_for_each_group_across_four_workers(dsn: str, tmp_path: Path) -> None:
    limit, total = 5, 40
    jobs = [{"task": "acceptance.record", "group_key": f"customer{i % 2}"} for i in range(total)]
    enqueue(dsn, jobs, group_rate_limit=limit, group_rate_period=1.0, group_max_active=0)
    run_workers(dsn, tmp_path, total)
    spans = starts_and_ends(dsn)
    for group in ("customer0", "customer1"):
        starts = [s for s, _, g in spans if g == group]
        assert max(sum(1 for t in starts if s - 1.0 < t <= s) for s in starts) <= limit


def test_a_paused_queue_waits_for_its_resume_under_four_workers(dsn: str, tmp_path: Path) -> None:
    total = 30
    enqueue(dsn, [{"task": "acceptance.record"} for _ in range(total)], paused=True)

    def resume_later() -> None:
        time.sleep(2)
        with psycopg.connect(dsn, autocommit=True) as conn:
            resumed.append(conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()[0])  # type: ignore[index]
            conn.execute("SELECT pgjobs.set_queue('default', paused => false)")

    resumed: list[float] = []
    thread = threading.Thread(target=resume_later)
    thread.start()
    try:
        run_workers(dsn, tmp_path, total)
    finally:
        thread.join()
    assert min(s for s, _, _ in starts_and_ends(dsn)) >= resumed[0]  # nothing ran while paused


def test_on_a_fair_queue_a_late_tenant_is_not_stuck_behind_a_backlog_under_four_workers(
    dsn: str, tmp_path: Path
) -> None:
    backlog, late = 1500, 60
    enqueue(dsn, [{"task": "acceptance.record", "args": {"seconds": 0.005}, "tenant": "big"}] * backlog, fair=True)

    def arrive_late() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE started_at IS NOT NULL").fetchone()[0] < 100:  # type: ignore[index]
                time.sleep(0.01)
            jobs = [{"task": "acceptance.record", "args": {"seconds": 0.005}, "tenant": "small"}] * late
            conn.execute("SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])

    thread = threading.Thread(target=arrive_late)
    thread.start()
    try:
        run_workers(dsn, tmp_path, backlog + late)
    finally:
        thread.join()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tenant, enqueued_at, started_at, attempts FROM pgjobs.jobs").fetchall()
    assert len(rows) == backlog + late and {r[3] for r in rows} == {1}  # every job ran, once
    arrived = min(r[1] for r in rows if r[0] == "small")
    small_done = max(r[2] for r in rows if r[0] == "small")
    big_between = sum(1 for r in rows if r[0] == "big" and arrived <= r[2] <= small_done)
    # Equal weights: about one of big's jobs for each of small's; first come, first served: all the
    # rest of big's backlog (over 1,300) would start first.
    print(f"{big_between} of big's jobs started while small's {late} were due")
    assert big_between <= 3 * late
