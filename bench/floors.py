"""The floors under three of bench/run's targets: the least any pgjobs call could cost on this
machine and driver, beside pgjobs and PgQueuer measured in the same run.

- One enqueue per transaction (target 1.3x PgQueuer): a bare ``INSERT ... RETURNING id`` of one
  job into ``pgjobs.jobs_live`` (its indexes, defaults and constraints; no check, no NOTIFY, no row
  returned), one autocommit transaction each, from psycopg; and the same into a table of two
  columns with one index, the driver's own floor.
- Batches of 1,000 (target 2x PgQueuer): one ``INSERT`` of 1,000 jobs built with
  ``pgjobs.job()`` into ``pgjobs.jobs_live``, every other column left to its default: no check,
  no NOTIFY, ids returned.
- Latency on an idle worker (target p50 1.2 ms): the round trip of one ``UPDATE ... FOR UPDATE
  SKIP LOCKED`` claim statement sent 20 ms after the job's commit (as bench/run's latency jobs
  arrive), beside pgjobs' own claim (``complete_and_dequeue``) sent the same way. The task's
  start adds the notification and the worker's own steps on top of either.

Where the floor itself misses the target, no change inside pgjobs meets it on this machine.

    bench/.venv/bin/python -m bench.floors [--dsn DSN] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pgjobs
from bench.bench import fresh_database
from bench.systems import ARGS, SYSTEMS
from pgjobs import _database

SINGLE, BATCHES, BATCH, CLAIMS, GAP = 2_000, 20, 1_000, 200, 0.02

BARE_CLAIM = """
UPDATE pgjobs.jobs_live j SET status = 'active', worker_id = %(worker)s, started_at = now(), touched_at = now(),
                             attempts = j.attempts + 1
WHERE j.id = (SELECT c.id FROM pgjobs.jobs_live c
              WHERE c.status = 'queued' AND c.queue = 'default' AND c.scheduled_at <= now()
              ORDER BY c.queue, c.priority, c.scheduled_at, c.id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING j.id, j.attempts, j.task, j.args"""

# As the worker sends it (binary), with nothing to complete.
PGJOBS_CLAIM = "SELECT * FROM pgjobs.complete_and_dequeue(%(worker)s, '{default}', 10, '{}', NULL, '{}')"


async def bare_single(dsn: str, jobs_table: bool) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        if jobs_table:
            insert = """INSERT INTO pgjobs.jobs_live (id, task, args) OVERRIDING SYSTEM VALUE
                        VALUES (nextval('pgjobs.jobs_id_seq'), 'bench.noop', %s) RETURNING id"""
        else:
            await conn.execute("CREATE TABLE floor_single (id bigserial PRIMARY KEY, args jsonb NOT NULL)")
            insert = "INSERT INTO floor_single (args) VALUES (%s) RETURNING id"
        started = time.perf_counter()
        for _ in range(SINGLE):
            cur = await conn.execute(insert, [Jsonb(ARGS)])
            await cur.fetchall()
        return SINGLE / (time.perf_counter() - started)


async def bare_batches(dsn: str) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(BATCHES):
            requests = [pgjobs.job("bench.noop", **ARGS) for _ in range(BATCH)]
            cur = await conn.execute(
                """INSERT INTO pgjobs.jobs_live (id, task, args) OVERRIDING SYSTEM VALUE
                   SELECT nextval('pgjobs.jobs_id_seq'), 'bench.noop', a FROM jsonb_array_elements(%s::jsonb) AS a
                   RETURNING id""",
                ["[" + ",".join(r.encoded for r in requests) + "]"],
            )
            await cur.fetchall()
        return BATCHES * BATCH / (time.perf_counter() - started)


async def claim_p50(dsn: str, bare: bool) -> float:
    """Milliseconds, p50: a claim's round trip, sent GAP seconds after its job's commit."""
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as producer,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as worker,
    ):
        await worker.execute("SELECT pgjobs.worker_register('floor', 'bench', 0, 'bench', '{default}', 10, 60)")
        query = BARE_CLAIM if bare else PGJOBS_CLAIM
        trips = []
        for _ in range(CLAIMS):
            await pgjobs.enqueue_async("bench.noop", **ARGS, conn=producer)
            await asyncio.sleep(GAP)
            started = time.perf_counter()
            async with worker.cursor(row_factory=tuple_row) as cur:
                await cur.execute(query, {"worker": "floor"}, binary=True)
                rows = await cur.fetchall()
            trips.append(time.perf_counter() - started)
            assert len(rows) == 1, rows
        return statistics.median(trips) * 1000


def measure(server: str, name: str, what: Callable[[str], Coroutine[Any, Any, float]]) -> float:
    system = SYSTEMS[name]
    with fresh_database(server, system) as dsn:
        return asyncio.run(what(dsn))


def enqueue_rate(server: str, name: str, n: int, batch: int | None = None) -> float:
    """Jobs a second as bench/run's enqueue scenario measures them for that system."""
    system = SYSTEMS[name]
    with fresh_database(server, system) as dsn:
        seconds = asyncio.run(system.enqueue_single(dsn, n) if batch is None else system.enqueue_batched(dsn, n, batch))
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="server to create the databases on (default: PGJOBS_DSN or embedded)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = _database.resolve_dsn(args.dsn)
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        figures = {
            "single pgqueuer": enqueue_rate(server, "pgqueuer", SINGLE),
            "single pgjobs": enqueue_rate(server, "pgjobs", SINGLE),
            "single floor": measure(server, "pgjobs", lambda d: bare_single(d, jobs_table=True)),
            "single driver floor": measure(server, "pgjobs", lambda d: bare_single(d, jobs_table=False)),
            "batches pgqueuer": enqueue_rate(server, "pgqueuer", BATCHES * BATCH, BATCH),
            "batches pgjobs": enqueue_rate(server, "pgjobs", BATCHES * BATCH, BATCH),
            "batches floor": measure(server, "pgjobs", bare_batches),
            "claim pgjobs": measure(server, "pgjobs", lambda d: claim_p50(d, bare=False)),
            "claim floor": measure(server, "pgjobs", lambda d: claim_p50(d, bare=True)),
        }
        for k, v in figures.items():
            runs.setdefault(k, []).append(v)
    m = {k: statistics.median(v) for k, v in runs.items()}
    print(f"median of {args.repeat}; psycopg {psycopg.__version__}")
    print(f"{'':44}{'pgqueuer':>12}{'pgjobs':>12}{'floor':>12}  floor vs pgqueuer, target")
    for row, unit, target in (("single", "jobs/s", "1.3x"), ("batches", "jobs/s", "2x")):
        print(f"{'enqueue ' + row + ', ' + unit:44}{m[row + ' pgqueuer']:>12,.0f}{m[row + ' pgjobs']:>12,.0f}"
              f"{m[row + ' floor']:>12,.0f}  {m[row + ' floor'] / m[row + ' pgqueuer']:.2f}x, {target}")  # fmt: skip
    print(f"{'enqueue single into a one-index table, jobs/s':44}{'':>12}{'':>12}{m['single driver floor']:>12,.0f}"
          f"  {m['single driver floor'] / m['single pgqueuer']:.2f}x, 1.3x")  # fmt: skip
    print(f"{'claim round trip after 20 ms idle, p50 ms':44}{'':>12}{m['claim pgjobs']:>12.2f}"
          f"{m['claim floor']:>12.2f}  target for enqueue -> start: 1.2 ms")  # fmt: skip


if __name__ == "__main__":
    main()
