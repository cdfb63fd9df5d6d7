"""Domain errors. They know nothing about transport: the gRPC layer maps each class to a status
code in one table (explainserve.grpc.status)."""

from __future__ import annotations

#: Characters of a client's value that a message quotes (the rest is counted, not copied).
QUOTE_CHARS = 200


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`str(value)`, cut to its first `limit` characters followed by "…(N chars)" when longer.

    Messages quote what the client sent through this, so a 100,000-character name or a
    1,000-value shape cannot blow the status past the clients' metadata limits."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


def bound_bytes(text: str, max_bytes: int) -> str:
    """`text` within `max_bytes` bytes of UTF-8: unchanged when it fits, else its longest prefix
    that fits with "…(N chars)" appended (the status table's last line of defence)."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    suffix = f"…({len(text)} chars)"
    room = max(0, max_bytes - len(suffix.encode()))
    # A cut inside a multi-byte character drops that character's partial bytes.
    return data[:room].decode("utf-8", "ignore") + suffix


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
