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


class WorkerMetrics:
    """``pgjobs_worker_jobs_total{queue,task,outcome}`` and ``pgjobs_worker_job_duration_seconds``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "pgjobs_worker_jobs", "Runs this worker finished, by outcome", ["queue", "task", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "pgjobs_worker_job_duration_seconds", "Seconds a run took, claim to outcome", ["queue", "task"],
            registry=registry,
        )  # fmt: skip

    def observe(self, queue: str, task: str, outcome: str, seconds: float) -> None:
        self.jobs.labels(queue, task, outcome).inc()
        self.duration.labels(queue, task).observe(seconds)


class DatabaseCollector(Collector):
    """``pgjobs_queue_jobs{queue,status}``, ``pgjobs_queue_oldest_queued_seconds{queue}`` and
    ``pgjobs_workers{status}``, read from the database at each scrape."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("pgjobs_queue_jobs", "Unfinished jobs by queue and status", labels=["queue", "status"])
        oldest = GaugeMetricFamily(
            "pgjobs_queue_oldest_queued_seconds", "Seconds the oldest due job of a queue has waited", labels=["queue"]
        )
        workers = GaugeMetricFamily("pgjobs_workers", "Workers by status", labels=["status"])
        with _database.connect(self.dsn, name="pgjobs metrics") as conn:
            for q in _database.fetch(conn, _sql.query("queue_list")):
                for status in ("queued", "scheduled", "waiting", "active"):
                    jobs.add_metric([q["queue"], status], q[status])
                oldest.add_metric([q["queue"]], q["oldest_queued_seconds"] or 0.0)
            for w in _database.fetch(conn, _sql.query("worker_counts")):
                workers.add_metric([w["status"]], w["n"])
        yield from (jobs, oldest, workers)
