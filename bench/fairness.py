"""Fair share between tenants, measured: does a late small tenant wait behind a big one's backlog?

Each run gets a fresh database on the server of --dsn (CREATE DATABASE, then `pgjobs migrate
--dsn`), a queue `work` (fair, or not with --unfair), and two real `pgjobs worker` processes with
`-c 50` on this file's task, an async job that waits --ms milliseconds (default 10), so that the
workers' slots, not the database, set the pace. Tenant A enqueues --backlog jobs (default 100,000)
with enqueue_many, as a user does; --late seconds later (default 3) tenants B and C (weights 1 and
2; A's is 1) enqueue --small jobs each (default 1,000).

From the jobs' own times (started_at, the database clock) it reports, per tenant: the jobs run,
the wait from enqueue to start (median, p99, max) and when its last job started. Over the window
from C's arrival (B's came just before) to the start of C's last job, when all three had jobs due, it reports each
tenant's share of the starts beside its fair share (A 1/4, B 1/4, C 1/2), and B's share from then
to its own last start (1/2: A and B, equal weights). A's jobs must all complete: none lost.

    bench/.venv/bin/python bench/fairness.py [--dsn DSN] [--runs 3] [--unfair] [--backlog N]
                                             [--small N] [--late SECONDS] [--ms MS]

Run it as a file: it and its workers import pgjobs the way Python finds it (PYTHONPATH first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from scratch import scratch_database, wait_all_complete, workers

import pgjobs

QUEUE = "work"
WEIGHTS = {"A": 1.0, "B": 1.0, "C": 2.0}


@pgjobs.task(name="fairness.work")
async def work(n: int, ms: float) -> None:
    """Wait ms milliseconds: a job that takes a worker's slot for a while, as real work does."""
    await asyncio.sleep(ms / 1000)


def enqueue(dsn: str, tenant: str, n: int, ms: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, n, 1000):
            pgjobs.enqueue_many(
                [pgjobs.job(work, n=i, ms=ms, queue=QUEUE, tenant=tenant) for i in range(start, min(n, start + 1000))],
                conn=conn,
            )


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def one_run(dsn: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    with scratch_database(dsn, "fairness") as db:
        with psycopg.connect(db, autocommit=True) as conn:
            if not args.unfair:
                pgjobs.set_queue(QUEUE, fair=True, conn=conn)
                for tenant, weight in WEIGHTS.items():
                    pgjobs.set_tenant(QUEUE, tenant, weight, conn=conn)
        enqueue(db, "A", args.backlog, args.ms)
        with workers(db, Path(__file__).resolve(), QUEUE, 50, logs):
            time.sleep(args.late)
            enqueue(db, "B", args.small, args.ms)
            enqueue(db, "C", args.small, args.ms)
            wait_all_complete(db, 600, poll=0.5)
            with psycopg.connect(db, autocommit=True, row_factory=dict_row) as conn:
                rows = conn.execute(
                    "SELECT tenant, status, enqueued_at, started_at, attempts FROM pgjobs.jobs ORDER BY started_at"
                ).fetchall()
    return measure(rows)


def measure(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {t: [r for r in rows if r["tenant"] == t] for t in WEIGHTS}
    out: dict[str, Any] = {"lost": sum(1 for r in rows if r["status"] != "complete")}
    arrival = min(r["enqueued_at"] for r in by["B"] + by["C"])
    both = max(min(r["enqueued_at"] for r in by["B"]), min(r["enqueued_at"] for r in by["C"]))
    c_last = max(r["started_at"] for r in by["C"])
    b_last = max(r["started_at"] for r in by["B"])
    for t, jobs in by.items():
        waits = [(r["started_at"] - r["enqueued_at"]).total_seconds() for r in jobs if r["started_at"]]
        out[t] = {
            "jobs": len(jobs),
            "wait_p50": statistics.median(waits),
            "wait_p99": percentile(waits, 0.99),
            "wait_max": max(waits),
            "last_start": (max(r["started_at"] for r in jobs) - arrival).total_seconds(),
        }
    window = [r for r in rows if r["started_at"] and both <= r["started_at"] <= c_last]
    out["window_s"] = (c_last - both).total_seconds()
    out["share_all_three"] = {t: sum(1 for r in window if r["tenant"] == t) / max(1, len(window)) for t in WEIGHTS}
    after = [r for r in rows if r["started_at"] and c_last < r["started_at"] <= b_last]
    out["share_b_after_c"] = sum(1 for r in after if r["tenant"] == "B") / max(1, len(after))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default=os.environ.get("PGJOBS_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--unfair", action="store_true", help="the same run on a queue without fairness")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--late", type=float, default=3.0)
    parser.add_argument("--ms", type=float, default=10.0)
    args = parser.parse_args()
    print(f"pgjobs {pgjobs.__version__} from {Path(pgjobs.__file__).parent}; server {conninfo_to_dict(args.dsn)}")
    print(f"queue {'not fair' if args.unfair else 'fair'}; A {args.backlog} jobs, B and C {args.small} each "
          f"{args.late:g} s later; weights {WEIGHTS}; 2 workers x 50; jobs of {args.ms:g} ms")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            r = one_run(args.dsn, args, Path(tmp))
            share = " ".join(f"{t} {v:.3f}" for t, v in r["share_all_three"].items())
            print(
                f"run {i + 1}: lost {r['lost']}; starts while all three had jobs due ({r['window_s']:.2f} s): "
                f"{share} (fair: A 0.250 B 0.250 C 0.500); B after C: {r['share_b_after_c']:.3f} (fair: 0.500)"
            )
            for t in WEIGHTS:
                s = r[t]
                print(
                    f"  {t}: {s['jobs']} jobs, wait p50 {s['wait_p50']:.2f} s p99 {s['wait_p99']:.2f} s "
                    f"max {s['wait_max']:.2f} s, last start {s['last_start']:.2f} s after B and C arrived"
                )


if __name__ == "__main__":
    main()
