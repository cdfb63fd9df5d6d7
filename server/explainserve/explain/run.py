"""The data contract of a method's run, between the request paths (`service`, `causal_flow`,
`common`'s steps) and the methods (`method`, `methods/`): the input ready to explain (`Item`,
its `TargetChoice`), what the run needs besides it (`RunContext`), its progress counting
(`Progress`), its in-flight work (`Pending`) and what it found (`Picked`). A leaf that both
sides import."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from explainserve.scheduling.jobs import ForwardJob, GradientJob, OutputHead
from explainserve.vocabulary import Aggregation, Encoded, InferenceMode, Units

if TYPE_CHECKING:
    from explainserve.models.registry import ServedModel


@dataclass(frozen=True)
class TargetChoice:
    """A classifier input's targets: those the request gives (`explicit`), or, when it gives
    none, the class the model predicts for the unperturbed input (the argmax of its logits)."""

    explicit: NDArray[np.int64] | None = None
    #: With an output head (a concept target): the targets are among its first `among` outputs
    #: (the concepts, the class logits riding after them); None: among all.
    among: int | None = None

    def pick(self, logits: NDArray[np.float64]) -> NDArray[np.int64]:
        """The targets, given the unperturbed input's raw logits `(C,)` (or its output head's
        outputs)."""
        if self.explicit is not None:
            return self.explicit
        return np.asarray([int(np.argmax(logits[: self.among]))], dtype=np.int64)

    @property
    def count(self) -> int:
        """How many targets each input gets (1: the predicted one)."""
        return 1 if self.explicit is None else len(self.explicit)

    def key(self) -> bytes:
        """What the targets depend on besides the input (identical inputs share runs)."""
        return b"predicted" if self.explicit is None else self.explicit.tobytes()


@dataclass(frozen=True)
class Picked:
    """What a run that carried the unperturbed input found: its targets and raw logits."""

    targets: NDArray[np.int64]
    logits: NDArray[np.float64]


@dataclass(frozen=True)
class Item:
    """One input ready to explain: tokens, units and resolved target indices (or, with
    `choice`, how its run picks them from the unperturbed row it carries: `targets` is then
    empty)."""

    index: int
    encoded: Encoded
    units: Units
    targets: NDArray[np.int64]
    #: Causal LMs: per target token id, the position whose next-token logits score it.
    positions: NDArray[np.int64] | None = None
    #: Classifiers' perturbation runs: the targets are picked once the rows are in.
    choice: TargetChoice | None = None


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

    @property
    def picked(self) -> Picked | None:
        """After `finish`, for a run of an item with a `choice`: its targets and the
        unperturbed input's logits; None for the others."""
        ...


@dataclass(frozen=True)
class RunContext:
    """What a method's run needs besides its input: the model and the request's choices."""

    model: ServedModel
    mode: InferenceMode
    aggregation: Aggregation
    seed: int
    progress: Progress
    is_cancelled: Callable[[], bool] | None
    #: What is explained instead of the class logits (a concept target's `OutputHead`), and how
    #: many outputs it has; None: the logits.
    output: OutputHead | None = None
    n_outputs: int = 0

    def outputs(self) -> int:
        """How many outputs a row is scored on when every one is kept (targets picked later):
        the output head's, else the model's classes."""
        return self.n_outputs if self.output is not None else len(self.model.labels)
