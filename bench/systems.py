"""The queues the benchmark compares, behind one interface, and their worker processes.

Each system enqueues, fills a backlog, starts worker processes running a no-op task, and says how
many of its jobs are unfinished. Peers are configured for throughput the way their documentation
recommends: PgQueuer on asyncpg with batched dequeues (batch_size 10, its default, raised with the
concurrency) and LISTEN/NOTIFY; procrastinate with its psycopg connector, LISTEN/NOTIFY and one
worker per process with the asked concurrency.

`python -m bench.systems worker SYSTEM DSN CONCURRENCY` runs one worker process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
LATENCY_FILE = "BENCH_LATENCY_FILE"


# The keyword arguments every benchmark job carries and every task checks it received, as a real
# task would use them (a small dict, stored as JSON by each system).
ARGS: dict[str, Any] = {"account_id": 42, "action": "sync"}
ARGS_JSON = json.dumps(ARGS)


def check_args(account_id: int, action: str) -> None:
    if account_id != ARGS["account_id"] or action != ARGS["action"]:
        raise ValueError(f"the task got other arguments: {account_id!r}, {action!r}")


def _stamp(tag: Any) -> None:
    """Record when a latency job started (the benchmark compares it with its enqueue commit)."""
    path = os.environ.get(LATENCY_FILE)
    if path and tag is not None:
        with open(path, "a") as f:
            f.write(f"{tag} {time.time()!r}\n")


class System:
    name = ""
    supports_groups = False
    keeps_finished = False
    queue_tables: tuple[str, ...] = ()  # whose size and dead tuples the sustained run reports

    def install(self, dsn: str) -> None:
        raise NotImplementedError

    async def enqueue_single(self, dsn: str, n: int) -> float:
        """Seconds to enqueue n jobs, one per transaction."""
        raise NotImplementedError

    async def enqueue_batched(self, dsn: str, n: int, batch: int) -> float:
        """Seconds to enqueue n jobs in batches."""
        raise NotImplementedError

    def fill(self, dsn: str, n: int, *, groups: int = 0, finished: bool = False) -> None:
        """Insert n no-op jobs fast (queued, or finished ones kept as history)."""
        raise NotImplementedError

    async def enqueue_tagged(self, conn: Any, tag: int) -> None:
        """Enqueue one latency job carrying tag (conn from connect_async)."""
        raise NotImplementedError

    async def connect_async(self, dsn: str) -> Any:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)

    async def close_async(self, conn: Any) -> None:
        await conn.close()

    # Counts the unfinished jobs (a query ending in a WHERE clause).
    unfinished_query = ""

    def unfinished_sql(self, upto: bool = False) -> str:
        """Count the unfinished jobs; with ``upto``, only those whose id is at most %(upto)s (a
        primary-key range, so that watching a drain from a deep backlog costs the server little)."""
        return self.unfinished_query + (" AND id <= %(upto)s" if upto else "")

    def first_queued_sql(self) -> str:
        """The lowest id of a queued job."""
        raise NotImplementedError

    def worker_command(self, dsn: str, concurrency: int) -> list[str]:
        return [sys.executable, "-m", "bench.systems", "worker", self.name, dsn, str(concurrency)]

    def start_workers(
        self, dsn: str, processes: int, concurrency: int, env: dict[str, str] | None = None
    ) -> list[subprocess.Popen[bytes]]:
        return [
            subprocess.Popen(self.worker_command(dsn, concurrency), cwd=ROOT, env={**os.environ, **(env or {})},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(processes)
        ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
class Pgjobs(System):
    name = "pgjobs"
    supports_groups = True
    keeps_finished = True
    queue_tables = ("pgjobs.jobs_live",)  # the hot table; history is in pgjobs.jobs_done

    def install(self, dsn: str) -> None:
        import pgjobs

        pgjobs.migrate(dsn)

    async def enqueue_single(self, dsn: str, n: int) -> float:
        import pgjobs

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            for _ in range(n):
                await pgjobs.enqueue_async("bench.noop", **ARGS, conn=conn)
            return time.perf_counter() - started

    async def enqueue_batched(self, dsn: str, n: int, batch: int) -> float:
        import pgjobs

        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            for _ in range(n // batch):
                # Each batch's requests made anew, as a user's distinct jobs are (job() encodes them).
                await pgjobs.enqueue_many_async([pgjobs.job("bench.noop", **ARGS) for _ in range(batch)], conn=conn)
            return time.perf_counter() - started

    def fill(self, dsn: str, n: int, *, groups: int = 0, finished: bool = False) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Finished jobs where pgjobs keeps them: in history, as a reaper pass leaves them (the
            # pass also makes history's days). Just-finished ones are the drain scenario's part.
            conn.execute("SELECT * FROM pgjobs.reap()")
            conn.execute(
                """INSERT INTO pgjobs.jobs (task, args, group_key, status, completed_at, expires_at)
                   SELECT 'bench.noop', %(args)s::jsonb, CASE WHEN %(groups)s > 0 THEN 'g' || (i %% %(groups)s) END,
                          CASE WHEN %(finished)s THEN 'complete' ELSE 'queued' END::pgjobs.job_status,
                          CASE WHEN %(finished)s THEN now() END,
                          CASE WHEN %(finished)s THEN now() + interval '1 day' END
                   FROM generate_series(1, %(n)s) i""",
                {"n": n, "groups": groups, "finished": finished, "args": ARGS_JSON},
            )
            conn.execute("VACUUM ANALYZE pgjobs.jobs")

    async def enqueue_tagged(self, conn: Any, tag: int) -> None:
        import pgjobs

        # The default ttl (a day): finished jobs leave the hot table at the reaper's next pass, so
        # it stays bounded whatever history keeps.
        await pgjobs.enqueue_async("bench.stamp", **ARGS, tag=tag, conn=conn)

    # Unfinished jobs are all in the hot table; expires_at IS NULL keeps history out of the count.
    unfinished_query = "SELECT count(*) FROM pgjobs.jobs WHERE status IN ('queued', 'active') AND expires_at IS NULL"

    def first_queued_sql(self) -> str:
        return "SELECT min(id) FROM pgjobs.jobs WHERE status = 'queued' AND expires_at IS NULL"

    def worker_command(self, dsn: str, concurrency: int) -> list[str]:
        return [sys.executable, "-m", "pgjobs", "--log-level", "warning", "worker", "bench.tasks",
                "--dsn", dsn, "-c", str(concurrency)]  # fmt: skip


async def _asyncpg_connect(dsn: str) -> Any:
    """asyncpg takes a URI or keywords, not a libpq key=value string."""
    import asyncpg
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    renamed = {"dbname": "database"}
    return await asyncpg.connect(**{renamed.get(k, k): v for k, v in params.items() if k != "connect_timeout"})


# ------------------------------------------------------------------------------------------------
class PgQueuer(System):
    name = "pgqueuer"
    queue_tables = ("pgqueuer",)  # finished jobs leave it (PgQueuer logs them elsewhere)

    @staticmethod
    async def _queries(conn: Any) -> Any:
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        return Queries(AsyncpgDriver(conn))

    def install(self, dsn: str) -> None:
        async def main() -> None:
            conn = await self.connect_async(dsn)
            await (await self._queries(conn)).install()
            await conn.close()

        asyncio.run(main())

    async def connect_async(self, dsn: str) -> Any:
        return await _asyncpg_connect(dsn)

    async def enqueue_single(self, dsn: str, n: int) -> float:
        conn = await self.connect_async(dsn)
        q = await self._queries(conn)
        started = time.perf_counter()
        for _ in range(n):
            await q.enqueue("noop", json.dumps(ARGS).encode())  # a user's payload, encoded per job
        elapsed = time.perf_counter() - started
        await conn.close()
        return elapsed

    async def enqueue_batched(self, dsn: str, n: int, batch: int) -> float:
        conn = await self.connect_async(dsn)
        q = await self._queries(conn)
        started = time.perf_counter()
        for _ in range(n // batch):
            await q.enqueue(["noop"] * batch, [json.dumps(ARGS).encode() for _ in range(batch)], [0] * batch)
        elapsed = time.perf_counter() - started
        await conn.close()
        return elapsed

    def fill(self, dsn: str, n: int, *, groups: int = 0, finished: bool = False) -> None:
        if finished:
            return  # PgQueuer deletes finished jobs: it keeps no history in the queue table
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO pgqueuer (priority, status, entrypoint, payload)
                   SELECT 0, 'queued', 'noop', %s FROM generate_series(1, %s)""",
                [ARGS_JSON.encode(), n],
            )
            conn.execute("VACUUM ANALYZE pgqueuer")

    async def enqueue_tagged(self, conn: Any, tag: int) -> None:
        await (await self._queries(conn)).enqueue("stamp", json.dumps({**ARGS, "tag": tag}).encode())

    unfinished_query = "SELECT count(*) FROM pgqueuer WHERE true"

    def first_queued_sql(self) -> str:
        return "SELECT min(id) FROM pgqueuer"

    @staticmethod
    async def work(dsn: str, concurrency: int) -> None:
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.qm import QueueManager
        from pgqueuer.queries import Queries

        conn = await _asyncpg_connect(dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            check_args(**json.loads(job.payload))

        @qm.entrypoint("stamp")
        async def stamp(job: Any) -> None:
            args = json.loads(job.payload)
            tag = args.pop("tag")
            check_args(**args)
            _stamp(tag)

        batch = max(10, concurrency // 2)
        await qm.run(batch_size=batch, max_concurrent_tasks=max(concurrency, 2 * batch))


# ------------------------------------------------------------------------------------------------
class Procrastinate(System):
    name = "procrastinate"
    supports_groups = True
    keeps_finished = True
    queue_tables = ("procrastinate_jobs",)  # keeps every job until a cleanup task removes it

    @staticmethod
    def app(dsn: str) -> Any:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

        @app.task(name="noop")
        async def noop(account_id: int, action: str) -> None:
            check_args(account_id, action)

        @app.task(name="stamp")
        async def stamp(account_id: int, action: str, tag: int) -> None:
            check_args(account_id, action)
            _stamp(tag)

        return app

    def install(self, dsn: str) -> None:
        async def main() -> None:
            app = self.app(dsn)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(main())

    async def enqueue_single(self, dsn: str, n: int) -> float:
        app = self.app(dsn)
        async with app.open_async():
            task = app.tasks["noop"]
            started = time.perf_counter()
            for _ in range(n):
                await task.defer_async(**ARGS)
            return time.perf_counter() - started

    async def enqueue_batched(self, dsn: str, n: int, batch: int) -> float:
        app = self.app(dsn)
        async with app.open_async():
            task = app.tasks["noop"]
            started = time.perf_counter()
            for _ in range(n // batch):
                await task.batch_defer_async(*(ARGS for _ in range(batch)))
            return time.perf_counter() - started

    def fill(self, dsn: str, n: int, *, groups: int = 0, finished: bool = False) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO procrastinate_jobs (queue_name, task_name, args, lock, status)
                   SELECT 'default', 'noop', %(args)s::jsonb,
                          CASE WHEN %(groups)s > 0 THEN 'g' || (i %% %(groups)s) END,
                          CASE WHEN %(finished)s THEN 'succeeded' ELSE 'todo' END::procrastinate_job_status
                   FROM generate_series(1, %(n)s) i""",
                {"n": n, "groups": groups, "finished": finished, "args": ARGS_JSON},
            )
            conn.execute("VACUUM ANALYZE procrastinate_jobs")

    async def connect_async(self, dsn: str) -> Any:
        app = self.app(dsn)
        await app.open_async()
        return app

    async def enqueue_tagged(self, conn: Any, tag: int) -> None:
        await conn.tasks["stamp"].defer_async(**ARGS, tag=tag)

    async def close_async(self, conn: Any) -> None:
        await conn.close_async()

    unfinished_query = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"

    def first_queued_sql(self) -> str:
        return "SELECT min(id) FROM procrastinate_jobs WHERE status = 'todo'"

    @classmethod
    async def work(cls, dsn: str, concurrency: int) -> None:
        app = cls.app(dsn)
        async with app.open_async():
            await app.run_worker_async(concurrency=concurrency, listen_notify=True, install_signal_handlers=True)


SYSTEMS: dict[str, System] = {s.name: s for s in (Pgjobs(), PgQueuer(), Procrastinate())}


if __name__ == "__main__":
    _, command, system, dsn, concurrency = sys.argv
    assert command == "worker"
    runner = type(SYSTEMS[system])
    work = runner.work(dsn, int(concurrency))  # type: ignore[attr-defined]
    # Each peer's worker on the event loop its own command picks: PgQueuer's `pgq run` takes uvloop
    # when installed (pgjobs worker does too); procrastinate's runs asyncio's.
    if system == "pgqueuer" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        uvloop.run(work)
    else:
        asyncio.run(work)
