"""How every HTTP call runs: what gRPC's interceptor and server do for a gRPC call, for HTTP.

Per call, on the event loop: the bearer token (401), the serving state (503 while starting or
draining), the body read within `max_body_bytes` (413 past it, before anything parses it), the
`grpc-timeout` deadline, and a watch on the connection (a client that goes away cancels its
call: its queued work is dropped at the next batch). Then, on a handler thread of the HTTP pool
(never on the loop: parsing, the servicer and serialization all run there), the operation's
handler with the call's request id and trace current (`CallLedger`, shared with gRPC), and its
reply or error: an error is the google.rpc.Status of the servicers' one status table, sent with
grpc-gateway's HTTP status for its code. A streamed reply is written from the handler thread as
it is produced; a client that stops reading blocks the thread (as gRPC's flow control does), so
the stream computes at most what the servicer computes ahead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import status_pb2

from explainserve.errors import ExplainServeError, InvalidArgument, ResourceExhausted, quote
from explainserve.grpc.interceptors import (
    REQUEST_ID_KEY,
    UNAUTHENTICATED_MESSAGE,
    CallLedger,
    ServingState,
    bearer_token_ok,
    client_request_id,
    describe,
    unavailable_message,
)
from explainserve.grpc.status import CODE_OF_NUMBER, abort, http_status_of
from explainserve.http.context import TIMEOUT_HEADER, HttpAbort, HttpContext, parse_timeout
from explainserve.http.json_mapping import dumps, to_dict
from explainserve.tracing import http_span

log = logging.getLogger(__name__)

#: The `protocol` label of HTTP calls in the metrics and access log.
HTTP = "http"
JSON = "application/json"
#: How often a handler thread blocked on a slow reader checks that its call is still wanted.
_POLL_SECONDS = 0.25


@dataclass
class HttpRequest:
    """What a handler gets of its call: the body (within the bound, decompressed), the route's
    parameters, the headers (lower-case names) and the servicers' context."""

    body: bytes
    params: dict[str, str]
    headers: list[tuple[str, str]]
    context: HttpContext
    #: Told of the request message once the handler has made it (the drain's description).
    on_message: Callable[[Any], None] | None = None
    _message: Any = None

    @property
    def message(self) -> Any:
        """The protobuf request the handler made of the body, once made: the metrics' and
        log's model and method labels come from it."""
        return self._message

    @message.setter
    def message(self, value: Any) -> None:
        self._message = value
        if self.on_message is not None:
            self.on_message(value)

    def header(self, name: str) -> str | None:
        """The last value of header `name` (lower case), None when absent."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass
class Reply:
    """A handler's answer: a whole body, or `stream` (chunks written as they come)."""

    body: bytes = b""
    status: int = 200
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: Chunks of a streamed body, produced on the handler thread as the client reads.
    stream: Iterator[bytes] | None = None
    #: The chunk that ends a stream that fails after it started (its status is sent already).
    stream_error: Callable[[status_pb2.Status], bytes] | None = None


def json_reply(value: Any, status: int = 200) -> Reply:
    """A JSON body."""
    return Reply(body=dumps(value), status=status)


#: How an error body looks: a google.rpc.Status (ExplainService's JSON, grpc-gateway's shape),
#: or the Open Inference Protocol's and KServe's `{"error": message}`.
ErrorStyle = Callable[[status_pb2.Status], bytes]


def status_body(status: status_pb2.Status) -> bytes:
    """The google.rpc.Status as JSON: code, message and details (a BadRequest's field
    violations), as grpc-gateway writes errors."""
    return dumps(to_dict(status))


def error_body(status: status_pb2.Status) -> bytes:
    """The Open Inference Protocol's REST error: `{"error": message}`."""
    return dumps({"error": status.message})


@dataclass(frozen=True)
class Operation:
    """One HTTP route and how it is guarded and answered."""

    #: The metrics' and access log's `rpc` label.
    rpc: str
    verb: str
    #: Starlette's path template ("/v2/models/{model}/infer").
    route: str
    #: Runs on a handler thread: the request in, the reply out (or a raise: the error reply).
    handle: Callable[[HttpRequest], Reply]
    #: Gated by the serving state, given a request id, measured and logged.
    work: bool = False
    #: Answered without a bearer token (load balancers' probes).
    open: bool = False
    errors: ErrorStyle = status_body


