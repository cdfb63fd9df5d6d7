"""The per-model worker: one thread that owns the model and runs every forward pass.

Callers (the explain and activations layers) submit jobs: a *forward job* is a block of token-id
rows of one input (e.g. all perturbations of it) whose outputs are reduced to a few target scores
per row; a *gradient job* is a block of input-embedding rows whose gradients are wanted; an
*activation job* is one input whose activations at some split points are captured (the forward
stops early when nothing later is needed); a *head job* is a block of rows of activations at the
classification head's input, run through the head alone. The worker packs rows from all pending
jobs of one kind into batches cut by a token budget (padding counted), so the perturbations of
every input of a request, and of concurrent requests, share batches. Results come back through
`concurrent.futures.Future`s. Nothing here knows about gRPC.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve import tracing
from explainserve.errors import Cancelled, ResourceExhausted, Unavailable
from explainserve.scheduling import prefix

log = logging.getLogger(__name__)

InferenceMode = Literal["logits", "softmax", "log_softmax"]


class Runner(Protocol):
    """What the worker needs from a model: logits for a padded batch."""

    pad_id: int
    #: "right" (encoders) or "left" (heads that read the last token).
    padding_side: str

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(b, C)` logits for `(b, L)` ids (or `(b, L, h)` embeddings) and attention mask."""
        ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """`(b, L, h)` input embeddings of `(b, L)` ids."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        ...

    def capture(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        split_points: list[str],
        with_logits: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Activations of a padded batch at `split_points`, and the logits when `with_logits`
        (otherwise the pass may stop once everything is captured). Activation jobs only."""
        ...

    def run_head(self, inputs: torch.Tensor) -> torch.Tensor:
        """`(r, C)` logits of the classification head on `(r, *features)` rows. Head jobs only."""
        ...


def apply_mode(logits: torch.Tensor, mode: InferenceMode) -> torch.Tensor:
    """The function of the logits that is explained, over the last (class) dimension."""
    if mode == "softmax":
        return torch.softmax(logits.float(), dim=-1)
    if mode == "log_softmax":
        return torch.log_softmax(logits.float(), dim=-1)
    return logits.float()


@dataclass(eq=False)
class ForwardJob:
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
    """

    ids: NDArray[np.int64]
    attention: NDArray[np.int64]
    targets: NDArray[np.int64]
    mode: InferenceMode = "logits"
    replaced: NDArray[np.bool_] | None = None
    positions: NDArray[np.int64] | None = None
    reference: NDArray[np.int64] | None = None
    on_rows_done: Callable[[int], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    future: Future[NDArray[np.float64]] = field(default_factory=Future)
    _next_row: int = 0
    _key: object = None
    _seq: int = 0
    _enqueued: float = 0.0
    _out: NDArray[np.float64] | None = None
    _rows_done: int = 0
    #: Per row, the position it may start from on a cached prefix (computed once, on demand).
    _starts: NDArray[np.int64] | None = None

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
        return 0 if self.positions is None else self.length - int(self.positions.min())


@dataclass(eq=False)
class GradientJob:
    """`r = len(targets)` rows of input embeddings whose gradients are wanted.

    `embeds` holds `(p, n, h)` points and row `i` is `embeds[i % p]` (the rows of several
    targets share their points without copies). Row `i` is scored by
    `mode(logits)[i, targets[i]]`; the result is the pair `(gradients (r, n, h) float32 on CPU,
    scores (r,) float64)`. Causal LMs: with `positions` `(r,)`, row `i` is scored by
    `mode(logits[i, positions[i]])[targets[i]]`.

    With `accumulate`, the worker hands it each batch's gradients instead of keeping them all
    (`accumulate(start, stop, grads)`, `grads` `(stop - start, n, h)` float32 on CPU: the caller
    reduces them as they come), and the result's gradients are an empty tensor.
    """

    embeds: torch.Tensor
    attention: NDArray[np.int64]
    targets: NDArray[np.int64]
    mode: InferenceMode = "logits"
    positions: NDArray[np.int64] | None = None
    accumulate: Callable[[int, int, torch.Tensor], None] | None = None
    on_rows_done: Callable[[int], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    future: Future[tuple[torch.Tensor, NDArray[np.float64]]] = field(default_factory=Future)
    _next_row: int = 0
    _key: object = None
    _seq: int = 0
    _enqueued: float = 0.0
    _grads: torch.Tensor | None = None
    _scores: NDArray[np.float64] | None = None
    _rows_done: int = 0

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return len(self.targets)

    def points(self, start: int, stop: int) -> torch.Tensor:
        """Rows `start..stop` of input embeddings."""
        p = int(self.embeds.shape[0])
        if start // p == (stop - 1) // p:
            return self.embeds[start % p : (stop - 1) % p + 1]
        return self.embeds[torch.arange(start, stop) % p]

    @property
    def length(self) -> int:
        """Tokens per row."""
        return int(self.embeds.shape[1])

    @property
    def keep(self) -> int:
        """How many last positions' logits the job reads (causal LMs), 0 for classifiers."""
        return 0 if self.positions is None else self.length - int(self.positions.min())


#: Which positions of a capture with a token dimension an activation job keeps.
Selection = Literal["head", "all"]


