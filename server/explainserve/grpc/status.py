"""The one table from domain errors to gRPC status codes, and how errors reach the client."""

from __future__ import annotations

import logging
import uuid
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from explainserve import errors
from explainserve.grpc.interceptors import current_request_id

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.ExplainServeError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """Ends the RPC with the status of `exc`.

    Domain errors keep their message (and a google.rpc.BadRequest field violation when they name
    a field); anything else is INTERNAL with a request id, logged with its trace, and no trace
    sent to the client.
    """
    if isinstance(exc, errors.ExplainServeError):
        code = STATUS_OF.get(type(exc), grpc.StatusCode.INTERNAL)
        message = exc.message
        remaining = context.time_remaining()
        if code == grpc.StatusCode.CANCELLED and remaining is not None and remaining <= 0:
            code = grpc.StatusCode.DEADLINE_EXCEEDED  # the work stopped because time ran out
            message = "deadline exceeded: the request's remaining work was dropped"
        details = []
        if exc.field is not None and code == grpc.StatusCode.INVALID_ARGUMENT:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=exc.field, description=exc.message
                    )
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        status = status_pb2.Status(
            code=getattr(code_pb2, code.name), message=message, details=details
        )
        context.abort_with_status(rpc_status.to_status(status))
    request_id = current_request_id() or uuid.uuid4().hex[:16]
    log.error("internal error, request id %s", request_id, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
    raise AssertionError("context.abort returned")  # it raises; this keeps the types honest
