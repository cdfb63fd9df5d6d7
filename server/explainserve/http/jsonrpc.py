"""ExplainService as JSON: every RPC of the service's descriptor at `POST /v1/explainserve/<Rpc>`
(`paths.rpc_path`), by construction, so an RPC added to the proto is served (and documented by
the generated OpenAPI document) with nothing written here.

The body is the request message in proto3's canonical JSON mapping (`json_mapping`); the reply
is the response message, or, for a server-streaming RPC (ExplainStream, GetActivations), one
JSON object per message as grpc-gateway streams them: `{"result": message}` per line
(newline-delimited JSON, `application/x-ndjson`), or per server-sent event (`text/event-stream`,
when the client's Accept header asks for it), and `{"error": status}` last if the call fails
after its first message. An error before the first message is an ordinary error reply: the
google.rpc.Status with grpc-gateway's HTTP status."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from google.rpc import status_pb2

from explainserve.grpc.interceptors import CallLedger
from explainserve.grpc.servicer import ExplainServicer
from explainserve.http.calls import HTTP, HttpRequest, Operation, Reply
from explainserve.http.json_mapping import dumps, load_object, parse, to_dict
from explainserve.http.paths import rpc_path
from explainserve.v1 import explain_pb2

#: The service whose RPCs are served.
SERVICE: descriptor.ServiceDescriptor = explain_pb2.DESCRIPTOR.services_by_name["ExplainService"]
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def operations(servicer: ExplainServicer, ledger: CallLedger) -> list[Operation]:
    """One operation per RPC of `SERVICE`, each calling the servicer's method of that name."""
    ops = []
    for method in SERVICE.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        behavior = getattr(servicer, method.name)
        serialize = ledger.serializer(method.name, HTTP, lambda m: dumps(to_dict(m)))
        handle = (
            _streaming(request_class, behavior, serialize)
            if method.server_streaming
            else _unary(request_class, behavior, serialize)
        )
        ops.append(Operation(method.name, "POST", rpc_path(method.name), handle, work=True))
    return ops


def _unary(
    request_class: type[Message],
    behavior: Callable[[Any, Any], Message],
    serialize: Callable[[Message], bytes],
) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        request.message = parse(load_object(request.body), request_class)
        return Reply(body=serialize(behavior(request.message, request.context)))

    return handle


def _streaming(
    request_class: type[Message],
    behavior: Callable[[Any, Any], Iterator[Message]],
    serialize: Callable[[Message], bytes],
) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        request.message = parse(load_object(request.body), request_class)
        messages = behavior(request.message, request.context)
        frame = _sse if SSE in (request.header("accept") or "") else _line

        def chunks() -> Iterator[bytes]:
            try:
                for message in messages:
                    yield frame(b'{"result":' + serialize(message) + b"}")
            finally:
                close = getattr(messages, "close", None)
                if close is not None:
                    close()

        def error(status: status_pb2.Status) -> bytes:
            return frame(dumps({"error": to_dict(status)}))

        return Reply(
            stream=chunks(),
            stream_error=error,
            content_type=SSE if frame is _sse else NDJSON,
            headers=[("cache-control", "no-cache")],
        )

    return handle


def _line(data: bytes) -> bytes:
    """One newline-delimited JSON line."""
    return data + b"\n"


def _sse(data: bytes) -> bytes:
    """One server-sent event whose data is the JSON line (JSON has no raw newline in it)."""
    return b"data: " + data + b"\n\n"
