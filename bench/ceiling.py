"""How far one PostgreSQL goes: SQL-only claims and completions per second from 1, 2, 4 and 8
connections at once, no worker process in the loop (each connection calls complete_and_dequeue
as a worker does, batches of --batch), on a fresh database holding --jobs queued no-op jobs.

The figure is the server's ceiling for this hot path on this machine: worker processes add their
own cost on top (bench/run's throughput scenario), a pooler or more hosts add none to it.

    bench/.venv/bin/python -m bench.ceiling [--dsn DSN] [--jobs 40000] [--batch 50] [--connections 1,2,4,8]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench import fresh_database
from bench.systems import SYSTEMS
from pgjobs import _database


def drain(dsn: str, name: str, batch: int, counts: list[int], i: int) -> None:
    """Claim and complete until nothing is left, one round trip a batch, as a worker does."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.worker_register(%s, 'bench', 0, 'bench', '{default}', %s, 60)", [name, batch])
        ids: list[int] = []
        attempts: list[int] = []
        while True:
            rows = conn.execute(
                "SELECT id, attempts FROM pgjobs.complete_and_dequeue(%s, '{default}', %s, %s, NULL, %s) WHERE claimed",
                [name, batch, ids, attempts],
            ).fetchall()
            counts[i] += len(ids)
            if not rows:
                break
            ids, attempts = [r[0] for r in rows], [r[1] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="server to create the databases on (default: PGJOBS_DSN or embedded)")
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--connections", default="1,2,4,8")
    args = parser.parse_args()
    system = SYSTEMS["pgjobs"]
    server = _database.resolve_dsn(args.dsn)
    print(f"{args.jobs:,} jobs, batches of {args.batch}, SQL only (complete_and_dequeue)")
    for n in (int(c) for c in args.connections.split(",")):
        with fresh_database(server, system) as dsn:
            system.fill(dsn, args.jobs)
            counts = [0] * n
            threads = [
                threading.Thread(target=drain, args=(dsn, f"ceiling-{i}", args.batch, counts, i)) for i in range(n)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            print(f"  {n} connection(s): {sum(counts) / elapsed:,.0f} jobs/s ({sum(counts):,} in {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
