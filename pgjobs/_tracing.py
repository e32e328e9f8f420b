"""OpenTelemetry traces of enqueues and runs (the ``otel`` extra), per the messaging semantic conventions v1.44.0.

Enqueue makes a PRODUCER "send" span and stores its context with the job (``meta["otel"]``);
the worker makes a CONSUMER "process" span per run, child of that context, and runs the task in
it. Nothing here runs unless a tracer provider of an SDK is set: ``tracer()`` is the one check the
hot paths make, and it is cheap (see its docstring).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Span, SpanContext, Tracer

    from .client import JobRequest
    from .job import Job

#: The key of a job's meta that holds its creation context: the carrier that OpenTelemetry's
#: global propagator fills (by default W3C Trace Context ``traceparent``/``tracestate``, and
#: ``baggage``).
META_KEY = "otel"
#: messaging.system: pgjobs is not among the conventions' well-known values, which allow a custom one.
SYSTEM = "pgjobs"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
#: Seconds between two looks for a tracer provider while none is set.
RECHECK = 1.0

_T = TypeVar("_T")
_tracer: Tracer | None = None
_next_look = 0.0  # time.monotonic() of the next look for a provider


def tracer() -> Tracer | None:
    """The tracer, or None while no tracer provider of an SDK is set (always, without the extra).

    Called once per enqueue and per run, so it must cost next to nothing when tracing is off.
    ``trace.get_tracer_provider()`` costs about 1.6 µs while none is set (it reads the environment
    each time), so it is asked at most once a RECHECK second until it returns a real provider,
    which is kept for good (OpenTelemetry sets the global provider only once); and not at all
    while nothing imported ``opentelemetry.trace``, without which no provider can be set (pgjobs
    itself never imports OpenTelemetry until then). A provider set after pgjobs was imported is
    thus seen within a second (a worker looks again as it starts); in between, the check is a
    global read and a clock read.
    """
    if _tracer is not None:
        return _tracer
    if time.monotonic() < _next_look:
        return None
    return refresh()


def refresh() -> Tracer | None:
    """Look for a tracer provider now (see tracer())."""
    global _tracer, _next_look
    _next_look = time.monotonic() + RECHECK
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from . import __version__

    found = provider.get_tracer("pgjobs", __version__, schema_url=SCHEMA_URL)
    if isinstance(found, trace.NoOpTracer):  # an SDK switched off (OTEL_SDK_DISABLED)
        return None
    _tracer = found
    return _tracer


def _type_name(cls: type[BaseException]) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _failed(span: Span, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(exc)
    span.set_attribute("error.type", _type_name(type(exc)))
    span.set_status(Status(StatusCode.ERROR, str(exc) or _type_name(type(exc))))


def _creation_context(meta: Mapping[str, Any] | None) -> SpanContext | None:
    """The span context a job's meta carries, or None."""
    from opentelemetry import propagate, trace

    carrier = meta.get(META_KEY) if meta is not None else None
    if not isinstance(carrier, Mapping):
        return None
    context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return context if context.is_valid else None


# ------------------------------------------------------------------------------------------------
# Producer: enqueue
# ------------------------------------------------------------------------------------------------
def _with_context(span: Span, requests: Sequence[JobRequest]) -> list[JobRequest]:
    """Copies of the requests whose meta carry the send span's context; a request that carries a
    context of its own keeps it (the conventions' "custom creation context")."""
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    if not carrier:
        return list(requests)
    options: dict[int, dict[str, Any]] = {}
    for r in requests:
        meta = r.options.get("meta")
        if meta is None or META_KEY not in meta:
            meta = {**(meta or {}), META_KEY: carrier}
        options[id(r)] = {**r.options, "meta": meta}
    copies = {id(r): dataclasses.replace(r, options=options[id(r)]) for r in requests}
    for o in options.values():  # depends_on may name requests of this call: name their copies
        parents = o.get("depends_on")
        if parents and any(not isinstance(p, int) and id(p) in copies for p in parents):
            o["depends_on"] = tuple(p if isinstance(p, int) else copies.get(id(p), p) for p in parents)
    return [copies[id(r)] for r in requests]


