"""OpenTelemetry tracing: a span per RPC that continues the caller's W3C `traceparent`, and
under it the request's queue waits, each model batch it took part in and the response's
serialization.

Off by default. `configure_from_env()` (called by `explainserve serve`) turns export on by the
standard OTEL_* variables, with one rule of our own: export is on when

- OTEL_TRACES_EXPORTER is set to `otlp` and/or `console` (comma-separated; `none` = off), or
- OTEL_TRACES_EXPORTER is unset and OTEL_EXPORTER_OTLP_ENDPOINT or
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (then `otlp`),

and OTEL_SDK_DISABLED is not `true`. (The OpenTelemetry specification defaults the exporter to
`otlp`; a sidecar that sends spans to localhost:4317 unasked would fill its logs with failed
exports, so we ask for an explicit setting.) Everything else is the SDK's: the OTLP exporter reads
OTEL_EXPORTER_OTLP_* (endpoint, headers, certificates, timeout, compression; gRPC only:
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL must be `grpc` when set), the resource OTEL_SERVICE_NAME
(default `explainserve`) and OTEL_RESOURCE_ATTRIBUTES, the sampler OTEL_TRACES_SAMPLER(_ARG),
the batch processor OTEL_BSP_*, and the propagators OTEL_PROPAGATORS (default W3C trace context
and baggage).

With tracing off the caller's trace id is still read from `traceparent` (no span is made), so
log lines carry it next to the request id.

How the spans find their request: the worker runs batches on its own thread, where the RPC's
context is not current. `jobs_submitted` (called by the worker when jobs are queued, on the
RPC's thread) notes each job's span context and submission time; `batch_ran` (called by the
worker after each batch) makes one batch span per request in the batch, under that request's
RPC span, and ends the queue span of each submission whose first rows just ran.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

#: Instrumentation scope of every span.
SCOPE = "explainserve"
QUEUE_SPAN = "explainserve.queue"
BATCH_SPAN = "explainserve.batch"
SERIALIZE_SPAN = "explainserve.serialize"
EXPORTERS = ("otlp", "console", "none")

_lock = threading.Lock()
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


def tracer() -> trace.Tracer | None:
    """The tracer spans are made with; None while tracing is off."""
    return _tracer


def install(provider: TracerProvider) -> None:
    """Traces from now on go to `provider` (tests give one with an in-memory exporter)."""
    global _tracer, _provider
    with _lock:
        _provider = provider
        _tracer = provider.get_tracer(SCOPE)


def uninstall() -> None:
    """Tracing off; the provider installed is flushed and shut down."""
    global _tracer, _provider
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def exporters_from_env(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for, by the rule of the module doc ([] = off).
    ValueError for an unknown exporter or an OTLP protocol other than gRPC."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if names:
        wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        wanted = ["otlp"]
    else:
        wanted = []
    unknown = [n for n in wanted if n not in EXPORTERS]
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r}: choose from "
            f"{', '.join(EXPORTERS)}"
        )
    wanted = [n for n in wanted if n != "none"]
    if "otlp" in wanted:
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
        )
        if protocol.strip().lower() != "grpc":
            raise ValueError(
                f"OTLP protocol {protocol!r} is not supported: explainserve exports OTLP over "
                "gRPC (set OTEL_EXPORTER_OTLP_PROTOCOL=grpc or leave it unset)"
            )
    return wanted


def configure_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Installs an SDK tracer provider exporting as the environment says (see the module doc);
    None, and tracing stays off, when it says nothing."""
    environ = os.environ if environ is None else environ
    wanted = exporters_from_env(environ)
    if not wanted:
        return None
    exporters: list[SpanExporter] = []
    for name in wanted:
        if name == "otlp":
            # Imported only when used: it loads the OTLP protos and a gRPC channel.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            exporters.append(ConsoleSpanExporter())
    service = {"service.name": environ.get("OTEL_SERVICE_NAME") or SCOPE}
    provider = TracerProvider(resource=Resource.create(service))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    return provider


# -- the RPC ---------------------------------------------------------------------------------


def _metadata_value(metadata: Sequence[tuple[str, Any]], key: str) -> str | None:
    for k, v in metadata:
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


class _MetadataGetter:
    """Reads propagation headers (traceparent, tracestate, baggage) from gRPC metadata."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        value = _metadata_value(carrier, key)
        return None if value is None else [value]

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


@dataclass
class RpcTrace:
    """An RPC's span (None with tracing off) and the context token to restore at its end."""

    span: trace.Span | None
    token: object


@dataclass(frozen=True)
class SpanName:
    """The name and attributes of a call's server span."""

    name: str
    attributes: Mapping[str, str]


