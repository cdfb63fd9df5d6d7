"""What callers hand the worker: jobs, blocks of rows of one kind whose results come back through
a `concurrent.futures.Future`.

A *forward job* is a block of token-id rows of one input (e.g. all perturbations of it) whose
outputs are reduced to a few target scores per row; a *gradient job* is a block of
input-embedding rows whose gradients are wanted; an *activation job* is one input whose
activations at some split points are captured; a *head job* is a block of rows of activations
at the classification head's input, run through the head alone; a *generate job* is a prompt a
causal LM continues; a *concept job* is one input run up to the classification head's input,
where an analysis (a concept set's, in `concepts/`) turns the row the head reads into its
result. Forward and gradient jobs may carry an *output head*: a function of that row that
replaces the model's logits as what is explained (a concept's activation). Every job shares one
base (`Job`): the callbacks, the future and the
queue's bookkeeping; each declares its `kind`, which the worker batches by and `execute` runs
by. Nothing here knows what an attribution method is.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve.vocabulary import InferenceMode, Priority

#: A job's kind: the batches it may share, the code that runs them, its label in metrics.
Kind = Literal["forward", "gradient", "activation", "head", "generate", "concept", "concept_layer"]

#: How a request's rows are scheduled: "interactive" rows go before queued "batch" rows.

R = TypeVar("R")

#: The classification head alone: `(r, *features)` rows of its input -> `(r, C)` logits
#: (differentiable).
HeadFn = Callable[[torch.Tensor], torch.Tensor]


class OutputHead(Protocol):
    """What a forward or gradient job explains instead of the class logits: a function of the
    classification head's input at the position the head reads (the model is run up to there
    only). Jobs share a batch only with jobs of the same output head (the same object)."""

    def __call__(self, rows: torch.Tensor, head: HeadFn) -> torch.Tensor:
        """`(b, *features)` head-input rows -> `(b, outputs)` float32 (differentiable)."""
        ...


class HeadInputAnalysis(Protocol):
    """What concept jobs compute from their input's row at the classification head's input: one
    call per batch for the jobs that share this analysis (the same object), on the worker's
    thread, with gradients enabled."""

    def __call__(self, rows: torch.Tensor, head: HeadFn, payloads: list[Any]) -> list[Any]:
        """`rows` `(b, *features)`: one per job, in the order of `payloads` (each job's own
        part: its targets); returns each job's result."""
        ...


