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
from collections.abc import Callable, Iterator, Sequence
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
        self._calls: dict[int, tuple[str, float]] = {}
        self._completed = 0

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

    def set_draining(self) -> None:
        """No new calls from now on; those admitted before still run."""
        self._state = "draining"

    def set_closed(self) -> None:
        """The drain is over: the server stops now, and an admitted call whose handler has not
        started yet is refused rather than started and cancelled."""
        with self._cond:
            self._state = "closed"

    def enter(self, call: str = "") -> bool:
        """Counts a call that the server admitted in (described by `call`, for the log of a
        drain), unless the drain is over (False)."""
        with self._cond:
            if self._state == "closed":
                return False
            self._in_flight += 1
            self._calls[threading.get_ident()] = (call, time.monotonic())
            return True

    def leave(self, thread: int | None = None) -> None:
        """Counts a call out: the one `enter` counted on thread `thread` (default: this one)."""
        with self._cond:
            self._in_flight -= 1
            self._completed += 1
            self._calls.pop(threading.get_ident() if thread is None else thread, None)
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


def _labels(request: Any) -> tuple[str, str]:
    """(explanation method or "", model) of an ExplainService request."""
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

    def _authorized(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        if not self._tokens:
            return True
        given = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else str(value)
                if text[:7].lower() == "bearer ":
                    given = text[7:].strip().encode()
        # Every token compared in constant time, none skipped: timing says nothing.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)
        return ok

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
        if not self._authorized(metadata):
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token (metadata 'authorization: Bearer <token>')",
            )
        if not method.startswith(WORK_SERVICES):
            return handler
        state = self.state.state
        if state != "serving":
            return _abort_handler(handler, grpc.StatusCode.UNAVAILABLE, _unavailable(state))
        client_id = ""
        for key, value in metadata or ():
            if key == REQUEST_ID_KEY and isinstance(value, str) and _CLIENT_ID.match(value):
                client_id = value
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
        metrics = self.metrics
        serializer = h.response_serializer
        histogram = metrics.serialize_seconds.labels(rpc) if metrics is not None else None

        def serialize(message: Any) -> Any:
            """The response's bytes, made inside the handler (so within the RPC's span and
            measured); gRPC then sends them as they are."""
            if serializer is None:
                return message
            with tracing.serialize_span():
                started = time.perf_counter()
                out: bytes = serializer(message)
                if histogram is not None:
                    histogram.observe(time.perf_counter() - started)
            return out

        if serializer is not None:
            h = h._replace(response_serializer=_already_serialized)

        state = self.state

        def begin(
            request: Any, context: grpc.ServicerContext
        ) -> tuple[str, float, tracing.RpcTrace]:
            request_id = client_id or uuid.uuid4().hex[:16]
            method, model = _labels(request)
            call = f"{rpc} model={quote(model, 64)} method={method or '-'} request_id={request_id}"
            if not state.enter(call):  # the drain ended since the call was admitted
                context.abort(grpc.StatusCode.UNAVAILABLE, _unavailable(state.state))
            _local.request_id = request_id
            traced = tracing.start_rpc(full_method, metadata)
            context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
            # In the trailers too: an error reply (trailers only) has no initial metadata.
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            return request_id, time.perf_counter(), traced

        def end(
            request: Any,
            context: grpc.ServicerContext,
            started: float,
            ok: bool,
            traced: tracing.RpcTrace,
        ) -> None:
            code = grpc.StatusCode.OK if ok else (_code(context) or grpc.StatusCode.UNKNOWN)
            seconds = time.perf_counter() - started
            method, model = _labels(request)
            if metrics is not None:
                metrics.requests.labels(rpc, method, model, code.name).inc()
                metrics.request_seconds.labels(rpc, method, model).observe(seconds)
            log.info(
                "%s %s %s %s %.1f ms",
                rpc,
                model or "-",
                method or "-",
                code.name,
                seconds * 1000.0,
                extra={
                    "rpc": rpc,
                    "model": model,
                    "method": method,
                    "code": code.name,
                    "ms": round(seconds * 1000.0, 3),
                },
            )
            tracing.end_rpc(
                traced,
                code.name,
                {"request_id": current_request_id() or "", "model": model, "method": method},
            )
            _local.request_id = None
            # Counted out once gRPC has sent the reply, not when the handler returns: a drain
            # that stopped the server in between cancelled the reply of a finished call.
            thread = threading.get_ident()
            if not context.add_callback(lambda: state.leave(thread)):
                state.leave(thread)  # the call has terminated already

        if h.unary_unary is not None:
            behavior = h.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                _, started, traced = begin(request, context)
                ok = False
                try:
                    out = serialize(behavior(request, context))
                    ok = True
                    return out
                finally:
                    end(request, context, started, ok, traced)

            return h._replace(unary_unary=unary)
        if h.unary_stream is not None:
            stream_behavior = h.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                _, started, traced = begin(request, context)
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
                    end(request, context, started, ok, traced)

            return h._replace(unary_stream=unary_stream)
        return h


def _already_serialized(data: bytes) -> bytes:
    """The response serializer of a wrapped handler: its behavior returns bytes already."""
    return data


def _unavailable(state: str) -> str:
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
