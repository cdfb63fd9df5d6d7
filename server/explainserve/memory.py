"""Giving the memory that requests freed back to the system once the server is idle.

glibc's malloc keeps what Python, torch and the tokenizers free in its arenas (one per thread
that allocated, up to 8 per core) instead of returning it: after a burst of long inputs the
server's RSS stays hundreds of MiB above its resting level although nothing holds the memory
(measured in bench/RESULTS.md, "Soak"). `malloc_trim(0)` returns the free pages of every arena.
It costs a few ms for a GB-sized heap, so it runs on a thread of its own, once the server has
had no call in flight for a moment after some calls finished. Where there is no glibc (musl,
macOS) there is nothing to do.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (or EXPLAINSERVE_MALLOC_TRIM=0
    turns it off, to compare: bench/soak.py --no-trim)."""
    if os.environ.get("EXPLAINSERVE_MALLOC_TRIM", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def trim() -> bool:
    """Returns the C heap's free pages to the system; False when that is not possible here."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class IdleTrimmer:
    """Calls `trim()` when no call is in flight (`in_flight()` is 0) and none finished during
    the last `idle_seconds`, if any finished (`completed()`, a count, moved) since the last
    trim: once after each burst of work, never while calls run."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        completed: Callable[[], int],
        idle_seconds: float = 1.0,
    ) -> None:
        self._in_flight = in_flight
        self._completed = completed
        self._idle_seconds = idle_seconds
        self._stop = threading.Event()
        #: How many times it trimmed (tests, logs).
        self.trims = 0
        self._thread = threading.Thread(target=self._loop, name="memory-trim", daemon=True)

    def start(self) -> IdleTrimmer:
        """Starts the thread; returns self."""
        if _TRIM is not None:
            self._thread.start()
        return self

    def close(self) -> None:
        """Stops the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        trimmed = checked = self._completed()
        while not self._stop.wait(self._idle_seconds):
            done = self._completed()
            # Quiet: no call finished during the last interval and none is running now.
            quiet = done == checked and self._in_flight() == 0
            checked = done
            if quiet and done != trimmed:
                trimmed = done
                trim()
                self.trims += 1
                log.debug("idle: returned free heap memory to the system")