def grpc_span(method: str) -> SpanName:
    """The span of a gRPC call of `method`, gRPC's full name "/package.Service/Method"."""
    service, _, name = method.lstrip("/").partition("/")
    return SpanName(
        f"{service}/{name}", {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    )


def http_span(verb: str, route: str) -> SpanName:
    """The span of an HTTP call of `route` (the route's template, `/v2/models/{model}/infer`),
    named as OpenTelemetry's HTTP conventions say: "POST /v2/models/{model}/infer"."""
    return SpanName(f"{verb} {route}", {"http.request.method": verb, "http.route": route})


def start_rpc(
    name: str, carrier: Sequence[tuple[str, Any]] | None, attributes: Mapping[str, str]
) -> RpcTrace:
    """Makes the call's context current: a server span `name` continuing the caller's trace
    (from `traceparent` in `carrier`, gRPC metadata or HTTP headers as (lower-case key, value)
    pairs), or, with tracing off, the caller's span context alone (for the logs)."""
    carrier = list(carrier or ())
    parent = propagate.extract(carrier, getter=_GETTER)  # type: ignore[arg-type]
    active = _tracer
    span: trace.Span | None = None
    if active is not None:
        span = active.start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=dict(attributes)
        )
        ctx = trace.set_span_in_context(span, parent)
    else:
        ctx = parent
    return RpcTrace(span, otel_context.attach(ctx))


def end_rpc(
    rpc: RpcTrace,
    code: str,
    attributes: Mapping[str, str],
    status_attributes: Mapping[str, Any] | None = None,
) -> None:
    """Ends the call's span with `attributes` and its transport's status (`status_attributes`:
    `rpc.grpc.status_code`, `http.response.status_code`), an error unless `code` (the gRPC code
    name) is OK; restores the context."""
    if rpc.span is not None:
        rpc.span.set_attributes({f"explainserve.{k}": v for k, v in attributes.items() if v})
        rpc.span.set_attributes(dict(status_attributes or {}))
        if code != "OK":
            rpc.span.set_status(trace.StatusCode.ERROR, code)
        rpc.span.end()
    otel_context.detach(rpc.token)  # type: ignore[arg-type]


def serialize_span() -> Any:
    """A context manager spanning the response's serialization (a no-op with tracing off)."""
    active = _tracer
    if active is None or not trace.get_current_span().is_recording():
        return _NOOP
    return active.start_as_current_span(SERIALIZE_SPAN)


class _Noop:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOOP = _Noop()


def log_ids() -> tuple[str, str]:
    """(trace id, span id) of the current context in hex, or ("-", "-")."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "-", "-"
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


# -- the worker --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Submission:
    """Jobs of one request queued together: one queue span, from their submission until the
    first of their rows runs."""

    parent: otel_context.Context
    queued_ns: int
    jobs: int
    rows: int
    started: bool = False


#: What `jobs_submitted` noted of each job still alive (weak: a job gone is forgotten).
_jobs: weakref.WeakKeyDictionary[Any, _Submission] = weakref.WeakKeyDictionary()


def jobs_submitted(jobs: Sequence[Any]) -> None:
    """Notes the jobs just queued with the RPC span current on this thread (nothing when
    tracing is off or the span is not sampled). Jobs have `n_rows`."""
    if _tracer is None or not jobs:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    submission = _Submission(
        parent=trace.set_span_in_context(span),
        queued_ns=time.time_ns(),
        jobs=len(jobs),
        rows=sum(int(job.n_rows) for job in jobs),
    )
    with _lock:
        for job in jobs:
            _jobs[job] = submission


def _kind(job: Any) -> str:
    """ "forward", "gradient", "activation", "head" or "generate" (the worker's kind names)."""
    return type(job).__name__.removesuffix("Job").lower()


def batch_ran(pieces: Iterable[tuple[Any, int, int]], started_perf: float) -> None:
    """After a batch of row ranges `(job, start, stop)` ran (it began at `time.perf_counter()`
    value `started_perf`, and ends now): per request in it, the queue span of each of its
    submissions that had not run yet, then a batch span with the batch's rows, tokens and
    padding and the request's own rows. Jobs have `length` (tokens per row)."""
    if _tracer is None:
        return
    active = _tracer
    pieces = list(pieces)
    end_ns = time.time_ns()
    start_ns = end_ns - int((time.perf_counter() - started_perf) * 1e9)
    rows = sum(stop - start for _, start, stop in pieces)
    width = max(int(job.length) for job, _, _ in pieces)
    real = sum((stop - start) * int(job.length) for job, start, stop in pieces)
    by_request: dict[int, tuple[_Submission, int]] = {}
    new: list[_Submission] = []
    with _lock:
        for job, start, stop in pieces:
            submission = _jobs.get(job)
            if submission is None:
                continue
            if not submission.started:
                submission.started = True
                new.append(submission)
            # One batch span per request: keyed by the RPC span the jobs were queued under.
            key = id(trace.get_current_span(submission.parent))
            first, own = by_request.get(key, (submission, 0))
            by_request[key] = (first, own + stop - start)
    for submission in new:
        active.start_span(
            QUEUE_SPAN,
            context=submission.parent,
            start_time=submission.queued_ns,
            attributes={"explainserve.jobs": submission.jobs, "explainserve.rows": submission.rows},
        ).end(end_time=max(start_ns, submission.queued_ns))
    kind = _kind(pieces[0][0])
    for submission, own in by_request.values():
        active.start_span(
            BATCH_SPAN,
            context=submission.parent,
            start_time=start_ns,
            attributes={
                "explainserve.batch.kind": kind,
                "explainserve.batch.rows": rows,
                "explainserve.batch.tokens": real,
                "explainserve.batch.padded_tokens": rows * width,
                "explainserve.batch.padding": rows * width - real,
                "explainserve.batch.request_rows": own,
            },
        ).end(end_time=end_ns)
