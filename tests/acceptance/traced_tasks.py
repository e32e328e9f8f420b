"""Tasks the tracing tests run in a `pgjobs worker`, and its tracer setup.

With PGJOBS_TEST_SPANS set, importing this module sets up the OpenTelemetry SDK with an exporter
that appends each finished span to that file as one JSON line, so that the test, another process,
can read them (the process executor's child imports this module too, and appends its own). Without
it no tracer provider is set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace

import pgjobs

SPANS = os.environ.get("PGJOBS_TEST_SPANS")


def span_record(span: object) -> dict[str, object]:
    """A finished SDK span as plain JSON values."""
    from opentelemetry.sdk.trace import ReadableSpan

    assert isinstance(span, ReadableSpan) and span.context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [format(link.context.span_id, "016x") for link in span.links],
        "pid": os.getpid(),
    }


if SPANS:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            data = "".join(json.dumps(span_record(s)) + "\n" for s in spans).encode()
            fd = os.open(SPANS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # one write a batch: whole lines
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)

tracer = trace.get_tracer("tests.acceptance.traced_tasks")


@pgjobs.task(name="traced.async")
async def in_loop(label: str) -> bool:
    with tracer.start_as_current_span(f"work {label}"):
        return trace.get_current_span().get_span_context().is_valid


@pgjobs.task(name="traced.thread")
def in_thread(label: str) -> bool:
    with tracer.start_as_current_span(f"work {label}"):
        return trace.get_current_span().get_span_context().is_valid


@pgjobs.task(name="traced.process", executor="process")
def in_child(label: str) -> bool:
    with tracer.start_as_current_span(f"work {label}"):
        return trace.get_current_span().get_span_context().is_valid


@pgjobs.task(name="traced.boom")
def boom() -> None:
    raise ValueError("boom")


@pgjobs.task(name="traced.process_boom", executor="process")
def boom_in_child() -> None:
    raise KeyError("gone")


@pgjobs.task(name="traced.current")
def current() -> bool:
    """Whether the task runs under a span."""
    return trace.get_current_span().get_span_context().is_valid