def position_ids(attention: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows from their `(..., L)` attention mask: cumulative attention
    - 1, clamped at 0 for the padding, so a left-padded row sees the positions it would see
    alone."""
    return (attention.cumsum(-1) - 1).clamp(min=0)


class RequestTag:
    """A request's cancellation check, shared by all its jobs (the worker keys requests by it),
    with how its rows are scheduled.

    `isolated`: its rows run in batches of their own, cut by the token budget alone (not by
    measured time), so the batches it gets are those it gets alone and its results are too,
    bit for bit. `priority`: "interactive" rows are batched before queued "batch" rows (which
    run when no interactive row of their kind waits).
    """

    def __init__(
        self,
        is_cancelled: Callable[[], bool] | None,
        *,
        isolated: bool = False,
        priority: Priority = "interactive",
    ) -> None:
        self._is_cancelled = is_cancelled
        self.isolated = isolated
        self.priority = priority

    def __call__(self) -> bool:
        return self._is_cancelled is not None and self._is_cancelled()


class CalibrationTag(RequestTag):
    """The request of the worker's own calibration batches (`scheduling.calibration`): isolated,
    so each of its jobs is one batch of the size asked, and counted apart
    (`WorkerStats.calibration_batches`)."""

    def __init__(self) -> None:
        super().__init__(None, isolated=True)


@dataclass(eq=False, kw_only=True)
class Job(Generic[R]):
    """What every job shares: progress and cancellation callbacks, the future of its result,
    and the queue's bookkeeping (written by the worker, read by `execute`).

    `on_rows_done(n)` is called as rows complete; `is_cancelled` is shared by every job of a
    request (the worker keys requests by it) and checked before each batch.
    """

    #: Set by each job type.
    kind: ClassVar[Kind]
    #: Whether its batches keep activations for a backward pass (the gradient token budget).
    backward: ClassVar[bool] = False

    on_rows_done: Callable[[int], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    future: Future[R] = field(default_factory=Future)
    #: The first row not yet taken into a batch.
    _next_row: int = field(default=0, init=False, repr=False)
    #: Rows whose results are in.
    _rows_done: int = field(default=0, init=False, repr=False)
    #: The request it belongs to, its submission order and time (set when it is queued).
    _key: object = field(default=None, init=False, repr=False)
    _seq: int = field(default=0, init=False, repr=False)
    _enqueued: float = field(default=0.0, init=False, repr=False)

    @property
    def n_rows(self) -> int:
        """Number of rows (sequences through the model)."""
        return 1

    @property
    def isolated(self) -> bool:
        """Whether its request runs in batches of its own (`RequestTag`)."""
        return isinstance(self.is_cancelled, RequestTag) and self.is_cancelled.isolated

    @property
    def priority(self) -> Priority:
        """Its request's priority (`RequestTag`; "interactive" by default)."""
        if isinstance(self.is_cancelled, RequestTag):
            return self.is_cancelled.priority
        return "interactive"

    @property
    def length(self) -> int:
        """Tokens per row (its padded width in a batch)."""
        return 1

    @property
    def width(self) -> int:
        """Positions a row of it takes in a batch."""
        return self.length

    @property
    def keep(self) -> int:
        """How many last positions' logits the job reads (causal LMs), 0 for others."""
        return 0

    @property
    def rows_left(self) -> int:
        """Rows not yet taken into a batch."""
        return self.n_rows - self._next_row

    def may_join(self, lead: Job[Any]) -> bool:
        """Whether this job's rows may run in one batch with those of `lead` (of its kind)."""
        return True

    def count_done(self, n: int) -> bool:
        """Counts `n` more rows done; True when the result is complete and still wanted."""
        self._rows_done += n
        if self.on_rows_done is not None:
            self.on_rows_done(n)
        return self._rows_done >= self.n_rows and not self.future.done()

    def finish_empty(self) -> None:
        """Resolves the future of a job without rows (never queued)."""
        raise ValueError(f"a {self.kind} job always has rows")


def _kept(length: int, positions: NDArray[np.int64] | None) -> int:
    """Positions from the first scored one to the end (`Job.keep`), 0 without positions."""
    return 0 if positions is None else length - int(positions.min())


@dataclass(eq=False)
class ForwardJob(Job[NDArray[np.float64]]):
    """Rows of one input through the model, each row reduced to its targets' scores.

    `ids` is `(p, n)`; every row shares the attention mask `attention` `(n,)`. The result is
    `(p, t)` float64: `mode(logits)[row, targets]`. `replaced` `(p, n)` marks positions whose
    input embedding is zeroed (the zero-embedding replacement), or is None.

    Causal LMs (teacher forcing): `positions` `(t,)` gives, for each target token id in
    `targets`, the position of the row whose next-token logits score it; the result is then
    `mode(logits[row, positions[k]])[targets[k]]` (the mode applied over the vocabulary).
    `reference` `(n,)`, when given, is the unperturbed sequence the rows were made from: a row
    that equals it up to position `s` may run from `s` on, with the reference's cached keys and
    values for the positions before (`WorkerOptions.reuse`, see `scheduling.prefix`).

    Classifiers: with `logits_row`, the raw logits of row 0 `(C,)` (whatever `mode` scores the
    rows) are kept in `row_logits`, so one job both predicts (row 0 unperturbed) and scores.
    With an `output` head, its outputs replace the logits (`targets` index them, `row_logits`
    holds row 0's).
    """

    kind: ClassVar[Kind] = "forward"

    ids: NDArray[np.int64]
    attention: NDArray[np.int64]
    targets: NDArray[np.int64]
    mode: InferenceMode = "logits"
    replaced: NDArray[np.bool_] | None = None
    positions: NDArray[np.int64] | None = None
    reference: NDArray[np.int64] | None = None
    logits_row: bool = False
    output: OutputHead | None = None
    #: Row 0's raw logits, set when the batch holding row 0 has run (with `logits_row`).
    row_logits: NDArray[np.float64] | None = field(default=None, init=False, repr=False)
    _out: NDArray[np.float64] | None = field(default=None, init=False, repr=False)
    #: Per row, the position it may start from on a cached prefix, and whether it equals the
    #: reference (computed once, on demand: `scheduling.prefix.row_starts`).
    _starts: NDArray[np.int64] | None = field(default=None, init=False, repr=False)
    _unchanged: NDArray[np.bool_] | None = field(default=None, init=False, repr=False)

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.ids.shape[0])

    @property
    def length(self) -> int:
        """Tokens per row."""
        return int(self.ids.shape[1])

    @property
    def keep(self) -> int:
        """How many last positions' logits the job reads (causal LMs), 0 for classifiers."""
        return _kept(self.length, self.positions)

    def may_join(self, lead: Job[Any]) -> bool:
        """Rows explaining the same output (the logits, or one output head) batch together."""
        return getattr(lead, "output", None) is self.output

    def finish_empty(self) -> None:
        """No rows: no scores."""
        self.future.set_result(np.zeros((0, len(self.targets)), dtype=np.float64))


