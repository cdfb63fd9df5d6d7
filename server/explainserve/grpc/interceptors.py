"""What every RPC goes through before ExplainService: the serving state (UNAVAILABLE while the
server starts or drains), bearer-token authentication, a request id (echoed in the response's
initial and trailing metadata as `x-request-id`, put on log records, named in INTERNAL errors),
tracing (a span continuing the caller's `traceparent`, see `explainserve.tracing`; its trace id
on log records too), metrics and an access log line."""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from explainserve import tracing
from explainserve.errors import quote
from explainserve.metrics import Metrics

log = logging.getLogger("explainserve.access")

REQUEST_ID_KEY = "x-request-id"
#: A client's own request id is kept when it looks like one (else a fresh one is made).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Services that answer without a token and whatever the state: load balancers probe them.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
#: The `protocol` label of gRPC calls in the metrics and access log.
GRPC = "grpc"
#: Services gated by the serving state and measured.
WORK_SERVICES = ("/explainserve.v1.", "/inference.GRPCInferenceService/ModelInfer")

_local = threading.local()


def current_request_id() -> str | None:
    """The request id of the RPC this thread is handling, if any."""
    return getattr(_local, "request_id", None)


class RequestIdFilter(logging.Filter):
    """Puts `request_id`, `trace_id` and `span_id` (each "-" when there is none) on every log
    record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        if not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = tracing.log_ids()
        return True


class ServingState:
    """starting -> serving -> draining -> closed. ExplainService admits calls only while
    serving (decided as each call arrives, `ServerInterceptor`); a call admitted then is
    counted in flight when its handler starts, draining or not, so that the drain waits for it,
    until the drain is over (closed). Counts the ExplainService calls in flight."""

    def __init__(self, serving: bool = False) -> None:
        self._state = "serving" if serving else "starting"
        self._in_flight = 0
        self._cond = threading.Condition()
        #: What each call in flight is, and since when, by the thread handling it (a call of
        #: the sync server runs on one thread from start to end): a drain names them.
        self._calls: dict[object, tuple[str, float]] = {}
        self._completed = 0
        self._ready = serving

    @property
    def ready(self) -> bool:
        """Whether readiness probes should say ready: serving, and not about to drain (false
        from the first moment of a drain, while calls are still taken for `drain_delay_s`)."""
        return self._ready and self._state == "serving"

    def stop_ready(self) -> None:
        """A drain begins: probes say not ready from now on."""
        self._ready = False

    @property
    def state(self) -> str:
        """One of "starting", "serving", "draining" or "closed"."""
        return self._state

    @property
    def in_flight(self) -> int:
        """ExplainService calls running now."""
        return self._in_flight

    @property
    def completed(self) -> int:
        """ExplainService calls finished so far."""
        return self._completed

    def set_serving(self) -> None:
        """Models loaded and warmed up."""
        if self._state == "starting":
            self._state = "serving"
            self._ready = True

    def set_draining(self) -> None:
        """No new calls from now on; those admitted before still run."""
        self._state = "draining"

    def set_closed(self) -> None:
        """The drain is over: the server stops now, and an admitted call whose handler has not
        started yet is refused rather than started and cancelled."""
        with self._cond:
            self._state = "closed"

    def enter(self, call: str = "", key: object = None) -> bool:
        """Counts a call that the server admitted in (described by `call`, for the log of a
        drain), unless the drain is over (False). `key` names the call for `leave` and
        `describe` (default: this thread, which runs a gRPC call from start to end; an HTTP call
        gives a token of its own, as its thread is not its own)."""
        with self._cond:
            if self._state == "closed":
                return False
            self._in_flight += 1
            self._calls[threading.get_ident() if key is None else key] = (call, time.monotonic())
            return True

    def describe(self, key: object, call: str) -> None:
        """Replaces the description of the call `key` (once its request is read)."""
        with self._cond:
            if key in self._calls:
                self._calls[key] = (call, self._calls[key][1])

    def leave(self, key: object = None) -> None:
        """Counts a call out: the one `enter` counted under `key` (default: this thread)."""
        with self._cond:
            self._in_flight -= 1
            self._completed += 1
            self._calls.pop(threading.get_ident() if key is None else key, None)
            self._cond.notify_all()

    def running(self) -> list[str]:
        """The calls in flight: their description and how long they have run."""
        now = time.monotonic()
        with self._cond:
            calls = sorted(self._calls.values(), key=lambda c: c[1])
        return [f"{call or '?'} ({now - since:.1f} s)" for call, since in calls]

    def wait_idle(self, timeout: float | None) -> bool:
        """Waits until no call is in flight and every reply has been sent (True), or `timeout`
        seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)


