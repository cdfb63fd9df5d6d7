"""Domain errors. They know nothing about transport: the gRPC layer maps each class to a status
code in one table (explainserve.grpc.status)."""

from __future__ import annotations


class ExplainServeError(Exception):
    """Base class of every error the service reports to a client."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The request field at fault, when there is one (e.g. "inputs[2].targets[0]").
        self.field = field


class InvalidArgument(ExplainServeError):
    """The request is malformed or asks for something out of range."""


class NotFound(ExplainServeError):
    """A named thing (model, label, split point) does not exist."""


class ResourceExhausted(ExplainServeError):
    """The work does not fit: queue full, or too big for the device even at batch size 1."""


class DeadlineExceeded(ExplainServeError):
    """The request's deadline passed before its work was done."""


class Cancelled(ExplainServeError):
    """The client cancelled the request."""


class Unavailable(ExplainServeError):
    """The server is not taking work (starting up or draining)."""
