"""OpenTelemetry traces across processes: this test enqueues under a span with the SDK's in-memory
exporter, a real `pgjobs worker` (with an SDK writing its spans to a file) runs the jobs, and one
trace goes from the request through every run, parent to child."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

import pgjobs
from pgjobs import _tracing

from .helpers import ROOT, Process
from .test_crashes import query, wait_until
from .traced_tasks import span_record

pytestmark = pytest.mark.acceptance

MODULE = "tests.acceptance.traced_tasks"


def _forget_provider() -> None:
    # OpenTelemetry sets the global provider once per process; the tests of this process that come
    # after must find none again, and pgjobs must look again.
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    _tracing._tracer = None
    _tracing._next_look = 0.0


@pytest.fixture
def exporter(env_dsn: str) -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider for this process, its spans kept in memory."""
    _forget_provider()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    yield memory
    provider.shutdown()
    _forget_provider()


def worker(dsn: str, spans: Path | None) -> Process:
    env = {"PGJOBS_TEST_SPANS": str(spans)} if spans is not None else {}
    return Process(
        "worker", MODULE, "--dsn", dsn, "-q", "default", "-q", "mail", "-c", "4", "--poll-interval", "0.2",
        "--no-scheduler", env=env,
    )  # fmt: skip


def finished(dsn: str, n: int) -> bool:
    rows = query(dsn, "SELECT count(*) AS n FROM pgjobs.jobs WHERE status IN ('complete', 'failed')")
    return bool(rows[0]["n"] == n)


def run_worker(dsn: str, spans: Path | None, jobs: int) -> None:
    with worker(dsn, spans) as w:
        wait_until(lambda: finished(dsn, jobs), 30, f"{jobs} jobs finishing")
        w.signal(signal.SIGTERM)
        assert w.wait(20) == 0, w.output()