def _abort_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the RPC with `code`."""

    def unary(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    def streaming(_request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(code, message)
        yield  # pragma: no cover (a generator, as the handler's shape requires)

    h: Any = handler
    if h.request_streaming:
        return grpc.stream_stream_rpc_method_handler(
            lambda _it, ctx: streaming(None, ctx),
            request_deserializer=h.request_deserializer,
            response_serializer=h.response_serializer,
        )
    if h.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            streaming,
            request_deserializer=h.request_deserializer,
            response_serializer=h.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=h.request_deserializer,
        response_serializer=h.response_serializer,
    )


def labels(request: Any) -> tuple[str, str]:
    """(explanation method or "", model) of an ExplainService request (or OIP's
    ModelInferRequest); ("", "") for anything else."""
    inner = getattr(request, "request", None)
    if inner is not None:  # ExplainStreamRequest
        request = inner
    model = str(
        getattr(request, "model", "")
        or getattr(request, "name", "")
        or getattr(request, "model_name", "")  # OIP's ModelInferRequest
    )
    method = ""
    with contextlib.suppress(AttributeError, ValueError):
        method = request.WhichOneof("method") or ""
    return method, model


def describe(rpc: str, request: Any, request_id: str) -> str:
    """What a drain's log says of a call still running."""
    method, model = labels(request)
    return f"{rpc} model={quote(model, 64)} method={method or '-'} request_id={request_id}"


def client_request_id(values: Iterable[Any]) -> str:
    """The client's own request id among the `x-request-id` values given, when one looks like a
    request id ("" otherwise: the server makes one)."""
    found = ""
    for value in values:
        if isinstance(value, str) and _CLIENT_ID.match(value):
            found = value
    return found


def bearer_token_ok(tokens: Sequence[bytes], authorizations: Iterable[Any]) -> bool:
    """Whether the last `authorization` value given (gRPC metadata or HTTP header) is `Bearer`
    one of `tokens`; True when no token is configured."""
    if not tokens:
        return True
    given = b""
    for value in authorizations:
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if text[:7].lower() == "bearer ":
            given = text[7:].strip().encode("latin-1", "replace")
    # Every token compared in constant time, none skipped: timing says nothing.
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(given, token)
    return ok


#: What a call without a valid token is told, on either protocol.
UNAUTHENTICATED_MESSAGE = (
    "missing or invalid bearer token ('authorization: Bearer <token>': gRPC metadata or an "
    "HTTP header)"
)


@dataclass
class Call:
    """One call being served, on either protocol: what its end needs to log and measure it."""

    rpc: str
    protocol: str
    request_id: str
    started: float
    traced: tracing.RpcTrace


class CallLedger:
    """Begins and ends the calls of both protocols alike: the request id on the thread's log
    records, the trace continuing the caller's, the metrics (labelled by protocol) and the
    access log line. A call begins and ends on the thread that handles it."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    def begin(
        self,
        rpc: str,
        protocol: str,
        request_id: str,
        carrier: Sequence[tuple[str, Any]] | None,
        span: tracing.SpanName,
    ) -> Call:
        """Makes `request_id` and the call's trace (from `carrier`'s traceparent) current on
        this thread."""
        _local.request_id = request_id
        traced = tracing.start_rpc(span.name, carrier, span.attributes)
        return Call(rpc, protocol, request_id, time.perf_counter(), traced)

    def end(
        self,
        call: Call,
        code: str,
        request: Any = None,
        status_attributes: dict[str, Any] | None = None,
    ) -> None:
        """Counts, logs and ends the trace of `call`, answered with the gRPC code name `code`
        (HTTP calls too: one vocabulary for dashboards); `request` gives the model and method
        labels, `status_attributes` the span's transport status."""
        seconds = time.perf_counter() - call.started
        method, model = labels(request)
        metrics = self.metrics
        if metrics is not None:
            metrics.requests.labels(call.rpc, method, model, code, call.protocol).inc()
            metrics.request_seconds.labels(call.rpc, method, model, call.protocol).observe(seconds)
        log.info(
            "%s %s %s %s %.1f ms %s",
            call.rpc,
            model or "-",
            method or "-",
            code,
            seconds * 1000.0,
            call.protocol,
            extra={
                "rpc": call.rpc,
                "model": model,
                "method": method,
                "code": code,
                "ms": round(seconds * 1000.0, 3),
                "protocol": call.protocol,
                "request_id": call.request_id,
            },
        )
        tracing.end_rpc(
            call.traced,
            code,
            {"request_id": call.request_id, "model": model, "method": method},
            status_attributes,
        )
        _local.request_id = None

    def serializer(
        self, rpc: str, protocol: str, serialize: Callable[[Any], bytes]
    ) -> Callable[[Any], bytes]:
        """`serialize`, spanned and timed (`explainserve_serialize_seconds{rpc,protocol}`)."""
        histogram = (
            self.metrics.serialize_seconds.labels(rpc, protocol)
            if self.metrics is not None
            else None
        )

        def timed(message: Any) -> bytes:
            with tracing.serialize_span():
                started = time.perf_counter()
                out = serialize(message)
                if histogram is not None:
                    histogram.observe(time.perf_counter() - started)
            return out

        return timed