@contextlib.contextmanager
def _sending(tracer: Tracer, requests: Sequence[JobRequest], batch: bool) -> Iterator[tuple[Span, list[JobRequest]]]:
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind

    queues = {r.options.get("queue") or "default" for r in requests}
    tasks = {r.task for r in requests}
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
    }
    queue = next(iter(queues)) if len(queues) == 1 else None
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    if len(tasks) == 1:
        attributes["pgjobs.task"] = next(iter(tasks))
    if batch:
        attributes["messaging.batch.message_count"] = len(requests)
    custom = [_creation_context(r.options.get("meta")) for r in requests]
    links = [Link(c) for c in custom if c is not None]
    name = f"send {queue}" if queue is not None else "send"
    span = tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes, links=links)
    try:
        # Current while the statement runs: a database instrumentation's span nests in it.
        with trace.use_span(span, record_exception=False, set_status_on_exception=False):
            yield span, _with_context(span, requests)
    except BaseException as exc:
        _failed(span, exc)
        raise
    finally:
        span.end()


def send_one(tracer: Tracer, request: JobRequest, call: Callable[[JobRequest], Job]) -> Job:
    """enqueue() under a send span: ``call`` sends the request it is given."""
    with _sending(tracer, [request], batch=False) as (span, (sent,)):
        job = call(sent)
        span.set_attribute("messaging.message.id", str(job.id))
        return job


async def send_one_async(tracer: Tracer, request: JobRequest, call: Callable[[JobRequest], Awaitable[Job]]) -> Job:
    """The async twin of send_one()."""
    with _sending(tracer, [request], batch=False) as (span, (sent,)):
        job = await call(sent)
        span.set_attribute("messaging.message.id", str(job.id))
        return job


def send_many(tracer: Tracer, requests: Sequence[JobRequest], call: Callable[[list[JobRequest]], _T]) -> _T:
    """enqueue_many() under one send span for the batch, whose context every job carries."""
    with _sending(tracer, requests, batch=True) as (_, sent):
        return call(sent)


async def send_many_async(
    tracer: Tracer, requests: Sequence[JobRequest], call: Callable[[list[JobRequest]], Awaitable[_T]]
) -> _T:
    """The async twin of send_many()."""
    with _sending(tracer, requests, batch=True) as (_, sent):
        return await call(sent)


# ------------------------------------------------------------------------------------------------
# Consumer: a worker's run
# ------------------------------------------------------------------------------------------------
class Outcome(Protocol):
    """What processed() reads of the worker's record of a run."""

    @property
    def kind(self) -> str: ...
    @property
    def error(self) -> str | None: ...


@dataclasses.dataclass(eq=False, slots=True)
class Run:
    """A run's process span and the context it made current."""

    span: Span
    token: Token[otel_context.Context]
    job_id: int
    error_type: str | None = None


def process(job: Job, worker_id: str) -> Run | None:
    """Start a run's process span and make it current in the caller's context (the run's own
    asyncio task), so that the task's spans are its children; None when tracing is off.

    The span is a child of the job's creation context, and links to it; a job without one (from
    SQL, or enqueued while tracing was off) starts a new trace. Where the worker itself runs under
    a span (embedded in an application), that span is linked, never the parent.
    """
    t = tracer()
    if t is None:
        return None
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind

    carried = job.meta.get(META_KEY) if isinstance(job.meta, Mapping) else None  # an Undecodable too
    extracted = propagate.extract(carried) if isinstance(carried, Mapping) else None
    creation = trace.get_current_span(extracted).get_span_context() if extracted is not None else None
    if creation is not None and not creation.is_valid:
        creation = extracted = None
    ambient = trace.get_current_span().get_span_context()
    links = [Link(c) for c in (creation, ambient) if c is not None and c.is_valid]
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": job.queue,
        "messaging.message.id": str(job.id),
        "messaging.client.id": worker_id,
        "pgjobs.task": job.task,
        "pgjobs.attempt": job.attempts,
    }
    span = t.start_span(
        f"process {job.queue}",
        context=extracted if extracted is not None else otel_context.Context(),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    )
    # The task's context: the span, with the baggage the job carries.
    return Run(span, otel_context.attach(trace.set_span_in_context(span, extracted)), job.id or 0)


