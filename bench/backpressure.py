"""Backpressure, measured: producers offering twice what the workers can do, against a queue with a
maximum depth. Does the depth stay within the limit, are the producers told, is anything lost?

Each run gets a fresh database on the server of --dsn (CREATE DATABASE, then `pgjobs migrate
--dsn`), a queue `work` with `max_queued` --limit (default 2,000), and two real `pgjobs worker`
processes with `-c 10` on this file's task, an async job that waits --ms milliseconds (default 10):
about 1,200 jobs a second on the development machine. --producers threads (default 4) each offer
--rate jobs a second (default 600, in batches of 50 with enqueue_many and on_full="reject", as a
user does) for --seconds (default 20): twice the workers' pace there. A sampler reads
`pgjobs.pressure()` every 50 ms.

It reports the jobs offered, accepted and refused, the largest depth sampled against the limit, the
pressure the producers could read, and, once the workers are done, accepted jobs not completed
(lost: must be 0) and jobs stored that no producer was told were accepted (must be 0).

    bench/.venv/bin/python bench/backpressure.py [--dsn DSN] [--runs 3] [--limit N] [--producers N]
                                                 [--rate JOBS_PER_S] [--seconds S] [--ms MS]

Run it as a file: it and its workers import pgjobs the way Python finds it (PYTHONPATH first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from scratch import scratch_database, wait_all_complete, workers

import pgjobs

QUEUE = "work"
BATCH = 50


@pgjobs.task(name="backpressure.work")
async def work(n: int, ms: float) -> None:
    """Wait ms milliseconds: a job that takes a worker's slot for a while, as real work does."""
    await asyncio.sleep(ms / 1000)


def produce(db: str, rate: float, seconds: float, ms: float, accepted: list[int], counts: dict[str, int]) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < seconds:
            if sent > elapsed * rate:  # ahead of the pace: wait for it
                time.sleep(min(0.01, sent / rate - elapsed))
                continue
            ids = pgjobs.enqueue_many(
                [pgjobs.job(work, n=sent + i, ms=ms, queue=QUEUE) for i in range(BATCH)], conn=conn, on_full="reject"
            )
            sent += BATCH
            took = [i for i in ids if i is not None]
            accepted.extend(took)
            counts["offered"] += BATCH
            counts["refused"] += BATCH - len(took)


def one_run(dsn: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    with scratch_database(dsn, "backpressure") as db:
        with psycopg.connect(db, autocommit=True) as conn:
            pgjobs.set_queue(QUEUE, max_queued=args.limit, conn=conn)
        samples: list[tuple[int, float]] = []
        stop = threading.Event()

        def sample() -> None:
            with psycopg.connect(db, autocommit=True) as conn:
                while not stop.is_set():
                    (p,) = pgjobs.pressure([QUEUE], conn=conn)
                    samples.append((p.queued, p.pressure or 0.0))
                    time.sleep(0.05)

        with workers(db, Path(__file__).resolve(), QUEUE, 10, logs):
            time.sleep(2)  # the workers start
            accepted: list[int] = []
            counts = {"offered": 0, "refused": 0}
            sampler = threading.Thread(target=sample)
            sampler.start()
            producers = [
                threading.Thread(target=produce, args=(db, args.rate, args.seconds, args.ms, accepted, counts))
                for _ in range(args.producers)
            ]
            started = time.monotonic()
            for t in producers:
                t.start()
            for t in producers:
                t.join()
            offered_for = time.monotonic() - started
            wait_all_complete(db, 300)
            stop.set()
            sampler.join()
            with psycopg.connect(db, autocommit=True) as conn:
                stored = {r[0] for r in conn.execute("SELECT id FROM pgjobs.jobs WHERE status = 'complete'")}
    return {
        **counts,
        "accepted": len(accepted),
        "offered_per_s": counts["offered"] / offered_for,
        "completed_per_s": len(stored) / (offered_for + 0.0),
        "max_depth": max(q for q, _ in samples),
        "mean_pressure": sum(p for _, p in samples) / len(samples),
        "lost": len(set(accepted) - stored),
        "untold": len(stored - set(accepted)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default=os.environ.get("PGJOBS_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=2_000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=600.0, help="jobs a second each producer offers")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--ms", type=float, default=10.0)
    args = parser.parse_args()
    print(f"pgjobs {pgjobs.__version__} from {Path(pgjobs.__file__).parent}; server {conninfo_to_dict(args.dsn)}")
    print(
        f"max_queued {args.limit}; {args.producers} producers x {args.rate:g} jobs/s for {args.seconds:g} s "
        f"(batches of {BATCH}, on_full='reject'); 2 workers x 10 on jobs of {args.ms:g} ms"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            r = one_run(args.dsn, args, Path(tmp))
            print(
                f"run {i + 1}: offered {r['offered']:,} ({r['offered_per_s']:,.0f}/s), accepted {r['accepted']:,}, "
                f"refused {r['refused']:,}; depth at most {r['max_depth']:,} of {args.limit:,}, mean pressure "
                f"{r['mean_pressure']:.2f}; completed {r['completed_per_s']:,.0f}/s of the offering time; "
                f"lost {r['lost']}, stored untold {r['untold']}"
            )


if __name__ == "__main__":
    main()
