"""pgjobs benchmark: enqueue rates, no-op throughput and enqueue-to-start latency.

    python bench/bench.py [--dsn DSN] [--repeat 3] [--jobs 20000]

Each measurement runs on a fresh database created on the server of --dsn (or PGJOBS_DSN, or
the embedded server); each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pgjobs  # noqa: E402
from pgjobs import _database  # noqa: E402


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    name = f"pgjobs_bench_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    pgjobs.migrate(dsn)
    try:
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start_workers(dsn: str, processes: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "pgjobs", "--log-level", "warning", "worker", "bench.tasks"]
    return [
        subprocess.Popen([*cmd, "--dsn", dsn, "-c", str(concurrency)], cwd=ROOT, stdout=subprocess.DEVNULL)
        for _ in range(processes)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(timeout=60)


def wait_complete(conn: psycopg.Connection[tuple[object, ...]], total: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE status = 'complete'").fetchone()
        if row and row[0] >= total:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{total} jobs did not complete in {timeout} s")


def enqueue_single(server: str, n: int) -> float:
    with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(n):
            pgjobs.enqueue("bench.noop", conn=conn)
        return n / (time.perf_counter() - started)


def enqueue_batched(server: str, n: int, batch: int = 1000) -> float:
    with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        requests = [pgjobs.job("bench.noop") for _ in range(batch)]
        started = time.perf_counter()
        for _ in range(n // batch):
            pgjobs.enqueue_many(requests, conn=conn)
        return (n // batch) * batch / (time.perf_counter() - started)


def throughput(server: str, n: int, processes: int, concurrency: int) -> float:
    with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(n // 1000):
            pgjobs.enqueue_many([pgjobs.job("bench.noop") for _ in range(1000)], conn=conn)
        workers = start_workers(dsn, processes, concurrency)
        try:
            wait_complete(conn, (n // 1000) * 1000)
        finally:
            stop_workers(workers)
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(completed_at) - min(started_at)) FROM pgjobs.jobs"
        ).fetchone()
        assert row is not None
        return float(row[0]) / float(row[1])


def latency(server: str, n: int = 200, gap: float = 0.02) -> list[float]:
    """Milliseconds from enqueue commit to task start, on an idle worker."""
    with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        workers = start_workers(dsn, 1, 10)
        try:
            time.sleep(2)  # let the worker start and go idle
            committed: dict[int, float] = {}
            for _ in range(n):
                job = pgjobs.enqueue("bench.stamp", conn=conn)
                committed[job.id] = time.time()  # type: ignore[index]
                time.sleep(gap)
            wait_complete(conn, n)
        finally:
            stop_workers(workers)
        rows = conn.execute("SELECT id, (result #>> '{}')::float8 FROM pgjobs.jobs").fetchall()
        return sorted((float(start) - committed[int(job_id)]) * 1000 for job_id, start in rows)


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def median_of(repeat: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="server to create benchmark databases on (default: PGJOBS_DSN or embedded)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is printed")
    parser.add_argument("--jobs", type=int, default=20000, help="jobs drained in the throughput runs")
    args = parser.parse_args()
    server = _database.resolve_dsn(args.dsn)
    with psycopg.connect(server) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    print(f"pgjobs {pgjobs.__version__} on PostgreSQL {version[0] if version else '?'}; median of {args.repeat}")
    print(f"{'scenario':<52} {'result':>16}")

    def row(name: str, value: str) -> None:
        print(f"{name:<52} {value:>16}", flush=True)

    row(
        "enqueue, one job per transaction (5,000)",
        f"{median_of(args.repeat, lambda: enqueue_single(server, 5000)):,.0f} jobs/s",
    )
    row(
        "enqueue_many, batches of 1,000 (100,000)",
        f"{median_of(args.repeat, lambda: enqueue_batched(server, 100_000)):,.0f} jobs/s",
    )
    for processes, concurrency in ((1, 10), (1, 50), (2, 10), (2, 50)):
        rate = median_of(args.repeat, lambda p=processes, c=concurrency: throughput(server, args.jobs, p, c))
        row(
            f"no-op throughput, {processes} worker(s) x concurrency {concurrency} ({args.jobs:,})",
            f"{rate:,.0f} jobs/s",
        )
    runs = [latency(server) for _ in range(args.repeat)]
    for p in (50, 95, 99):
        row(
            f"latency enqueue commit -> task start, p{p}", f"{statistics.median(percentile(r, p) for r in runs):.2f} ms"
        )


if __name__ == "__main__":
    main()
