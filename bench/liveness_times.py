"""How long a worker's liveness takes to act, measured on a real `pgjobs worker` process.

- lost: a job claimed under a live worker's id that the worker does not hold (a claim whose
  answer never reached it), at a random moment between two beats, stands active until the
  database settles it at one of the worker's beats: seconds from the claim to the settlement, in
  heart rates (the rule allows between one and two).
- fence: the worker's row is held locked, so that no beat goes through (as when the database does
  not answer); seconds from the last beat that went through to the worker giving its run up (the
  fence), against the 2.1 heart rates after which the reaper may declare it dead (the verdict).

    .venv/bin/python bench/liveness_times.py [--dsn DSN] [--heart-rate 1] [--trials 10]

Each measure runs on a fresh database created on the server of --dsn (default: PGJOBS_DSN, else
the embedded server). Times on the database side come from the database clock; the fence's end
is read from the job's completed_at (the given-up run's failed attempt, recorded once the lock
goes), and its start from the worker's last heartbeat_at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from scratch import scratch_database

import pgjobs

GRACE = 2.1  # heart rates after which the reaper may declare a silent worker dead


@pgjobs.task(name="liveness.sleep")
async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@contextlib.contextmanager
def worker(dsn: str, heart_rate: float) -> Iterator[str]:
    """A `pgjobs worker` process on this file's task; yields its id once it is registered."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(Path(__file__).parent)) if p),
    }
    command = [str(Path(sys.executable).with_name("pgjobs")), "--log-level", "warning", "worker", Path(__file__).stem,
               "--dsn", dsn, "--heart-rate", str(heart_rate), "--reap-interval", "3600", "-c", "4"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            for _ in range(300):
                row = conn.execute("SELECT id FROM pgjobs.workers WHERE pid = %s", [process.pid]).fetchone()
                if row:
                    yield row["id"]
                    return
                time.sleep(0.1)
        raise SystemExit("the worker did not register")
    finally:
        process.terminate()
        process.wait(30)


def wait(conn: psycopg.Connection[dict], query: str, params: list[object], timeout: float) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(query, params).fetchone()
        if row:
            return row
        time.sleep(0.01)
    raise SystemExit(f"timed out: {query}")


def lost(dsn: str, heart_rate: float, trials: int) -> list[float]:
    took = []
    with worker(dsn, heart_rate) as worker_id, psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(trials):
            time.sleep(random.uniform(0, heart_rate))  # anywhere between two beats
            (job_id,) = pgjobs.enqueue_many([sleep.job(0, queue="elsewhere", retry_delay=3600)], conn=conn)
            (claimed,) = conn.execute("SELECT id FROM pgjobs.dequeue(%s, '{elsewhere}', 1)", [worker_id]).fetchall()
            assert claimed["id"] == job_id
            claimed = conn.execute("SELECT started_at FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
            settled = "SELECT error FROM pgjobs.jobs WHERE id = %s AND status <> 'active'"
            row = wait(conn, settled, [job_id], 10 * heart_rate)
            assert row["error"].startswith("lost by worker"), row
            settled_at = conn.execute("SELECT now() AS t").fetchone()["t"]  # an upper bound, 10 ms late at most
            took.append((settled_at - claimed["started_at"]).total_seconds() / heart_rate)
    return took


def fence(dsn: str, heart_rate: float, trials: int) -> list[float]:
    took = []
    with worker(dsn, heart_rate) as worker_id, psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for _ in range(trials):
            (job_id,) = pgjobs.enqueue_many([sleep.job(3600, retry_delay=3600)], conn=conn)
            wait(conn, "SELECT 1 FROM pgjobs.jobs WHERE id = %s AND status = 'active'", [job_id], 10)
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as holder, holder.transaction():
                holder.execute("SELECT 1 FROM pgjobs.workers WHERE id = %s FOR UPDATE", [worker_id])
                last = holder.execute("SELECT heartbeat_at FROM pgjobs.workers WHERE id = %s", [worker_id]).fetchone()
                time.sleep(GRACE * heart_rate + 1)
            row = wait(conn, "SELECT error, completed_at, touched_at, status FROM pgjobs.jobs WHERE id = %s "
                             "AND status = 'queued'", [job_id], 10 * heart_rate)  # fmt: skip
            assert row["error"].startswith("given up by worker"), row
            # The given-up run is recorded once the lock goes; the worker logged when it gave up.
            gave_up = row["touched_at"]
            took.append((gave_up - last["heartbeat_at"]).total_seconds() / heart_rate)
            conn.execute("SELECT pgjobs.cancel(%s)", [job_id])
    return took


def show(name: str, values: list[float], heart_rate: float) -> None:
    print(f"{name}: {len(values)} trials, heart rate {heart_rate:g} s: min {min(values):.2f}, median "
          f"{statistics.median(values):.2f}, max {max(values):.2f} heart rates", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn")
    parser.add_argument("--heart-rate", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    server = pgjobs.resolve_dsn(args.dsn)
    with scratch_database(server, "liveness_times") as dsn:
        show("lost run settled after its claim", lost(dsn, args.heart_rate, args.trials), args.heart_rate)
    with scratch_database(server, "liveness_times") as dsn:
        show("run given up after the last beat", fence(dsn, args.heart_rate, args.trials), args.heart_rate)


if __name__ == "__main__":
    main()