class Endpoint:
    """The ASGI app of one operation (a class, so that Starlette routes to it as an app)."""

    def __init__(self, calls: Calls, op: Operation) -> None:
        self.calls = calls
        self.op = op

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serves one call of the operation (ASGI)."""
        await self.calls._serve(self.op, scope, receive, send)


class ClientGone(Exception):
    """The client went away while its call ran."""


class Calls:
    """Runs every HTTP call (see the module doc), with the gRPC server's serving state, tokens,
    ledger and body bound, on a pool of handler threads; tracks the calls in flight so that a
    stop can cancel them."""

    def __init__(
        self,
        state: ServingState,
        ledger: CallLedger,
        tokens: Iterable[str],
        max_body_bytes: int,
        threads: int,
    ) -> None:
        self.state = state
        self.ledger = ledger
        self._tokens = [t.encode() for t in tokens]
        self.max_body_bytes = max_body_bytes
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="http")
        self._live: set[HttpContext] = set()

    def endpoint(self, op: Operation) -> Endpoint:
        """The ASGI app of `op`'s route."""
        return Endpoint(self, op)

    def cancel_all(self) -> None:
        """Cancels every call in flight (the server stops): their work stops before the
        workers' next batch, their handler threads return."""
        for context in list(self._live):
            context.cancel()

    def close(self) -> None:
        """Cancels what still runs and lets the handler threads go."""
        self.cancel_all()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- on the event loop -------------------------------------------------------------------

    async def _serve(self, op: Operation, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        request_id = ""
        extra: list[tuple[str, str]] = []
        if op.work:
            given = client_request_id(v for k, v in headers if k == REQUEST_ID_KEY)
            request_id = given or uuid.uuid4().hex[:16]
            extra.append((REQUEST_ID_KEY, request_id))

        async def refuse(code: grpc.StatusCode, message: str, status: int = 0) -> None:
            body = op.errors(status_pb2.Status(code=code.value[0], message=message))
            more = list(extra)
            if code == grpc.StatusCode.UNAUTHENTICATED:
                more.append(("www-authenticate", "Bearer"))
            await _send_whole(send, status or http_status_of(code), body, JSON, more)

        if not op.open and not bearer_token_ok(
            self._tokens, (v for k, v in headers if k == "authorization")
        ):
            await refuse(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            return
        if op.work and self.state.state != "serving":
            await refuse(grpc.StatusCode.UNAVAILABLE, unavailable_message(self.state.state))
            return
        try:
            body = await self._read_body(headers, receive)
            timeout = dict(headers).get(TIMEOUT_HEADER)
            deadline = None if timeout is None else time.monotonic() + parse_timeout(timeout)
        except _TooLarge as e:
            await refuse(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), 413)
            return
        except ExplainServeError as e:
            await refuse(grpc.StatusCode.INVALID_ARGUMENT, e.message)
            return
        except ClientGone:
            return
        client = scope.get("client") or ("", 0)
        context = HttpContext(headers, f"ipv4:{client[0]}:{client[1]}", deadline)
        key = object()
        if op.work and not self.state.enter(f"{op.rpc} request_id={request_id}", key):
            await refuse(grpc.StatusCode.UNAVAILABLE, unavailable_message(self.state.state))
            return
        self._live.add(context)
        watcher = asyncio.ensure_future(_watch(receive, context))
        try:
            request = HttpRequest(body, dict(scope.get("path_params", {})), headers, context)
            loop = asyncio.get_running_loop()
            try:
                reply = await loop.run_in_executor(
                    self.pool, self._run, op, request, request_id, key, send, loop, extra
                )
            except RuntimeError:  # the pool is shut down: the server stops
                await refuse(grpc.StatusCode.UNAVAILABLE, unavailable_message("draining"))
                return
            if reply is not None:
                await _send_whole(
                    send,
                    reply.status,
                    reply.body,
                    reply.content_type,
                    [*extra, *reply.headers],
                )
        finally:
            watcher.cancel()
            self._live.discard(context)
            if op.work:
                # Counted out once the reply is written (a drain waits for it).
                self.state.leave(key)

    async def _read_body(self, headers: list[tuple[str, str]], receive: Any) -> bytes:
        """The request's body, refused past `max_body_bytes` (by its Content-Length before a
        byte is read, else as it arrives), then decompressed within the same bound."""
        limit = self.max_body_bytes
        length = dict(headers).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _TooLarge(_too_large(f"{int(length)} bytes", limit))
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge(_too_large(f"over {limit} bytes", limit))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        encoding = (dict(headers).get("content-encoding") or "identity").strip().lower()
        return _decompress(body, encoding, limit)

    # -- on a handler thread -----------------------------------------------------------------

    def _run(
        self,
        op: Operation,
        request: HttpRequest,
        request_id: str,
        key: object,
        send: Any,
        loop: asyncio.AbstractEventLoop,
        extra: list[tuple[str, str]],
    ) -> Reply | None:
        """Runs the handler; returns the reply to send, or None when it streamed it itself."""
        call = None
        if op.work:
            call = self.ledger.begin(
                op.rpc, HTTP, request_id, request.headers, http_span(op.verb, op.route)
            )
            # What a drain's log says of the call, once its request is read.
            request.on_message = lambda m: self.state.describe(key, describe(op.rpc, m, request_id))
        code = grpc.StatusCode.OK
        status = 200
        try:
            if not request.context.is_active():
                raise ClientGone
            reply = op.handle(request)
            status = reply.status
            if reply.stream is not None:
                code = self._stream(op, reply, request.context, send, loop, extra)
                return None
            return reply
        except Exception as exc:
            error = _status_of(request.context, exc)
            code = CODE_OF_NUMBER.get(error.code, grpc.StatusCode.UNKNOWN)
            status = http_status_of(code)
            return Reply(body=op.errors(error), status=status)
        finally:
            if call is not None:
                self.ledger.end(
                    call, code.name, request.message, {"http.response.status_code": status}
                )

    def _stream(
        self,
        op: Operation,
        reply: Reply,
        context: HttpContext,
        send: Any,
        loop: asyncio.AbstractEventLoop,
        extra: list[tuple[str, str]],
    ) -> grpc.StatusCode:
        """Writes a streamed reply as its chunks come. An error before the first chunk is an
        ordinary error reply (raised); after it, the stream's error chunk ends the stream."""
        assert reply.stream is not None
        chunks = reply.stream
        try:
            first = next(chunks, None)
            started = False
            try:
                headers = [*extra, *reply.headers, ("content-type", reply.content_type)]
                self._write(send, loop, context, _start(reply.status, headers))
                started = True
                if first is not None:
                    self._write(send, loop, context, _body(first, more=True))
                for chunk in chunks:
                    if not context.is_active():
                        raise ClientGone
                    self._write(send, loop, context, _body(chunk, more=True))
                self._write(send, loop, context, _body(b"", more=False))
                return grpc.StatusCode.OK
            except ClientGone:
                return grpc.StatusCode.CANCELLED
            except Exception as exc:
                if not started:
                    raise
                status = _status_of(context, exc)
                assert reply.stream_error is not None
                with contextlib.suppress(ClientGone):
                    self._write(send, loop, context, _body(reply.stream_error(status), more=False))
                return CODE_OF_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _write(
        send: Any, loop: asyncio.AbstractEventLoop, context: HttpContext, message: dict[str, Any]
    ) -> None:
        """Sends one ASGI message from this thread, waiting until the connection takes it (a
        client that does not read holds the thread here, not the loop); ClientGone once the
        call is cancelled or the loop is gone."""
        try:
            future = asyncio.run_coroutine_threadsafe(send(message), loop)
        except RuntimeError:
            raise ClientGone from None
        while True:
            try:
                future.result(_POLL_SECONDS)
                return
            except concurrent.futures.TimeoutError:
                if context.cancelled:
                    future.cancel()
                    raise ClientGone from None
            except (concurrent.futures.CancelledError, OSError, RuntimeError):
                raise ClientGone from None


def _status_of(context: HttpContext, exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status that ends a call failed by `exc`: a servicer's abort as it is; a
    client gone, CANCELLED; anything else through the servicers' one status table (domain
    errors keep their message and field; others are INTERNAL, logged with the request id)."""
    if isinstance(exc, HttpAbort):
        return exc.status
    if isinstance(exc, ClientGone):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return status_pb2.Status(
                code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                message="deadline exceeded (grpc-timeout)",
            )
        return status_pb2.Status(
            code=grpc.StatusCode.CANCELLED.value[0], message="the client went away"
        )
    try:
        abort(context, exc)
    except HttpAbort as aborted:
        return aborted.status


async def _watch(receive: Any, context: HttpContext) -> None:
    """Cancels the call when its client disconnects (uvicorn says so on `receive`)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            context.cancel()
            return


class _TooLarge(ResourceExhausted):
    """A request body over the bound."""

    def __str__(self) -> str:
        return self.message


def _too_large(size: str, limit: int) -> str:
    return (
        f"the request body is {size}, over the server's max_message_bytes ({limit}): send "
        "fewer inputs per request"
    )


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """`body` decoded by its Content-Encoding (identity, gzip or deflate, as tritonclient
    sends), never past `limit` bytes out (a small body must not inflate into a huge one)."""
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidArgument(
            f"Content-Encoding '{quote(encoding, 32)}' is not supported: send identity, gzip "
            "or deflate",
            field="content-encoding",
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidArgument(f"the {encoding} body does not decompress: {e}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _TooLarge(_too_large(f"over {limit} bytes once decompressed", limit))
    return out


def _start(status: int, headers: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }


def _body(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def _send_whole(
    send: Any, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]]
) -> None:
    """A whole response: start and body, its length said (keep-alive without chunking)."""
    length = ("content-length", str(len(body)))
    await send(_start(status, [*headers, ("content-type", content_type), length]))
    await send(_body(body, more=False))