@dataclass(eq=False)
class GradientJob(Job[tuple[torch.Tensor, NDArray[np.float64]]]):
    """`r = len(targets)` rows of input embeddings whose gradients are wanted.

    `embeds` holds `(p, n, h)` points and row `i` is `embeds[i % p]` (the rows of several
    targets share their points without copies). Row `i` is scored by
    `mode(logits)[i, targets[i]]`; the result is the pair `(gradients (r, n, h) float32 on CPU,
    scores (r,) float64)`. Causal LMs: with `positions` `(r,)`, row `i` is scored by
    `mode(logits[i, positions[i]])[targets[i]]`.

    With `accumulate`, the worker hands it each batch's gradients instead of keeping them all
    (`accumulate(start, stop, grads)`, `grads` `(stop - start, n, h)` float32 on CPU: the caller
    reduces them as they come), and the result's gradients are an empty tensor. With an `output`
    head, row `i` is scored by `output(head input)[i, targets[i]]` (no mode).
    """

    kind: ClassVar[Kind] = "gradient"
    backward: ClassVar[bool] = True

    embeds: torch.Tensor
    attention: NDArray[np.int64]
    targets: NDArray[np.int64]
    mode: InferenceMode = "logits"
    positions: NDArray[np.int64] | None = None
    accumulate: Callable[[int, int, torch.Tensor], None] | None = None
    output: OutputHead | None = None
    _grads: torch.Tensor | None = field(default=None, init=False, repr=False)
    _scores: NDArray[np.float64] | None = field(default=None, init=False, repr=False)

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return len(self.targets)

    @property
    def length(self) -> int:
        """Tokens per row."""
        return int(self.embeds.shape[1])

    @property
    def keep(self) -> int:
        """How many last positions' logits the job reads (causal LMs), 0 for classifiers."""
        return _kept(self.length, self.positions)

    def may_join(self, lead: Job[Any]) -> bool:
        """Rows explaining the same output (the logits, or one output head) batch together."""
        return getattr(lead, "output", None) is self.output

    def points(self, start: int, stop: int) -> torch.Tensor:
        """Rows `start..stop` of input embeddings."""
        p = int(self.embeds.shape[0])
        if start // p == (stop - 1) // p:
            return self.embeds[start % p : (stop - 1) % p + 1]
        return self.embeds[torch.arange(start, stop) % p]

    def finish_empty(self) -> None:
        """No rows: gradients shaped like the points, no scores."""
        self.future.set_result(
            (torch.zeros_like(self.embeds, device="cpu"), np.zeros(0, dtype=np.float64))
        )


#: Which positions of a capture with a token dimension an activation job keeps.
Selection = Literal["head", "all"]


@dataclass(frozen=True)
class ActivationResult:
    """What an activation job gives back: per split point, float32 rows `(rows, *features)` on
    the CPU; and the `(C,)` float32 logits when they were asked for."""

    values: list[NDArray[np.float32]]
    logits: NDArray[np.float32] | None


@dataclass(eq=False)
class ActivationJob(Job[ActivationResult]):
    """One input `(n,)` (ids, attention) through the model, captured at `split_points`.

    `token_dim[k]` says whether split point `k`'s capture has a token dimension (its second).
    Such a capture is cut to the input's `n` positions (`select="all"`, padding removed) or to
    the one position the classification head reads (`select="head"`: the first token for
    right-padded runners, the last for left-padded ones, whose heads read the last token); a
    capture without one gives its single row. With `logits`, the pass runs to the end and the
    logits come back too; otherwise it stops once every split point of the batch is captured.
    """

    kind: ClassVar[Kind] = "activation"

    ids: NDArray[np.int64]
    attention: NDArray[np.int64]
    split_points: tuple[str, ...]
    token_dim: tuple[bool, ...]
    select: Selection = "head"
    logits: bool = False

    @property
    def length(self) -> int:
        """Tokens of the input."""
        return int(self.ids.shape[0])


