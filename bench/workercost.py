"""What one job costs a `pgjobs worker` process and the server, measured in CPU time over a drain.

A fresh database and idle `pgjobs worker bench.tasks` processes; then --jobs no-op jobs taking
keyword arguments are enqueued with `enqueue_many` (as a user does) and the workers drain them.
Prints, per job: the worker processes' CPU microseconds (read from /proc between the moment
they are idle and the moment the last job completes, so start-up is not counted), the CPU of
their server backends, and how many jobs each dequeue and complete_many call carried
(track_functions). CPU time is steadier than throughput on a noisy machine.

    bench/.venv/bin/python -m bench.workercost [--dsn DSN] [--jobs 20000] [--processes 1] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench import fresh_database, stop
from bench.dbcost import cpu_seconds
from bench.systems import SYSTEMS
from pgjobs import _database


def backends(conn: psycopg.Connection[tuple[int]]) -> list[int]:
    rows = conn.execute(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'pgjobs %'"""
    ).fetchall()
    return [r[0] for r in rows]


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="server to create the database on (default: PGJOBS_DSN or embedded)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    if args.jobs < 1000 or args.jobs % 1000:
        parser.error("--jobs must be a multiple of 1,000 (they are enqueued in batches of 1,000)")
    system = SYSTEMS["pgjobs"]
    with fresh_database(_database.resolve_dsn(args.dsn), system) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(
                psycopg.sql.Identifier(conn.info.dbname)))  # fmt: skip
        workers = system.start_workers(dsn, args.processes, args.concurrency)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                deadline = time.monotonic() + 30
                while conn.execute("SELECT count(*) FROM pgjobs.workers WHERE status = 'running'").fetchone() != (
                    args.processes,
                ):
                    if time.monotonic() > deadline:
                        raise SystemExit("the workers did not start")
                    time.sleep(0.1)
                time.sleep(2)  # past start-up: first heartbeats, reaper and scheduler passes
                server = backends(conn)
                conn.execute("SELECT pg_stat_reset()")
                pids = [w.pid for w in workers]
                worker0, server0, wall0 = total_cpu(pids), total_cpu(server), time.perf_counter()
                asyncio.run(system.enqueue_batched(dsn, args.jobs, 1000))
                while conn.execute(system.unfinished_sql()).fetchone() != (0,):
                    time.sleep(0.05)
                worker1, server1, wall1 = total_cpu(pids), total_cpu(server), time.perf_counter()
        finally:
            stop(workers)
        time.sleep(1)  # statistics reach the shared view after the sessions report them
        with psycopg.connect(dsn) as conn:
            functions = conn.execute(
                """SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions
                   WHERE schemaname = 'pgjobs' ORDER BY total_time DESC"""
            ).fetchall()
    calls = {name: count for name, count, _, _ in functions}
    n = args.jobs
    print(f"{n:,} jobs, {args.processes} worker process(es) x {args.concurrency}, enqueued and drained in "
          f"{wall1 - wall0:.2f} s")  # fmt: skip
    print(f"  worker processes: {1e6 * (worker1 - worker0) / n:.1f} us CPU a job")
    print(f"  their server backends: {1e6 * (server1 - server0) / n:.1f} us CPU a job (the enqueuer's not counted)")
    for name in ("dequeue", "complete_many"):
        if calls.get(name):
            print(f"  {name}: {calls[name]:,} calls, {n / calls[name]:.1f} jobs a call")
    print("  server time in pgjobs functions, us a job (total / self), every session:")
    for name, count, total, own in functions[:12]:
        print(f"    {name:<28}{1000 * total / n:8.1f}{1000 * own / n:8.1f}   {count:,} calls")


if __name__ == "__main__":
    main()