def read_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_name(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def only(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (span,) = by_name(spans, name)
    return span


def process_span(spans: list[dict[str, Any]], job_id: int) -> dict[str, Any]:
    (span,) = [s for s in spans if s["kind"] == "CONSUMER" and s["attributes"]["messaging.message.id"] == str(job_id)]
    return span


def test_one_trace_goes_from_the_request_through_every_run(
    env_dsn: str, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    app = trace.get_tracer("app")
    with app.start_as_current_span("POST /signup", kind=trace.SpanKind.SERVER):
        in_loop = pgjobs.enqueue("traced.async", "loop", meta={"who": "me"})
        in_thread = pgjobs.enqueue("traced.thread", "thread", queue="mail")
        in_child = pgjobs.enqueue("traced.process", "child")
        batch = pgjobs.enqueue_many([pgjobs.job("traced.async", "a"), pgjobs.job("traced.async", "b")])
    ours = [span_record(s) for s in exporter.get_finished_spans()]
    request = only(ours, "POST /signup")
    sends = [s for s in ours if s["kind"] == "PRODUCER"]
    assert len(sends) == 4 and all(s["parent_id"] == request["span_id"] for s in sends)
    send = {s["attributes"].get("messaging.message.id", "batch"): s for s in sends}
    assert send[str(in_thread.id)]["name"] == "send mail"
    assert send[str(in_thread.id)]["attributes"] == {
        "messaging.system": "pgjobs", "messaging.operation.name": "send", "messaging.operation.type": "send",
        "messaging.destination.name": "mail", "messaging.message.id": str(in_thread.id), "pgjobs.task": "traced.thread",
    }  # fmt: skip
    assert send["batch"]["name"] == "send default"
    assert send["batch"]["attributes"]["messaging.batch.message_count"] == 2
    # The caller's meta is kept beside the creation context.
    assert in_loop.meta["who"] == "me"
    assert in_loop.meta["otel"]["traceparent"].split("-")[2] == send[str(in_loop.id)]["span_id"]

    spans = tmp_path / "spans.jsonl"
    run_worker(env_dsn, spans, jobs=5)
    theirs = read_spans(spans)
    assert {s["trace_id"] for s in theirs} == {request["trace_id"]}, "one trace from the request to every run"
    senders = {in_loop.id: send[str(in_loop.id)], in_thread.id: send[str(in_thread.id)]}
    senders |= {in_child.id: send[str(in_child.id)], batch[0]: send["batch"], batch[1]: send["batch"]}
    for job_id, label in [(in_loop.id, "loop"), (in_thread.id, "thread"), (in_child.id, "child"), (batch[0], "a")]:
        run = process_span(theirs, job_id)
        assert run["parent_id"] == senders[job_id]["span_id"] and senders[job_id]["span_id"] in run["links"]
        assert run["status"] == "UNSET" and run["attributes"]["pgjobs.outcome"] == "complete"
        # A span the task makes is the run's child: on the event loop, in a thread, in a child process.
        work = only(theirs, f"work {label}")
        assert work["parent_id"] == run["span_id"], label
    assert only(theirs, "work child")["pid"] != process_span(theirs, in_child.id)["pid"]
    run = process_span(theirs, in_thread.id)
    assert run["name"] == "process mail"
    attributes = run["attributes"]
    assert attributes.pop("messaging.client.id")
    assert attributes == {
        "messaging.system": "pgjobs", "messaging.operation.name": "process", "messaging.operation.type": "process",
        "messaging.destination.name": "mail", "messaging.message.id": str(in_thread.id), "pgjobs.task": "traced.thread",
        "pgjobs.attempt": 1, "pgjobs.outcome": "complete",
    }  # fmt: skip


def test_a_failed_run_has_the_error_status_and_a_job_from_sql_starts_a_trace(
    env_dsn: str, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    with trace.get_tracer("app").start_as_current_span("request"):
        failing = pgjobs.enqueue("traced.boom", retries=1, retry_delay=0)
        in_child = pgjobs.enqueue("traced.process_boom", retries=0)
    ours = [span_record(s) for s in exporter.get_finished_spans()]
    (row,) = query(env_dsn, "SELECT pgjobs.enqueue('traced.async', '[\"sql\"]') AS id")
    # A producer in another language passes its context in meta.
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    (other,) = query(
        env_dsn,
        "SELECT pgjobs.enqueue('traced.async', '[\"other\"]', meta => %s) AS id",
        [json.dumps({"otel": {"traceparent": parent}})],
    )

    spans = tmp_path / "spans.jsonl"
    run_worker(env_dsn, spans, jobs=4)
    theirs = read_spans(spans)
    send = next(s for s in ours if s["attributes"].get("messaging.message.id") == str(failing.id))
    runs = sorted(
        (s for s in theirs if s["attributes"].get("messaging.message.id") == str(failing.id)),
        key=lambda s: s["attributes"]["pgjobs.attempt"],
    )
    assert [r["attributes"]["pgjobs.attempt"] for r in runs] == [1, 2]
    for run in runs:  # each attempt, a child of the one send span
        assert run["trace_id"] == send["trace_id"] and run["parent_id"] == send["span_id"]
        assert run["status"] == "ERROR" and run["attributes"]["pgjobs.outcome"] == "failed"
        assert run["attributes"]["error.type"] == "ValueError"
        (event,) = run["events"]
        assert event["name"] == "exception" and event["attributes"]["exception.type"] == "ValueError"
        assert event["attributes"]["exception.message"] == "boom"
        assert run["status_description"] == "boom"
    # Raised in a child process: known from its traceback.
    run = process_span(theirs, in_child.id)
    assert run["status"] == "ERROR" and run["attributes"]["error.type"] == "KeyError"
    (event,) = run["events"]
    assert event["attributes"]["exception.message"] == run["status_description"] == "'gone'"
    assert "Traceback" in event["attributes"]["exception.stacktrace"]

    # Enqueued from SQL with no context: a root span, in a trace of its own, with its work inside.
    run = process_span(theirs, row["id"])
    assert run["parent_id"] is None and run["links"] == [] and run["trace_id"] != send["trace_id"]
    assert run["status"] == "UNSET" and only(theirs, "work sql")["parent_id"] == run["span_id"]
    run = process_span(theirs, other["id"])
    assert (run["trace_id"], run["parent_id"]) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")


def test_nothing_is_recorded_or_stored_without_a_tracer_provider(env_dsn: str, tmp_path: Path) -> None:
    _forget_provider()
    job = pgjobs.enqueue("traced.current", meta={"who": "me"})
    (batched,) = pgjobs.enqueue_many([pgjobs.job("traced.current")])
    assert job.meta == {"who": "me"}
    assert query(env_dsn, "SELECT meta FROM pgjobs.jobs WHERE id = %s", [batched])[0]["meta"] == {}
    run_worker(env_dsn, None, jobs=2)
    results = query(env_dsn, "SELECT result FROM pgjobs.jobs ORDER BY id")
    assert [r["result"] for r in results] == [False, False], "the tasks ran under no span"

    # And with OpenTelemetry not importable at all.
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import pgjobs\n"
        "job = pgjobs.enqueue('traced.current', meta={'who': 'me'})\n"
        "print(job.meta)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "{'who': 'me'}", out.stderr


def test_enqueue_many_keeps_dependencies_within_the_batch(env_dsn: str, exporter: InMemorySpanExporter) -> None:
    first = pgjobs.job("traced.async", "first")
    then = pgjobs.job("traced.async", "then", depends_on=[first])
    ids = pgjobs.enqueue_many([first, then])
    rows = query(env_dsn, "SELECT id, status, depends_on, meta FROM pgjobs.jobs ORDER BY id")
    assert [r["id"] for r in rows] == ids and rows[1]["depends_on"] == [ids[0]] and rows[1]["status"] == "waiting"
    (send,) = exporter.get_finished_spans()
    assert send.context is not None
    for r in rows:  # both carry the batch's send span as their creation context
        assert r["meta"]["otel"]["traceparent"].split("-")[2] == format(send.context.span_id, "016x")


def test_the_async_twins_make_the_same_spans(env_dsn: str, exporter: InMemorySpanExporter) -> None:
    async def enqueue() -> tuple[pgjobs.Job, list[int]]:
        with trace.get_tracer("app").start_as_current_span("request"):
            job = await pgjobs.enqueue_async("traced.async", "one", queue="mail")
            ids = await pgjobs.enqueue_many_async([pgjobs.job("traced.async", "a"), pgjobs.job("traced.thread", "b")])
        await pgjobs.close_async()
        return job, ids

    job, ids = asyncio.run(enqueue())
    one, many, request = (span_record(s) for s in exporter.get_finished_spans())
    assert one["name"] == "send mail" and one["attributes"]["messaging.message.id"] == str(job.id)
    assert many["name"] == "send default" and many["attributes"]["messaging.batch.message_count"] == 2
    assert "pgjobs.task" not in many["attributes"]  # two tasks
    assert one["parent_id"] == many["parent_id"] == request["span_id"]
    metas = query(env_dsn, "SELECT meta FROM pgjobs.jobs WHERE id = ANY(%s) ORDER BY id", [ids])
    assert [m["meta"]["otel"]["traceparent"].split("-")[2] for m in metas] == [many["span_id"]] * 2