class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """State gate, authentication, request id, metrics and access log (see the module doc)."""

    def __init__(
        self,
        state: ServingState,
        tokens: Sequence[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.state = state
        self._tokens = [t.encode() for t in tokens]
        self.metrics = metrics
        self.ledger = CallLedger(metrics)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return handler
        metadata = handler_call_details.invocation_metadata
        if not bearer_token_ok(
            self._tokens, (v for k, v in metadata or () if k == "authorization")
        ):
            return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        if not method.startswith(WORK_SERVICES):
            return handler
        state = self.state.state
        if state != "serving":
            return _abort_handler(handler, grpc.StatusCode.UNAVAILABLE, unavailable_message(state))
        client_id = client_request_id(v for k, v in metadata or () if k == REQUEST_ID_KEY)
        return self._wrap(handler, method, client_id, metadata)

    def _wrap(
        self,
        handler: grpc.RpcMethodHandler,
        full_method: str,
        client_id: str,
        metadata: Sequence[tuple[str, Any]] | None,
    ) -> grpc.RpcMethodHandler:
        h: Any = handler
        rpc = full_method.rsplit("/", 1)[-1]
        ledger = self.ledger
        serializer = h.response_serializer
        # The response's bytes are made inside the handler (so within the RPC's span and
        # measured); gRPC then sends them as they are.
        serialize = (
            ledger.serializer(rpc, GRPC, serializer) if serializer is not None else _identity
        )
        if serializer is not None:
            h = h._replace(response_serializer=_already_serialized)
        state = self.state
        span = tracing.grpc_span(full_method)

        def begin(request: Any, context: grpc.ServicerContext) -> Call:
            request_id = client_id or uuid.uuid4().hex[:16]
            if not state.enter(describe(rpc, request, request_id)):
                # The drain ended since the call was admitted.
                context.abort(grpc.StatusCode.UNAVAILABLE, unavailable_message(state.state))
            call = ledger.begin(rpc, GRPC, request_id, metadata, span)
            context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            # In the trailers too: an error reply (trailers only) has no initial metadata.
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            return call

        def end(request: Any, context: grpc.ServicerContext, call: Call, ok: bool) -> None:
            code = grpc.StatusCode.OK if ok else (_code(context) or grpc.StatusCode.UNKNOWN)
            ledger.end(call, code.name, request, {"rpc.grpc.status_code": code.name})
            # Counted out once gRPC has sent the reply, not when the handler returns: a drain
            # that stopped the server in between cancelled the reply of a finished call.
            thread = threading.get_ident()
            if not context.add_callback(lambda: state.leave(thread)):
                state.leave(thread)  # the call has terminated already

        if h.unary_unary is not None:
            behavior = h.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                call = begin(request, context)
                ok = False
                try:
                    out = serialize(behavior(request, context))
                    ok = True
                    return out
                finally:
                    end(request, context, call, ok)

            return h._replace(unary_unary=unary)
        if h.unary_stream is not None:
            stream_behavior = h.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call = begin(request, context)
                ok = False
                messages: Any = None
                try:
                    messages = stream_behavior(request, context)
                    for message in messages:
                        yield serialize(message)
                    ok = True
                finally:
                    # What `yield from` would do: a closed call closes the handler's generator.
                    close = getattr(messages, "close", None)
                    if close is not None:
                        close()
                    end(request, context, call, ok)

            return h._replace(unary_stream=unary_stream)
        return h


def _identity(message: Any) -> Any:
    return message


def _already_serialized(data: bytes) -> bytes:
    """The response serializer of a wrapped handler: its behavior returns bytes already."""
    return data


def unavailable_message(state: str) -> str:
    """What a call is told while the server is not serving (`state`: starting, draining or
    closed)."""
    why = {"starting": "starting: models are loading", "closed": "stopping"}.get(state, "draining")
    return f"the server is {why}; retry on another replica or later"


def _code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status the handler ended with; for a call the client gave up on, why."""
    try:
        code = context.code()
    except Exception:
        code = None
    if code is grpc.StatusCode.CANCELLED or not isinstance(code, grpc.StatusCode):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        if not context.is_active():
            return grpc.StatusCode.CANCELLED
    return code if isinstance(code, grpc.StatusCode) else None
