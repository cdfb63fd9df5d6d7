"""What every method shares: the prepared inputs, progress counting and pending results."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from explainserve.explain.units import Encoded, Units
from explainserve.scheduling.jobs import ForwardJob, GradientJob


@dataclass(frozen=True)
class Item:
    """One input ready to explain: tokens, units and resolved target indices."""

    index: int
    encoded: Encoded
    units: Units
    targets: NDArray[np.int64]
    #: Causal LMs: per target token id, the position whose next-token logits score it.
    positions: NDArray[np.int64] | None = None


class Progress:
    """Counts forward passes (sequences through the model) done across a request's jobs."""

    def __init__(self, total: int, listener: Callable[[int, int], None] | None = None) -> None:
        self.total = total
        self.done = 0
        self._listener = listener
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        """Called by the worker when `n` more rows are done."""
        with self._lock:
            self.done += n
            done = self.done
        if self._listener is not None:
            self._listener(done, self.total)

    def extend(self, n: int) -> None:
        """Adds `n` rows to the total (work planned once generated continuations are known)."""
        with self._lock:
            self.total += n


class Pending(Protocol):
    """The in-flight work of one input: its worker futures and how to finish it."""

    #: Sequences this input sends through the model.
    n_rows: int

    @property
    def jobs(self) -> Sequence[ForwardJob | GradientJob]:
        """The worker jobs, to submit (all inputs' together)."""
        ...

    @property
    def futures(self) -> list[Future[Any]]:
        """The worker jobs' futures; `finish` may be called once all are done."""
        ...

    def finish(self) -> NDArray[np.float64]:
        """`(targets, units)` scores; raises what the jobs raised."""
        ...
