"""The servicers' context for a call that came over HTTP.

The servicers of `explainserve.grpc` take a `grpc.ServicerContext`: they ask it whether the call
is still wanted (`is_active`, `time_remaining`) and end it with a status (`abort`,
`abort_with_status`, through the one status table). `HttpContext` answers the same questions for
an HTTP call (the client disconnected, its `grpc-timeout` deadline passed, the server stopped)
and turns an abort into `HttpAbort`, which carries the google.rpc.Status that HTTP renders.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
from google.rpc import status_pb2

from explainserve.errors import InvalidArgument, quote

#: gRPC's timeout header, which grpc-gateway reads as the call's deadline: digits and a unit.
TIMEOUT_HEADER = "grpc-timeout"
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_DETAILS_KEY = "grpc-status-details-bin"


def parse_timeout(value: str) -> float:
    """Seconds of a `grpc-timeout` value ("10S", "500m", ...); InvalidArgument otherwise."""
    match = _TIMEOUT.match(value.strip())
    if match is None:
        raise InvalidArgument(
            f"header {TIMEOUT_HEADER} is '{quote(value, 32)}': give up to 8 digits and a unit, "
            "H, M, S, m (milliseconds), u or n, as gRPC does (e.g. 30S)",
            field=TIMEOUT_HEADER,
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class HttpAbort(Exception):
    """A servicer ended its HTTP call with `status` (google.rpc.Status)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class HttpContext(grpc.ServicerContext):  # type: ignore[misc]
    """A `grpc.ServicerContext` for a servicer method called over HTTP (see the module doc)."""

    def __init__(
        self, headers: Sequence[tuple[str, str]], peer: str, deadline: float | None
    ) -> None:
        self._headers = tuple(headers)
        self._peer = peer
        #: `time.monotonic()` after which the call is over, when the client gave a timeout.
        self.deadline = deadline
        self._cancelled = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """The call is not wanted any more (the client went away, the server stops): its work
        stops at the next batch boundary. Runs the callbacks added."""
        with self._lock:
            if self._cancelled.is_set():
                return
            self._cancelled.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` was called."""
        return self._cancelled.is_set()

    # -- what the servicers ask --------------------------------------------------------------

    def is_active(self) -> bool:
        """Whether the call is still wanted: not cancelled, its deadline not passed."""
        return not self._cancelled.is_set() and (
            self.deadline is None or time.monotonic() < self.deadline
        )

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        """Ends the call with `code` and `details`: raises HttpAbort."""
        raise HttpAbort(status_pb2.Status(code=code.value[0], message=details))

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """Ends the call with `status` (its google.rpc.Status details when it has them)."""
        for key, value in status.trailing_metadata or ():
            if key == _DETAILS_KEY:
                raise HttpAbort(status_pb2.Status.FromString(value))
        self.abort(status.code, status.details)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Runs `callback` when the call is cancelled; False when it is already."""
        with self._lock:
            if self._cancelled.is_set():
                return False
            self._callbacks.append(callback)
            return True

    # -- the rest of the interface: what an HTTP call has of it ------------------------------

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The request's headers, lower-case names (as gRPC metadata is)."""
        return self._headers

    def peer(self) -> str:
        """The client's address."""
        return self._peer

    def peer_identities(self) -> None:
        """None: HTTP calls carry no gRPC peer identity."""
        return None

    def peer_identity_key(self) -> None:
        """None, as `peer_identities`."""
        return None

    def auth_context(self) -> dict[str, Any]:
        """Empty: authentication is the HTTP layer's."""
        return {}

    def set_compression(self, compression: Any) -> None:
        """HTTP responses are not compressed here."""

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        """The HTTP layer sends its own headers (the request id among them)."""

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        """HTTP/1.1 responses carry no trailers."""

    def trailing_metadata(self) -> tuple[()]:
        """None on HTTP/1.1."""
        return ()

    def set_code(self, code: Any) -> None:
        """Codes reach HTTP through `abort`."""

    def set_details(self, details: Any) -> None:
        """Details reach HTTP through `abort`."""

    def code(self) -> None:
        """None: the status travels by `abort`."""
        return None

    def details(self) -> None:
        """None: the status travels by `abort`."""
        return None

    def disable_next_message_compression(self) -> None:
        """Nothing is compressed."""
