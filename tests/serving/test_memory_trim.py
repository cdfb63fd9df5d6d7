"""The idle trimmer returns freed heap memory once after each burst of calls, never while a call
runs (bench/soak.py measures what it gives back)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest

from explainserve.memory import IdleTrimmer, trim


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_is_available_on_glibc() -> None:
    assert trim()


@pytest.mark.skipif(not trim(), reason="no malloc_trim here")
def test_the_trimmer_trims_once_per_burst_and_never_during_a_call() -> None:
    in_flight = [0]
    completed = [0]
    trimmer = IdleTrimmer(lambda: in_flight[0], lambda: completed[0], idle_seconds=0.01).start()
    try:
        time.sleep(0.1)
        assert trimmer.trims == 0  # nothing happened yet: nothing to give back
        in_flight[0] = 1
        completed[0] = 5  # calls finished, but one is still running
        time.sleep(0.1)
        assert trimmer.trims == 0
        in_flight[0] = 0
        assert wait_for(lambda: trimmer.trims == 1)
        time.sleep(0.1)
        assert trimmer.trims == 1  # quiet since: no second trim
        completed[0] = 6
        assert wait_for(lambda: trimmer.trims == 2)
    finally:
        trimmer.close()