@dataclass(eq=False)
class HeadJob(Job[NDArray[np.float32]]):
    """Rows `(r, *features)` float32 of activations at the classification head's input, run
    through the head alone; the result is the `(r, C)` float32 logits. A row counts as one token
    against the budget."""

    kind: ClassVar[Kind] = "head"

    inputs: NDArray[np.float32]
    _out: NDArray[np.float32] | None = field(default=None, init=False, repr=False)

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.inputs.shape[0])

    def finish_empty(self) -> None:
        """No rows: no logits."""
        self.future.set_result(np.zeros((0, 0), dtype=np.float32))


@dataclass(eq=False)
class ConceptJob(Job[Any]):
    """One input `(n,)` (ids, attention) run up to the classification head's input (the pass
    stops there), where `analysis` turns the row the head reads into the job's result, with
    `payload` (the job's own part: its targets). Jobs of one `analysis` in a batch are analysed
    in one call."""

    kind: ClassVar[Kind] = "concept"

    ids: NDArray[np.int64]
    attention: NDArray[np.int64]
    analysis: HeadInputAnalysis
    payload: Any = None

    @property
    def length(self) -> int:
        """Tokens of the input."""
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class LayerBatch:
    """A batch of concept layer jobs, padded, for their analysis to run on the worker's thread:
    `capture()` gives the split point's activations `(b, L, *features)` (no gradients) and the
    batch's `(b, C)` logits; `logits_with(edit)` runs the model again with the split point's
    output replaced by `edit(output)` (gradients on, so the analysis can differentiate through
    the rest of the model); `columns[i]` are job i's positions in the batch."""

    capture: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    logits_with: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    columns: list[slice]


class LayerAnalysis(Protocol):
    """What concept layer jobs compute from a batch's passes (one call per batch: the batch's
    jobs share this analysis)."""

    def __call__(self, batch: LayerBatch, payloads: list[Any]) -> list[Any]:
        """Each job's result, in the order of `payloads`."""
        ...


@dataclass(eq=False)
class ConceptLayerJob(Job[Any]):
    """One input `(n,)` whose concept analysis reads a split point with a token dimension and
    differentiates through the rest of the model (`LayerBatch`): forward and backward passes,
    so its batches take the gradient token budget. Jobs share a batch only with jobs of the same
    analysis (one request's: each batch's edit is that analysis's)."""

    kind: ClassVar[Kind] = "concept_layer"
    backward: ClassVar[bool] = True

    ids: NDArray[np.int64]
    attention: NDArray[np.int64]
    split_point: str
    analysis: LayerAnalysis
    payload: Any = None

    @property
    def length(self) -> int:
        """Tokens of the input."""
        return int(self.ids.shape[0])

    def may_join(self, lead: Job[Any]) -> bool:
        """Only with jobs of the same analysis."""
        return getattr(lead, "analysis", None) is self.analysis


@dataclass(frozen=True)
class GenerationOptions:
    """How a causal LM continues a prompt: greedy, or sampled (temperature, nucleus top_p) with
    a seeded generator; at most `max_new_tokens` tokens."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


@dataclass(eq=False)
class GenerateJob(Job[list[int]]):
    """One prompt `(n,)` continued by a causal LM (on the worker thread that owns the model);
    the result is the generated token ids, end of sequence excluded. `on_rows_done` is called
    once per generated token, and with what is left of `max_new_tokens` at the end."""

    kind: ClassVar[Kind] = "generate"

    prompt: NDArray[np.int64]
    options: GenerationOptions
    stop_ids: frozenset[int] = frozenset()

    @property
    def length(self) -> int:
        """Tokens of the prompt."""
        return int(self.prompt.shape[0])

    @property
    def width(self) -> int:
        """Positions a row of it takes in a batch: the prompt and every new token."""
        return self.length + self.options.max_new_tokens

    def may_join(self, lead: Job[Any]) -> bool:
        """Prompts continue together only when they generate the same way."""
        return (
            isinstance(lead, GenerateJob)
            and lead.options == self.options
            and lead.stop_ids == self.stop_ids
        )


J = TypeVar("J", bound=Job[Any])
#: A batch: row ranges `(job, start, stop)` of jobs of one kind.
Pieces = list[tuple[J, int, int]]