@dataclass(frozen=True)
class ActivationResult:
    """What an activation job gives back: per split point, float32 rows `(rows, *features)` on
    the CPU; and the `(C,)` float32 logits when they were asked for."""

    values: list[NDArray[np.float32]]
    logits: NDArray[np.float32] | None


@dataclass(eq=False)
class ActivationJob:
    """One input `(n,)` (ids, attention) through the model, captured at `split_points`.

    `token_dim[k]` says whether split point `k`'s capture has a token dimension (its second).
    Such a capture is cut to the input's `n` positions (`select="all"`, padding removed) or to
    the one position the classification head reads (`select="head"`: the first token for
    right-padded runners, the last for left-padded ones, whose heads read the last token); a
    capture without one gives its single row. With `logits`, the pass runs to the end and the
    logits come back too; otherwise it stops once every split point of the batch is captured.
    """

    ids: NDArray[np.int64]
    attention: NDArray[np.int64]
    split_points: tuple[str, ...]
    token_dim: tuple[bool, ...]
    select: Selection = "head"
    logits: bool = False
    on_rows_done: Callable[[int], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    future: Future[ActivationResult] = field(default_factory=Future)
    _next_row: int = 0
    _key: object = None
    _seq: int = 0
    _enqueued: float = 0.0
    _rows_done: int = 0

    @property
    def n_rows(self) -> int:
        """One: the input."""
        return 1

    @property
    def length(self) -> int:
        """Tokens of the input."""
        return int(self.ids.shape[0])


@dataclass(eq=False)
class HeadJob:
    """Rows `(r, *features)` float32 of activations at the classification head's input, run
    through the head alone; the result is the `(r, C)` float32 logits. A row counts as one token
    against the budget."""

    inputs: NDArray[np.float32]
    on_rows_done: Callable[[int], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    future: Future[NDArray[np.float32]] = field(default_factory=Future)
    _next_row: int = 0
    _key: object = None
    _seq: int = 0
    _enqueued: float = 0.0
    _rows_done: int = 0
    _out: NDArray[np.float32] | None = None

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(self.inputs.shape[0])

    @property
    def length(self) -> int:
        """One position per row."""
        return 1


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
class GenerateJob:
    """One prompt `(n,)` continued by a causal LM (runs alone, on the worker thread that owns the
    model); the result is the generated token ids, end of sequence excluded. `on_rows_done` is
    called once per generated token, and with what is left of `max_new_tokens` at the end."""

    prompt: NDArray[np.int64]
    options: GenerationOptions
    stop_ids: frozenset[int] = frozenset()
    on_rows_done: Callable[[int], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    future: Future[list[int]] = field(default_factory=Future)
    _next_row: int = 0
    _rows_done: int = 0
    _key: object = None
    _seq: int = 0
    _enqueued: float = 0.0

    @property
    def n_rows(self) -> int:
        """One: the prompt."""
        return 1

    @property
    def length(self) -> int:
        """Tokens of the prompt."""
        return int(self.prompt.shape[0])


Job = ForwardJob | GradientJob | ActivationJob | HeadJob | GenerateJob


@dataclass(frozen=True)
class WorkerOptions:
    """Batching, queueing and out-of-memory knobs."""

    #: Rows x padded length of one no-grad batch.
    token_budget: int = 8192
    #: Rows x padded length of one gradient batch (activations are kept for backward).
    gradient_token_budget: int = 4096
    #: Hard cap on rows per batch.
    max_batch_rows: int = 512
    #: Activation jobs are single inputs of every length, and a batch mixing short and long ones
    #: computes much padding. Once an activation batch holds `activation_fill_tokens` real tokens,
    #: it only takes jobs that keep its padded / real tokens at most `activation_max_padding`:
    #: with many inputs waiting, batches are of (nearly) equal lengths; a small request still
    #: goes in one batch.
    activation_max_padding: float = 1.02
    activation_fill_tokens: int = 256
    #: How long the oldest queued job may wait for others to share its batch (seconds), unless
    #: a full batch is already queued. Under load the queue is never empty and nothing waits.
    batch_wait_seconds: float = 0.002
    #: Rows (sequences) waiting at most; a submission that would go beyond is refused with
    #: ResourceExhausted at once.
    max_queued_rows: int = 200_000
    #: After an out-of-memory error the batch size is capped at what worked; the cap grows by
    #: an eighth after this many batches in a row that ran at the cap.
    oom_grow_after: int = 32
    #: Causal LMs: positions x vocabulary of the logits one batch may hold (the vocab-sized
    #: logits of the continuation's positions, reduced to the target scores in the batch).
    logits_budget: int = 1 << 26
    #: Do less than the naive work where the result is the same: causal LMs run each perturbed
    #: row only from its first changed position, on the cached keys and values of the
    #: unperturbed sequence (`scheduling.prefix`), and the explain layer runs identical rows and
    #: identical inputs of a request once. Off only to measure what it saves (bench/).
    reuse: bool = True


@dataclass
class WorkerStats:
    """Counters, read by tests and metrics. Only the worker thread writes them."""

    batches: int = 0
    rows: int = 0
    #: Tokens run (padding counted) and tokens of the inputs run; with prefix reuse, only what
    #: actually went through the model (cached prefixes once, suffixes).
    padded_tokens: int = 0
    real_tokens: int = 0
    #: Tokens the same rows would have cost run in full, each alone (rows x length).
    naive_tokens: int = 0
    #: Batches that ran out of memory and were split.
    oom_splits: int = 0
    #: Jobs failed with an error of their own (the rest of their batch retried without them).
    failed_jobs: int = 0
    #: Jobs dropped from the queue because their request was cancelled or timed out.
    cancelled_jobs: int = 0
    #: Rows of cancelled jobs that never ran.
    cancelled_rows: int = 0
    #: Queued jobs of a request that failed, and their rows, dropped unrun.
    dropped_jobs: int = 0
    dropped_rows: int = 0
    #: Submissions refused because the queue was full.
    rejected: int = 0
    #: Seconds spent in batches (forward and backward passes, copies to the host).
    busy_seconds: float = 0.0


class IsolatedRequest:
    """The cancellation check of a request whose rows run in batches of their own (every job of
    a request shares its `is_cancelled`, which keys the request in the worker): the batches it
    gets are then those it would get alone, so its results are too, bit for bit."""

    def __init__(self, is_cancelled: Callable[[], bool] | None) -> None:
        self._is_cancelled = is_cancelled

    def __call__(self) -> bool:
        return self._is_cancelled is not None and self._is_cancelled()


def _isolated(job: Job) -> bool:
    return isinstance(job.is_cancelled, IsolatedRequest)


def _may_share(lead: Job, job: Job) -> bool:
    """Whether `job`'s rows may join a batch led by `lead`: always within a request; across
    requests unless one of them is isolated."""
    return job._key is lead._key or not (_isolated(lead) or _isolated(job))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device out-of-memory error (CUDA's, or an injected one)."""
    return isinstance(exc, torch.OutOfMemoryError)


class Observer(Protocol):
    """Receives the worker's timings (metrics); called on the worker thread, must be quick."""

    def queued(self, kind: str, seconds: float) -> None:
        """A job's first rows start running `seconds` after it was queued."""
        ...

    def batch(
        self, kind: str, rows: int, padded: int, real: int, budget: int, seconds: float
    ) -> None:
        """A batch of `rows` rows, `padded` tokens (padding counted) of which `real` are
        tokens of the inputs, under a budget of `budget` tokens, ran in `seconds`."""
        ...


#: Job kind names, for metrics and logs.
KIND_NAMES = {
    "ForwardJob": "forward",
    "GradientJob": "gradient",
    "ActivationJob": "activation",
    "GenerateJob": "generate",
}


def kind_name(job: Job) -> str:
    """ "forward", "gradient", "activation", "generate" or "head"."""
    return KIND_NAMES.get(type(job).__name__, "head")


#: A batch: row ranges `(job, start, stop)` of jobs of one kind.
Pieces = list[tuple["Job", int, int]]


class Worker:
    """Owns one model; runs its batches on a dedicated thread.

    Fairness: jobs belong to a request, keyed by their `is_cancelled` callback (every job of a
    request shares it; jobs without one are keyed by their submission). Each batch is led by the
    oldest job of the request that led a batch least recently, and filled with rows of the jobs
    closest in length, so a huge request and small ones interleave batch by batch.

    Faults: a batch that runs out of device memory is split in halves and retried (the cache
    freed first); the batch size is then capped at what worked, growing back slowly. A row that
    does not fit alone fails its job with ResourceExhausted. Any other error retries the batch's
    jobs one by one, so only the job that raises fails. `fault_hook`, when set, is called with
    each batch before it runs: tests inject errors with it.
    """

    def __init__(
        self, runner: Runner, options: WorkerOptions | None = None, name: str = ""
    ) -> None:
        self.runner = runner
        self.name = name
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        #: Called with every batch (and every retried part of one) before it runs.
        self.fault_hook: Callable[[Sequence[tuple[Job, int, int]]], None] | None = None
        #: Told about queueing and batch timings (metrics), when set.
        self.observer: Observer | None = None
        self._pending: deque[Job] = deque()
        self._queued_rows = 0
        self._seq = 0
        self._batch_seq = 0
        self._last_lead: dict[object, int] = {}
        #: Padded tokens per batch that fitted after an out-of-memory error, per job kind.
        self._token_cap: dict[type, int] = {}
        self._at_cap: dict[type, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"worker-{name}", daemon=True)
        self._thread.start()

    # -- submission -------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queue."""
        return self._queued_rows

    def admit(self, rows: int) -> None:
        """Raises ResourceExhausted (or Unavailable) now if `rows` more sequences would not be
        queued: a request checks its whole size up front, before its first forward pass, so a
        full queue refuses it at once. Reserves nothing: `submit_all` checks again."""
        with self._cond:
            self._check_room(rows)

    def _check_room(self, rows: int) -> None:
        bound = self.options.max_queued_rows
        if self._closed:
            raise Unavailable(f"model {self.name or '?'} is shutting down")
        if rows > bound:
            self.stats.rejected += 1
            raise ResourceExhausted(
                f"the request needs {rows} sequences through the model at once, more than "
                f"the queue bound of {bound}: send fewer inputs or perturbations per request"
            )
        if self._queued_rows + rows > bound:
            self.stats.rejected += 1
            raise ResourceExhausted(
                f"the queue of model {self.name or '?'} is full ({self._queued_rows} "
                f"sequences waiting, bound {bound}): retry later"
            )

    def submit(self, job: Job) -> None:
        """Queues a job; its `future` resolves when all its rows are done."""
        self.submit_all([job])

    def submit_all(self, jobs: Iterable[Job]) -> None:
        """Queues jobs together, so the next batch can already mix them (a request's inputs
        are batched the same way whenever the worker is otherwise idle).

        Raises ResourceExhausted, queueing nothing, when the rows would go beyond the queue
        bound, and Unavailable once the worker is closing.
        """
        queued = []
        for job in jobs:
            if job.n_rows == 0:
                self._finish_empty(job)
            else:
                queued.append(job)
        rows = sum(job.n_rows for job in queued)
        # Tracing: the jobs' RPC span, noted on the submitting thread (explainserve.tracing).
        tracing.jobs_submitted(queued)
        with self._cond:
            self._check_room(rows)
            submission = object()
            now = time.monotonic()
            for job in queued:
                job._key = job.is_cancelled if job.is_cancelled is not None else submission
                job._seq = self._seq
                job._enqueued = now
                self._seq += 1
            self._pending.extend(queued)
            self._queued_rows += rows
            self._cond.notify()

    def close(self) -> None:
        """Stops the thread after the queued work is done; later submissions are refused."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def reset_memory_caps(self) -> None:
        """Forgets the batch sizes learnt from out-of-memory errors."""
        with self._cond:
            self._token_cap.clear()
            self._at_cap.clear()

    @staticmethod
    def _finish_empty(job: Job) -> None:
        if isinstance(job, ForwardJob):
            job.future.set_result(np.zeros((0, len(job.targets)), dtype=np.float64))
        elif isinstance(job, GradientJob):
            job.future.set_result(
                (torch.zeros_like(job.embeds, device="cpu"), np.zeros(0, dtype=np.float64))
            )
        elif isinstance(job, HeadJob):
            job.future.set_result(np.zeros((0, 0), dtype=np.float32))

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending and self._closed:
                    return
                self._wait_for_company()
                self._drop_cancelled()
                if not self._pending:
                    continue
                batch = self._take_batch()
            started = time.perf_counter()
            self._execute(batch)
            self.stats.busy_seconds += time.perf_counter() - started

    def _wait_for_company(self) -> None:
        """Lets the oldest job wait up to `batch_wait_seconds` (since it was queued) for others
        to share its batch, unless a full batch is already waiting. Called with the lock held."""
        wait = self.options.batch_wait_seconds
        if wait <= 0:
            return
        deadline = min(job._enqueued for job in self._pending) + wait
        while not self._closed:
            tokens = sum((job.n_rows - job._next_row) * job.length for job in self._pending)
            left = deadline - time.monotonic()
            if (
                left <= 0
                or tokens >= self.options.token_budget
                or self._queued_rows >= self.options.max_batch_rows
            ):
                return
            self._cond.wait(left)

    def _drop_cancelled(self) -> None:
        keep: deque[Job] = deque()
        for job in self._pending:
            left = job.n_rows - job._next_row
            if self._cancel_rows(job, left):
                self._queued_rows -= left
            else:
                keep.append(job)
        self._pending = keep

    def _cancel_piece(self, job: Job, start: int, stop: int) -> bool:
        """`_cancel_rows` for the rows `start..stop` of `job`, taken from the queue for a batch."""
        return self._cancel_rows(job, stop - start)

    def _cancel_rows(self, job: Job, rows: int) -> bool:
        """Fails `job` with Cancelled when its request is cancelled (True); its `rows` not run
        count as cancelled rows."""
        if job.is_cancelled is None or not job.is_cancelled():
            return False
        self.stats.cancelled_rows += rows
        if not job.future.done():
            self.stats.cancelled_jobs += 1
            job.future.set_exception(Cancelled("request cancelled"))
        return True

    def _lead(self) -> Job:
        """The oldest job of the request that led a batch least recently."""
        first: dict[object, Job] = {}
        for job in self._pending:
            first.setdefault(job._key, job)
        self._last_lead = {k: v for k, v in self._last_lead.items() if k in first}
        key = min(first, key=lambda k: (self._last_lead.get(k, -1), first[k]._seq))
        self._batch_seq += 1
        self._last_lead[key] = self._batch_seq
        return first[key]

    def _take_batch(self) -> list[tuple[Job, int, int]]:
        """Pops row ranges `(job, start, stop)` of one kind under the token budget.

        The lead job's kind and rows come first (see the class docstring); the rest of the
        batch is filled from the jobs of the same kind closest in length to it, to limit padding
        (activation batches also cap it: `activation_max_padding`). A job whose rows are all
        taken leaves the queue. Called with the lock held.
        """
        lead = self._lead()
        kind = type(lead)
        if kind is GenerateJob:
            return self._take_generation(lead)  # type: ignore[arg-type]
        vocab = int(getattr(self.runner, "vocab_size", 0))
        keep = 0
        same_kind = [
            job
            for job in self._pending
            if type(job) is kind and job is not lead and _may_share(lead, job)
        ]
        candidates = [lead, *sorted(same_kind, key=lambda j: abs(j.length - lead.length))]
        budget = (
            self.options.gradient_token_budget if kind is GradientJob else self.options.token_budget
        )
        budget = min(budget, self._token_cap.get(kind, budget))
        max_padding = self.options.activation_max_padding if kind is ActivationJob else None
        batch: list[tuple[Job, int, int]] = []
        rows = 0
        width = 0
        real = 0
        for job in candidates:
            new_width = max(width, job.length)
            new_keep = max(keep, getattr(job, "keep", 0))
            fit = min(
                budget // max(new_width, 1) - rows,
                self.options.max_batch_rows - rows,
                job.n_rows - job._next_row,
            )
            if new_keep and vocab:
                fit = min(fit, self.options.logits_budget // (new_keep * vocab) - rows)
            if fit <= 0:
                if rows == 0:  # one row always goes, whatever its length
                    fit = 1
                else:
                    continue  # too long for what is left; a shorter job may still fit
            if (
                max_padding is not None
                and real >= self.options.activation_fill_tokens
                and (rows + fit) * new_width > max_padding * (real + fit * job.length)
            ):
                continue  # too much padding; a job closer in length may still fit
            start = job._next_row
            if start == 0 and self.observer is not None:
                self.observer.queued(kind_name(job), time.monotonic() - job._enqueued)
            job._next_row += fit
            batch.append((job, start, start + fit))
            rows += fit
            real += fit * job.length
            width = new_width
            self._queued_rows -= fit
            keep = new_keep
            if job._next_row >= job.n_rows:
                self._pending.remove(job)
            if rows >= self.options.max_batch_rows or rows * width >= budget:
                break
        return batch

    # -- running a batch, with out-of-memory splitting and fault isolation --------------------

    def _execute(self, pieces: Pieces) -> None:
        """Runs a batch; never raises. Splits it on out-of-memory, isolates failing jobs."""
        pieces = [p for p in pieces if not p[0].future.done()]  # a failed job's other rows
        # Liveness checked before every batch, the parts of a split or retried one included: a
        # request cancelled meanwhile runs no further batch.
        pieces = [p for p in pieces if not self._cancel_piece(*p)]
        if not pieces:
            return
        cap = self._token_cap.get(type(pieces[0][0]))
        rows = sum(stop - start for _, start, stop in pieces)
        width = max(job.length for job, _, _ in pieces)
        if cap is not None and rows > 1 and rows * width > cap:
            for part in self._split(pieces, max(1, cap // width)):
                self._execute(part)
            return
        started = time.perf_counter()
        try:
            if self.fault_hook is not None:
                self.fault_hook(pieces)
            self._run(pieces)
        except Exception as exc:
            if is_out_of_memory(exc):
                self._on_out_of_memory(pieces, exc)
            elif len({id(job) for job, _, _ in pieces}) > 1:
                # Someone's input breaks the model: find whose, the others still get answers.
                by_job: dict[int, Pieces] = {}
                for piece in pieces:
                    by_job.setdefault(id(piece[0]), []).append(piece)
                for part in by_job.values():
                    self._execute(part)
            else:
                job = pieces[0][0]
                log.error("a job of model %s failed", self.name, exc_info=exc)
                self._fail_request(job, exc)
        else:
            if self.observer is not None:
                kind = type(pieces[0][0])
                budget = (
                    self.options.gradient_token_budget
                    if kind is GradientJob
                    else self.options.token_budget
                )
                self.observer.batch(
                    kind_name(pieces[0][0]),
                    rows,
                    rows * width,
                    sum((stop - start) * job.length for job, start, stop in pieces),
                    budget,
                    time.perf_counter() - started,
                )
            # Tracing: queue and batch spans of each request in the batch (explainserve.tracing).
            tracing.batch_ran(pieces, started)
            self._note_success(pieces)

    def _on_out_of_memory(self, pieces: Pieces, exc: Exception) -> None:
        kind = type(pieces[0][0])
        rows = sum(stop - start for _, start, stop in pieces)
        width = max(job.length for job, _, _ in pieces)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if rows <= 1:
            job = pieces[0][0]
            log.warning("model %s: one sequence of %d tokens does not fit", self.name, width)
            self._fail_request(
                job,
                ResourceExhausted(
                    f"an input of {width} tokens does not fit in device memory even alone "
                    f"(model {self.name or '?'}): send shorter inputs"
                ),
            )
            return
        self.stats.oom_splits += 1
        self._token_cap[kind] = max(1, rows // 2) * width
        self._at_cap[kind] = 0
        log.warning(
            "model %s: out of memory on %d rows x %d tokens; retrying in halves (%s)",
            self.name,
            rows,
            width,
            exc,
        )
        self._execute(pieces)  # split under the new cap

    @staticmethod
    def _split(pieces: Pieces, size: int) -> list[Pieces]:
        """Consecutive parts of at most `size` rows (a job's range may be cut)."""
        parts: list[Pieces] = [[]]
        taken = 0
        for job, start, stop in pieces:
            while start < stop:
                if taken == size:
                    parts.append([])
                    taken = 0
                cut = min(stop, start + size - taken)
                parts[-1].append((job, start, cut))
                taken += cut - start
                start = cut
        return parts

    def _note_success(self, pieces: Pieces) -> None:
        """Grows an out-of-memory cap back by an eighth after enough batches ran at it."""
        kind = type(pieces[0][0])
        cap = self._token_cap.get(kind)
        if cap is None:
            return
        width = max(job.length for job, _, _ in pieces)
        rows = sum(stop - start for _, start, stop in pieces)
        if rows * width * 2 < cap:
            return  # a small batch says nothing about the cap
        self._at_cap[kind] = self._at_cap.get(kind, 0) + 1
        if self._at_cap[kind] >= self.options.oom_grow_after:
            self._at_cap[kind] = 0
            self._token_cap[kind] = cap + max(1, cap // 8)

    def _run(self, pieces: Pieces) -> None:
        first = pieces[0][0]
        if isinstance(first, ForwardJob):
            self._run_forward(pieces)  # type: ignore[arg-type]
        elif isinstance(first, GradientJob):
            self._run_gradient(pieces)  # type: ignore[arg-type]
        elif isinstance(first, ActivationJob):
            self._run_activation(pieces)  # type: ignore[arg-type]
        elif isinstance(first, GenerateJob):
            self._run_generate([job for job, _, _ in pieces])  # type: ignore[misc]
        else:
            self._run_head(pieces)  # type: ignore[arg-type]

    def _take_generation(self, lead: GenerateJob) -> list[tuple[Job, int, int]]:
        """The lead generation job and the others that generate the same way (a request's
        prompts), as many as fit the token budget (prompt width + new tokens per row)."""
        same = [
            job
            for job in self._pending
            if isinstance(job, GenerateJob)
            and job is not lead
            and _may_share(lead, job)
            and job.options == lead.options
            and job.stop_ids == lead.stop_ids
        ]
        batch: list[tuple[Job, int, int]] = []
        width = 0
        for job in [lead, *same]:
            new_width = max(width, job.length + job.options.max_new_tokens)
            rows = len(batch) + 1
            if batch and (
                rows * new_width > self.options.token_budget or rows > self.options.max_batch_rows
            ):
                break
            if self.observer is not None:
                self.observer.queued(kind_name(job), time.monotonic() - job._enqueued)
            self._pending.remove(job)
            self._queued_rows -= job.n_rows - job._next_row
            job._next_row = job.n_rows
            batch.append((job, 0, job.n_rows))
            width = new_width
        return batch

    def _columns(self, width: int, length: int) -> slice:
        """Where a row of `length` tokens sits in a batch of `width` (the runner's side)."""
        if self.runner.padding_side == "left":
            return slice(width - length, width)
        return slice(0, length)

    def _pad(
        self, pieces: Sequence[tuple[ForwardJob | GradientJob | ActivationJob, int, int]]
    ) -> tuple[int, torch.Tensor]:
        """The padded width and the `(b, L)` attention mask of a batch."""
        width = max(job.length for job, _, _ in pieces)
        rows = sum(stop - start for _, start, stop in pieces)
        attention = torch.zeros((rows, width), dtype=torch.long)
        at = 0
        for job, start, stop in pieces:
            cols = self._columns(width, job.length)
            attention[at : at + stop - start, cols] = torch.from_numpy(job.attention)
            at += stop - start
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.padded_tokens += rows * width
        real = sum((stop - start) * job.length for job, start, stop in pieces)
        self.stats.real_tokens += real
        self.stats.naive_tokens += real
        return width, attention

    def _run_forward(self, pieces: list[tuple[ForwardJob, int, int]]) -> None:
        host = None
        if self.options.reuse and any(job.reference is not None for job, _, _ in pieces):
            host = prefix.forward_scores(self.runner, pieces, self.stats)
        if host is None:
            host = self._forward_scores(pieces)
        for (job, start, stop), out in zip(pieces, host, strict=True):
            if job._out is None:
                job._out = np.empty((job.n_rows, len(job.targets)), dtype=np.float64)
            job._out[start:stop] = out
            if self._rows_done(job, stop - start):
                job.future.set_result(job._out)

    def _forward_scores(
        self, pieces: list[tuple[ForwardJob, int, int]]
    ) -> list[NDArray[np.float64]]:
        """Each piece's `(rows, t)` scores, every row run in full in one padded batch."""
        width, attention = self._pad(pieces)
        rows = attention.shape[0]
        ids = torch.full((rows, width), self.runner.pad_id, dtype=torch.long)
        zero_mask = None
        if any(job.replaced is not None for job, _, _ in pieces):
            zero_mask = torch.zeros((rows, width), dtype=torch.bool)
        at = 0
        for job, start, stop in pieces:
            cols = self._columns(width, job.length)
            ids[at : at + stop - start, cols] = torch.from_numpy(job.ids[start:stop])
            if zero_mask is not None and job.replaced is not None:
                zero_mask[at : at + stop - start, cols] = torch.from_numpy(job.replaced[start:stop])
            at += stop - start
        device = self.runner.device
        with torch.inference_mode():
            ids_d = ids.to(device, non_blocking=True)
            att_d = attention.to(device, non_blocking=True)
            embeds = None
            if zero_mask is not None:
                embeds = self.runner.embed(ids_d)
                embeds = embeds.masked_fill(zero_mask.to(device).unsqueeze(-1), 0.0)
            keep = max(job.keep for job, _, _ in pieces)
            if keep:
                outputs = self._token_scores(pieces, ids_d, att_d, embeds, keep)
            else:
                logits = self.runner.logits(ids_d, att_d, embeds)
                at = 0
                outputs = []
                for job, start, stop in pieces:
                    scores = apply_mode(logits[at : at + stop - start], job.mode)
                    outputs.append(scores[:, torch.from_numpy(job.targets).to(device)])
                    at += stop - start
            return [o.double().cpu().numpy() for o in outputs]

    def _token_scores(
        self,
        pieces: list[tuple[ForwardJob, int, int]],
        ids: torch.Tensor,
        attention: torch.Tensor,
        embeds: torch.Tensor | None,
        keep: int,
    ) -> list[torch.Tensor]:
        """Causal LMs: each job's `(rows, t)` target-token scores from the `(b, keep, V)` logits
        of the batch's last positions (rows are left-padded: a job's positions are the same
        distance from the end in all its rows). Only these scores leave the batch."""
        token_logits = getattr(self.runner, "token_logits", None)
        if token_logits is None:
            raise RuntimeError("the model's runner has no next-token logits")
        logits = token_logits(ids, attention, embeds, keep)
        device = logits.device
        at = 0
        outputs = []
        for job, start, stop in pieces:
            assert job.positions is not None
            n = stop - start
            cols = torch.from_numpy(keep - (job.length - job.positions)).to(device)
            scores = apply_mode(logits[at : at + n, cols], job.mode)  # (n, t, V)
            index = torch.from_numpy(job.targets).to(device).view(1, -1, 1).expand(n, -1, 1)
            outputs.append(scores.gather(2, index)[..., 0])
            del scores
            at += n
        return outputs

    def _run_gradient(self, pieces: list[tuple[GradientJob, int, int]]) -> None:
        width, attention = self._pad(pieces)
        rows = attention.shape[0]
        device = self.runner.device
        first = pieces[0][0].embeds
        embeds = torch.zeros((rows, width, first.shape[-1]), dtype=first.dtype, device=device)
        targets = torch.empty(rows, dtype=torch.long)
        modes = []
        at = 0
        for job, start, stop in pieces:
            cols = self._columns(width, job.length)
            embeds[at : at + stop - start, cols] = job.points(start, stop).to(device)
            targets[at : at + stop - start] = torch.from_numpy(job.targets[start:stop])
            modes.append((at, at + stop - start, job.mode))
            at += stop - start
        keep = max(job.keep for job, _, _ in pieces)
        columns = None
        if keep:
            # Causal LMs: row i is scored at its own position, `keep - (length - position)`
            # among the batch's last `keep` positions (rows are left-padded).
            columns = torch.cat(
                [
                    torch.from_numpy(keep - (job.length - job.positions[start:stop]))
                    for job, start, stop in pieces
                    if job.positions is not None
                ]
            ).to(device)
        embeds.requires_grad_(True)
        with torch.enable_grad():
            no_ids = torch.zeros((rows, width), dtype=torch.long, device=device)
            if columns is not None:
                token_logits = getattr(self.runner, "token_logits", None)
                if token_logits is None:
                    raise RuntimeError("the model's runner has no next-token logits")
                kept = token_logits(no_ids, attention.to(device), embeds, keep)
                logits = kept[torch.arange(rows, device=device), columns]
            else:
                logits = self.runner.logits(no_ids, attention.to(device), embeds)
            picked = []
            for lo, hi, mode in modes:
                scored = apply_mode(logits[lo:hi], mode)
                picked.append(scored.gather(1, targets[lo:hi].to(device).unsqueeze(1))[:, 0])
            score = torch.cat(picked)
            (grads,) = torch.autograd.grad(score.sum(), embeds)
        grads_host = grads.float().cpu()
        score_host = score.detach().double().cpu().numpy()
        at = 0
        for job, start, stop in pieces:
            if job._scores is None:
                shape = (job.n_rows, *job.embeds.shape[1:]) if job.accumulate is None else (0,)
                job._grads = torch.empty(shape, dtype=torch.float32)
                job._scores = np.empty(job.n_rows, dtype=np.float64)
            n = stop - start
            piece = grads_host[at : at + n, self._columns(width, job.length)]
            if job.accumulate is not None:
                job.accumulate(start, stop, piece)
            else:
                assert job._grads is not None
                job._grads[start:stop] = piece
            job._scores[start:stop] = score_host[at : at + n]
            at += n
            if self._rows_done(job, n):
                assert job._grads is not None
                job.future.set_result((job._grads, job._scores))

    def _run_activation(self, pieces: list[tuple[ActivationJob, int, int]]) -> None:
        """One padded forward for the batch's inputs, hooks on the union of their split points;
        each job gets its own rows, cut on the device before the copy to the host."""
        width, attention = self._pad(pieces)
        rows = attention.shape[0]
        ids = torch.full((rows, width), self.runner.pad_id, dtype=torch.long)
        real = torch.zeros((rows, width), dtype=torch.bool)
        head_pos = torch.empty(rows, dtype=torch.long)
        starts = []  # each job's first row in the flattened real positions
        n_real = 0
        for at, (job, _, _) in enumerate(pieces):
            cols = self._columns(width, job.length)
            ids[at, cols] = torch.from_numpy(job.ids)
            real[at, cols] = True
            # Left-padded runners' heads read the last token; the others, the first.
            head_pos[at] = cols.stop - 1 if self.runner.padding_side == "left" else cols.start
            starts.append(n_real)
            n_real += job.length
        names = sorted({name for job, _, _ in pieces for name in job.split_points})
        token_dim = {
            name: tok
            for job, _, _ in pieces
            for name, tok in zip(job.split_points, job.token_dim, strict=True)
        }
        selections = {
            (name, job.select if tok else "whole")
            for job, _, _ in pieces
            for name, tok in zip(job.split_points, job.token_dim, strict=True)
        }
        with_logits = any(job.logits for job, _, _ in pieces)
        device = self.runner.device
        host: dict[tuple[str, str], NDArray[np.float32]] = {}
        with torch.inference_mode():
            captured, logits = self.runner.capture(
                ids.to(device, non_blocking=True),
                attention.to(device, non_blocking=True),
                names,
                with_logits,
            )
            for name, how in sorted(selections):
                t = captured[name]
                if token_dim[name] and (t.dim() < 2 or t.shape[1] != width):
                    raise RuntimeError(
                        f"split point {name} has shape {list(t.shape)}: no token dimension of "
                        f"{width} in second place"
                    )
                if how == "all":
                    picked = t[real.to(device)]
                elif how == "head":
                    picked = t[torch.arange(rows, device=device), head_pos.to(device)]
                else:
                    picked = t
                host[(name, how)] = picked.float().cpu().numpy()
            logits_host = logits.float().cpu().numpy() if logits is not None else None
        for at, (job, _, _) in enumerate(pieces):
            values = []
            for name, tok in zip(job.split_points, job.token_dim, strict=True):
                if not tok:
                    values.append(host[(name, "whole")][at : at + 1])
                elif job.select == "head":
                    values.append(host[(name, "head")][at : at + 1])
                else:
                    values.append(host[(name, "all")][starts[at] : starts[at] + job.length])
            job_logits = logits_host[at] if job.logits and logits_host is not None else None
            if self._rows_done(job, 1):
                job.future.set_result(ActivationResult(values, job_logits))

    def _run_head(self, pieces: list[tuple[HeadJob, int, int]]) -> None:
        """The classification head alone on the batch's rows."""
        x = torch.cat([torch.from_numpy(job.inputs[start:stop]) for job, start, stop in pieces])
        self.stats.batches += 1
        self.stats.rows += int(x.shape[0])
        with torch.inference_mode():
            out = self.runner.run_head(x).float().cpu().numpy()
        at = 0
        for job, start, stop in pieces:
            n = stop - start
            if job._out is None:
                job._out = np.empty((job.n_rows, out.shape[1]), dtype=np.float32)
            job._out[start:stop] = out[at : at + n]
            at += n
            if self._rows_done(job, n):
                job.future.set_result(job._out)

    def _run_generate(self, jobs: list[GenerateJob]) -> None:
        """Continues prompts together (causal LMs' own continuations, when no target is given)."""
        generate = getattr(self.runner, "generate", None)
        if generate is None:
            raise RuntimeError("the model cannot generate")
        self.stats.batches += 1
        self.stats.rows += len(jobs)
        done = [0] * len(jobs)

        def on_token(i: int) -> None:
            done[i] += 1
            callback = jobs[i].on_rows_done
            if callback is not None:
                callback(1)

        def is_cancelled(i: int) -> bool:
            check = jobs[i].is_cancelled
            return check is not None and check()

        first = jobs[0]
        results: list[list[int] | None] = generate(
            [torch.from_numpy(job.prompt) for job in jobs],
            first.options,
            set(first.stop_ids),
            on_token,
            is_cancelled,
        )
        for i, (job, tokens) in enumerate(zip(jobs, results, strict=True)):
            job._rows_done = 1
            if job.future.done():
                continue
            if tokens is None:
                job.future.set_exception(Cancelled("request cancelled"))
                continue
            left = job.options.max_new_tokens - done[i]
            if left > 0 and job.on_rows_done is not None:
                job.on_rows_done(left)
            job.future.set_result(tokens)

    @staticmethod
    def _rows_done(job: Job, n: int) -> bool:
        """Counts `n` more rows of `job`; True when its result is complete and still wanted."""
        job._rows_done += n
        if job.on_rows_done is not None:
            job.on_rows_done(n)
        return job._rows_done >= job.n_rows and not job.future.done()

    def _fail_request(self, job: Job, exc: Exception) -> None:
        """Fails `job` and every queued job of the same request with `exc`: the request fails
        as a whole, so the rest of its work would be wasted (its rows in the running batch are
        skipped too, their futures being done)."""
        self.stats.failed_jobs += 1
        with self._cond:
            siblings = [other for other in self._pending if other._key is job._key]
            self.stats.dropped_jobs += len(siblings)
            self.stats.dropped_rows += sum(other.n_rows - other._next_row for other in siblings)
        self._fail_jobs([job, *siblings], exc)

    def _fail_jobs(self, jobs: Iterable[Job], exc: Exception) -> None:
        with self._cond:
            for job in jobs:
                if job in self._pending:
                    self._pending.remove(job)
                    self._queued_rows -= job.n_rows - job._next_row
                if not job.future.done():
                    job.future.set_exception(exc)