def failed(run: Run | None, exc: BaseException) -> None:
    """Record the exception a task raised in this process (thread or event loop)."""
    if run is not None:
        run.span.record_exception(exc)
        run.error_type = _type_name(type(exc))


def _traceback_exception(text: str) -> tuple[str, str] | None:
    """The type and message of the last exception of a formatted traceback (as a child process of
    the process executor sends it), or None when the text is no traceback."""
    if not text.startswith("Traceback"):
        return None
    lines = text.rstrip("\n").splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
    if not frames or frames[-1] + 1 >= len(lines):
        return None
    kind, _, message = lines[frames[-1] + 1].partition(": ")
    return kind, "\n".join([message, *lines[frames[-1] + 2 :]]).strip()


# pgjobs.outcome of a failed run, by why the worker stopped it (None: the task failed).
_STOPPED = {"abort": "cancelled", "fenced": "fenced", "lost": "lost"}


def processed(run: Run, outcome: Outcome | None, stop_reasons: Mapping[int, str]) -> None:
    """End a run's span with its outcome: ``complete``, ``failed`` (the task raised, or its child
    process died), ``cancelled`` (a cancel or a reaper kill), ``fenced``, ``lost`` or ``released``
    (given back at shutdown); every one but complete and released sets the ERROR status."""
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Status, StatusCode

    span = run.span
    if outcome is None:
        name, error = "lost", "the run is no longer this worker's"
    elif outcome.kind == "complete":
        name, error = "complete", None
    elif outcome.kind == "release":
        name, error = "released", None
    else:
        name, error = _STOPPED.get(stop_reasons.get(run.job_id, ""), "failed"), outcome.error or ""
    span.set_attribute("pgjobs.outcome", name)
    if error is not None:
        error_type = run.error_type
        summary = (error.strip().splitlines() or [name])[-1]
        if name == "failed" and (found := _traceback_exception(error)) is not None:
            summary = found[1] or found[0]
            if error_type is None:  # raised in a child process: only its traceback came back
                error_type = found[0]
                span.add_event(
                    "exception",
                    {"exception.type": error_type, "exception.message": found[1], "exception.stacktrace": error},
                )
        span.set_attribute("error.type", error_type or name)
        span.set_status(Status(StatusCode.ERROR, summary))
    span.end()
    otel_context.detach(run.token)


# ------------------------------------------------------------------------------------------------
# The process executor: the run's context crosses to the child
# ------------------------------------------------------------------------------------------------
_adopted = False  # whether this child process made a job's context current yet


def carrier() -> dict[str, str] | None:
    """The current context as a carrier for a child process of the process executor; None when
    tracing is off."""
    if tracer() is None:
        return None
    from opentelemetry import propagate

    found: dict[str, str] = {}
    propagate.inject(found)
    return found or None


def adopt(carried: Any) -> None:
    """In a child process: make the context of the job it runs current (an empty one for a job
    without), so that spans the task makes continue the run's trace where the child has a provider."""
    global _adopted
    if carried is None and not _adopted:
        return
    from opentelemetry import context as otel_context
    from opentelemetry import propagate

    _adopted = True
    otel_context.attach(propagate.extract(carried) if isinstance(carried, Mapping) else otel_context.Context())
