"""Prometheus metrics (extra ``pgjobs[metrics]``): what a worker did, and the queues as the
database holds them. The names are a contract: dashboards and alerts rely on them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import _database, _sql

#: What a run came to: complete, failed (for good), retried, released (given back unfinished),
#: dropped (finished, but the run was no longer this worker's).
OUTCOMES = ("complete", "failed", "retried", "released", "dropped")


#: Why a run was stopped while its task ran: aborted (cancelled, or killed by the reaper for its
#: timeout or heartbeat), lost (no longer this worker's), fenced (given up by the fence), shutdown
#: (given back at stop), memory (its child process went past --max-memory-per-child).
KILL_REASONS = ("aborted", "lost", "fenced", "shutdown", "memory")

#: Why a child process of the process executor was replaced: killed (its run was stopped),
#: crashed (it died on its own), memory (over the ceiling), max_jobs (ran --max-jobs-per-child).
RESTART_REASONS = ("killed", "crashed", "memory", "max_jobs")


class WorkerMetrics:
    """``pgjobs_worker_jobs_total{queue,task,outcome}``, ``pgjobs_worker_job_duration_seconds``,
    ``pgjobs_worker_kills_total{executor,reason}`` and ``pgjobs_worker_child_restarts_total{reason}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "pgjobs_worker_jobs", "Runs this worker finished, by outcome", ["queue", "task", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "pgjobs_worker_job_duration_seconds", "Seconds a run took, claim to outcome", ["queue", "task"],
            registry=registry,
        )  # fmt: skip

        self.kills = Counter(
            "pgjobs_worker_kills", "Runs stopped while their task ran, by executor and reason", ["executor", "reason"],
            registry=registry,
        )  # fmt: skip
        self.child_restarts = Counter(
            "pgjobs_worker_child_restarts", "Child processes of the process executor replaced, by reason", ["reason"],
            registry=registry,
        )  # fmt: skip

    def killed(self, executor: str, reason: str) -> None:
        self.kills.labels(executor, reason).inc()

    def restarted(self, reason: str) -> None:
        self.child_restarts.labels(reason).inc()

    def observe(self, queue: str, task: str, outcome: str, seconds: float) -> None:
        self.jobs.labels(queue, task, outcome).inc()
        self.duration.labels(queue, task).observe(seconds)


class DatabaseCollector(Collector):
    """``pgjobs_queue_jobs{queue,status}``, ``pgjobs_queue_oldest_queued_seconds{queue}``,
    ``pgjobs_queue_max_queued{queue}`` and ``pgjobs_queue_pressure{queue}`` (queues with a maximum
    depth), ``pgjobs_workers{status}`` and ``pgjobs_notify_queue_usage``, read from the database at
    each scrape."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("pgjobs_queue_jobs", "Unfinished jobs by queue and status", labels=["queue", "status"])
        oldest = GaugeMetricFamily(
            "pgjobs_queue_oldest_queued_seconds", "Seconds the oldest due job of a queue has waited", labels=["queue"]
        )
        limit = GaugeMetricFamily("pgjobs_queue_max_queued", "A queue's maximum depth (max_queued)", labels=["queue"])
        pressure = GaugeMetricFamily(
            "pgjobs_queue_pressure", "Queued jobs over max_queued, 0 to 1 (1: enqueues are refused)", labels=["queue"]
        )
        workers = GaugeMetricFamily("pgjobs_workers", "Workers by status", labels=["status"])
        notify = GaugeMetricFamily(
            "pgjobs_notify_queue_usage", "The server's NOTIFY queue in use, 0 to 1 (full: notifying statements fail)"
        )
        with _database.connect(self.dsn, name="pgjobs metrics") as conn:
            for q in _database.fetch(conn, _sql.query("queue_list")):
                for status in ("queued", "scheduled", "waiting", "active"):
                    jobs.add_metric([q["queue"], status], q[status])
                oldest.add_metric([q["queue"]], q["oldest_queued_seconds"] or 0.0)
                if q["max_queued"]:
                    limit.add_metric([q["queue"]], q["max_queued"])
                    pressure.add_metric([q["queue"]], (q["queued"] + q["scheduled"]) / q["max_queued"])
            for w in _database.fetch(conn, _sql.query("worker_counts")):
                workers.add_metric([w["status"]], w["n"])
            notify.add_metric([], _database.fetch(conn, _sql.query("notify_queue_usage"))[0]["usage"])
        yield from (jobs, oldest, limit, pressure, workers, notify)
