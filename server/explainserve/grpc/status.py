"""The one table from domain errors to gRPC status codes, its HTTP face (grpc-gateway's mapping
of those codes to HTTP statuses), and how errors reach the client."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from explainserve import _native, errors
from explainserve.errors import bound_bytes
from explainserve.grpc.interceptors import REQUEST_ID_KEY, current_request_id

log = logging.getLogger(__name__)

#: UTF-8 bytes of a status message at most, and of a field violation's field path. Messages
#: quote client values shortened already (`errors.quote`); this bounds whatever slips through,
#: so the whole status (message + details, about 2.4 KiB at most) stays far below the 8 KiB of
#: metadata that gRPC clients accept by default, even once percent-encoded.
MAX_MESSAGE_BYTES = 1024
MAX_FIELD_BYTES = 256

STATUS_OF: dict[type[errors.ExplainServeError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

#: The HTTP status of each gRPC code, as grpc-gateway maps them (`runtime.HTTPStatusFromCode`):
#: an HTTP call's error gets the status of its gRPC code in `STATUS_OF`, so both protocols say
#: the same thing of the same error. 499 is nginx's "client closed request".
HTTP_STATUS_OF: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
#: gRPC's codes by number (google.rpc.Status.code).
CODE_OF_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def http_status_of(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (grpc-gateway's mapping)."""
    return HTTP_STATUS_OF[code]


def from_native(exc: _native.NativeError) -> errors.ExplainServeError:
    """The domain error of a native core error, its message kept: an output too large to
    allocate is RESOURCE_EXHAUSTED, any other core error a request out of the core's domain
    (INVALID_ARGUMENT). The core validates its arguments only; what reaches it comes from the
    request (sizes, parameters), so none of its errors is the server's fault."""
    if isinstance(exc, _native.TooLargeError):
        return errors.ResourceExhausted(str(exc))
    return errors.InvalidArgument(str(exc))


@dataclass(frozen=True)
class _Status(grpc.Status):  # type: ignore[misc]
    """A status to abort with (grpc.Status is an interface without a constructor)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def status_of(exc: errors.ExplainServeError) -> grpc.StatusCode:
    """The status of a domain error: its class's, or its nearest base class's in the table (a
    `ConceptSetError` is an InvalidArgument); INTERNAL for one the table does not know."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """Ends the RPC with the status of `exc`.

    Domain errors, and the native core's errors (`from_native`), keep their message (and a
    google.rpc.BadRequest field violation when they name a field), bounded to
    `MAX_MESSAGE_BYTES`; anything else is INTERNAL with a request id, logged with its trace, and
    no trace sent to the client. The trailing metadata carries the request
    id (`x-request-id`) too: an error reply has no initial metadata.
    """
    request_id = current_request_id()
    if isinstance(exc, _native.NativeError):
        exc = from_native(exc)
    if isinstance(exc, errors.ExplainServeError):
        code = status_of(exc)
        message = bound_bytes(exc.message, MAX_MESSAGE_BYTES)
        remaining = context.time_remaining()
        if code == grpc.StatusCode.CANCELLED and remaining is not None and remaining <= 0:
            code = grpc.StatusCode.DEADLINE_EXCEEDED  # the work stopped because time ran out
            message = "deadline exceeded: the request's remaining work was dropped"
        details = []
        if exc.field is not None and code == grpc.StatusCode.INVALID_ARGUMENT:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=bound_bytes(exc.field, MAX_FIELD_BYTES), description=message
                    )
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        status = status_pb2.Status(
            code=getattr(code_pb2, code.name), message=message, details=details
        )
        converted = rpc_status.to_status(status)
        if request_id is not None:
            converted = _Status(
                converted.code,
                converted.details,
                (*converted.trailing_metadata, (REQUEST_ID_KEY, request_id)),
            )
        context.abort_with_status(converted)
    request_id = request_id or uuid.uuid4().hex[:16]
    log.error("internal error, request id %s", request_id, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
    raise AssertionError("context.abort returned")  # it raises; this keeps the types honest
