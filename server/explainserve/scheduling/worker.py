"""The per-model worker: one thread that owns the model and runs every batch.

Callers (the explain and activations layers) submit jobs (`scheduling.jobs`). The worker queues
them, keyed by request, and packs rows of pending jobs of one kind into batches cut by a token
budget (padding counted), so the perturbations of every input of a request, and of concurrent
requests, share batches; `scheduling.execute` runs each batch. Here: the queue and its bound,
fairness between requests, the batching window, out-of-memory splitting and fault isolation.
Nothing here knows about gRPC or about attribution methods.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from explainserve.errors import Cancelled, ResourceExhausted, Unavailable
from explainserve.scheduling.cost import CostModel
from explainserve.scheduling.execute import Executor, Runner, is_out_of_memory
from explainserve.scheduling.jobs import Job, Kind, Pieces, Priority

log = logging.getLogger(__name__)

#: A batch of the worker: row ranges of jobs of one kind.
Batch = Pieces[Job[Any]]


@dataclass(frozen=True)
class WorkerOptions:
    """Batching, queueing and out-of-memory knobs."""

    #: Rows x padded length of one no-grad batch: the memory bound.
    token_budget: int = 8192
    #: The time one batch may take at most (milliseconds): batches are also cut by what they
    #: are predicted to cost, from the measured cost of past batches of their kind
    #: (`scheduling.cost`), so that rows of a request that arrives behind a huge one wait for at
    #: most about one batch. None: `DEFAULT_MAX_BATCH_MS` of the model's device; 0: no time
    #: bound. Isolated requests (`RequestTag.isolated`) are cut by tokens only.
    max_batch_ms: float | None = None
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


def _may_share(lead: Job[Any], job: Job[Any]) -> bool:
    """Whether `job`'s rows may join a batch led by `lead`: always within a request; across
    requests unless one of them is isolated."""
    return job._key is lead._key or not (lead.isolated or job.isolated)


#: Rows of other requests join a batch only if their length is within this factor of the lead's:
#: short rows padded to long ones cost the long ones' time, and long rows in a batch of short
#: ones make the short request wait for them (its batch would take a long one's time).
MAX_SHARED_STRETCH = 2.0


def _close_in_length(lead: Job[Any], job: Job[Any]) -> bool:
    longer, shorter = max(lead.length, job.length), min(lead.length, job.length)
    return longer <= MAX_SHARED_STRETCH * shorter


#: Priorities in the order they are served.
_RANK: dict[Priority, int] = {"interactive": 0, "batch": 1}

#: A batch's time cap (tokens) stays while the cost model's estimate is within these factors of
#: it, so batch sizes do not move with every refit (a new cap is 1 to 2^(1/4) below its estimate).
CAP_KEEP = (0.85, 1.5)

#: `WorkerOptions.max_batch_ms` when unset: on a CPU, and on an accelerator (bench/RESULTS.md).
DEFAULT_MAX_BATCH_MS = {"cpu": 100.0, "accelerator": 30.0}


def fair_shares(demands: dict[object, int], budget: int) -> dict[object, int]:
    """Max-min fair shares of `budget` tokens: every demand below an equal split is met in full
    and what it leaves is split again among the others (water filling)."""
    shares: dict[object, int] = {}
    left = budget
    order = sorted(demands, key=lambda k: demands[k])
    for i, key in enumerate(order):
        share = min(demands[key], left // (len(order) - i))
        shares[key] = share
        left -= share
    return shares


class Observer(Protocol):
    """Receives the worker's timings (metrics); called on the worker thread, must be quick."""

    def queued(self, kind: str, seconds: float) -> None:
        """A job's first rows start running `seconds` after it was queued."""
        ...

    def request_queued(self, priority: str, seconds: float) -> None:
        """A request's submission starts running `seconds` after it was queued, when nothing of
        that request was waiting before it."""
        ...

    def batch(
        self, kind: str, rows: int, padded: int, real: int, budget: int, seconds: float
    ) -> None:
        """A batch of `rows` rows, `padded` tokens (padding counted) of which `real` are
        tokens of the inputs, under a budget of `budget` tokens, ran in `seconds`."""
        ...


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
        self,
        runner: Runner,
        options: WorkerOptions | None = None,
        name: str = "",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.runner = runner
        self.name = name
        self.options = options or WorkerOptions()
        self.stats = WorkerStats()
        #: Called with every batch (and every retried part of one) before it runs.
        self.fault_hook: Callable[[Sequence[tuple[Job[Any], int, int]]], None] | None = None
        #: Told about queueing and batch timings (metrics), when set.
        self.observer: Observer | None = None
        self._pending: deque[Job[Any]] = deque()
        self._queued_rows = 0
        self._seq = 0
        self._batch_seq = 0
        self._last_lead: dict[object, int] = {}
        #: Padded tokens per batch that fitted after an out-of-memory error, per job kind.
        self._token_cap: dict[Kind, int] = {}
        self._at_cap: dict[Kind, int] = {}
        self._executor = Executor(runner, self.stats, reuse=self.options.reuse)
        #: Times batches (seconds); tests give a clock of their own.
        self.clock = clock
        #: What batches cost, learnt from their timings: cuts batches at `max_batch_ms`.
        self.cost = CostModel()
        ms = self.options.max_batch_ms
        if ms is None:
            ms = DEFAULT_MAX_BATCH_MS["cpu" if runner.device.type == "cpu" else "accelerator"]
        #: The time bound of a batch in seconds; None: none.
        self.max_batch_seconds = ms / 1000.0 if ms > 0 else None
        #: Per kind, the tokens of a batch under the time bound (a power of two, changed only
        #: when the estimate moves well away from it, so batches do not change at every fit).
        self._time_cap: dict[Kind, int] = {}
        #: Requests with a submission waiting, and since when (the request queue-wait metric).
        self._waiting: dict[object, float] = {}
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

    def submit(self, job: Job[Any]) -> None:
        """Queues a job; its `future` resolves when all its rows are done."""
        self.submit_all([job])

    def submit_all(self, jobs: Iterable[Job[Any]]) -> None:
        """Queues jobs together, so the next batch can already mix them (a request's inputs
        are batched the same way whenever the worker is otherwise idle).

        Raises ResourceExhausted, queueing nothing, when the rows would go beyond the queue
        bound, and Unavailable once the worker is closing.
        """
        queued = []
        for job in jobs:
            if job.n_rows == 0:
                job.finish_empty()
            else:
                queued.append(job)
        rows = sum(job.n_rows for job in queued)
        with self._cond:
            self._check_room(rows)
            submission = object()
            now = time.monotonic()
            for job in queued:
                job._key = job.is_cancelled if job.is_cancelled is not None else submission
                job._seq = self._seq
                job._enqueued = now
                self._seq += 1
                self._waiting.setdefault(job._key, now)
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
            started = self.clock()
            self._execute(batch)
            self.stats.busy_seconds += self.clock() - started

    def _wait_for_company(self) -> None:
        """Lets the oldest job wait up to `batch_wait_seconds` (since it was queued) for others
        to share its batch, unless a full batch is already waiting. Called with the lock held."""
        wait = self.options.batch_wait_seconds
        if wait <= 0:
            return
        deadline = min(job._enqueued for job in self._pending) + wait
        while not self._closed:
            tokens = sum(job.rows_left * job.length for job in self._pending)
            left = deadline - time.monotonic()
            if (
                left <= 0
                or tokens >= self.options.token_budget
                or self._queued_rows >= self.options.max_batch_rows
            ):
                return
            self._cond.wait(left)

    def _drop_cancelled(self) -> None:
        keep: deque[Job[Any]] = deque()
        for job in self._pending:
            left = job.rows_left
            if self._cancel_rows(job, left):
                self._queued_rows -= left
            else:
                keep.append(job)
        self._pending = keep

    def _cancel_piece(self, job: Job[Any], start: int, stop: int) -> bool:
        """`_cancel_rows` for the rows `start..stop` of `job`, taken from the queue for a batch."""
        return self._cancel_rows(job, stop - start)

    def _cancel_rows(self, job: Job[Any], rows: int) -> bool:
        """Fails `job` with Cancelled when its request is cancelled (True); its `rows` not run
        count as cancelled rows."""
        if job.is_cancelled is None or not job.is_cancelled():
            return False
        self.stats.cancelled_rows += rows
        if not job.future.done():
            self.stats.cancelled_jobs += 1
            job.future.set_exception(Cancelled("request cancelled"))
        return True

    def _lead(self) -> Job[Any]:
        """The oldest job of the request that led a batch least recently, among the requests of
        the first priority that has work waiting."""
        first: dict[object, Job[Any]] = {}
        for job in self._pending:
            first.setdefault(job._key, job)
        self._last_lead = {k: v for k, v in self._last_lead.items() if k in first}
        self._waiting = {k: v for k, v in self._waiting.items() if k in first}
        key = min(
            first,
            key=lambda k: (
                _RANK[first[k].priority],
                self._last_lead.get(k, -1),
                first[k]._seq,
            ),
        )
        self._batch_seq += 1
        self._last_lead[key] = self._batch_seq
        return first[key]

    def _budget(self, job: Job[Any]) -> int:
        """The token budget of a batch of `job`'s kind (before any out-of-memory cap)."""
        if job.backward:
            return self.options.gradient_token_budget
        return self.options.token_budget

    def _batch_tokens(self, lead: Job[Any]) -> int:
        """The tokens a batch led by `lead` may hold: its kind's token budget, under the cap
        learnt from out-of-memory errors and, unless `lead` is isolated, the time bound."""
        budget = self._budget(lead)
        budget = min(budget, self._token_cap.get(lead.kind, budget))
        if not lead.isolated:
            budget = min(budget, self.time_cap(lead.kind) or budget)
        return budget

    def time_caps(self) -> dict[Kind, int]:
        """Per kind, the tokens a batch may hold under the time bound, as last computed."""
        return dict(self._time_cap)

    def time_cap(self, kind: Kind) -> int | None:
        """The tokens a batch of `kind` may hold to take at most `max_batch_seconds`, from the
        cost model (None: no bound, or too few batches measured yet). Worker thread only."""
        fit = self.cost.fit(kind)
        if self.max_batch_seconds is None or fit is None:
            return None
        estimate = min(fit.tokens_within(self.max_batch_seconds), 1 << 40)
        cap = self._time_cap.get(kind)
        if cap is None or not cap * CAP_KEEP[0] <= estimate < cap * CAP_KEEP[1]:
            # A step of 2^(1/4) at or below the estimate: 84-100 % of the bound's tokens.
            cap = min(estimate, max(1, int(2 ** (math.floor(4 * math.log2(estimate)) / 4))))
            self._time_cap[kind] = cap
        return cap

    def _note_start(self, job: Job[Any]) -> None:
        """Tells the observer that `job`'s first rows are taken (and its request's, if so)."""
        if self.observer is None:
            return
        now = time.monotonic()
        self.observer.queued(job.kind, now - job._enqueued)
        since = self._waiting.pop(job._key, None)
        if since is not None:
            self.observer.request_queued(job.priority, now - since)

    def _take_batch(self) -> Batch:
        """Pops row ranges `(job, start, stop)` of one kind under the token budget.

        The lead job's kind and rows come first (see the class docstring); the rest of the
        batch is filled from the jobs of the same kind closest in length to it, to limit padding
        (activation batches also cap it: `activation_max_padding`). A job whose rows are all
        taken leaves the queue. Called with the lock held.
        """
        lead = self._lead()
        kind = lead.kind
        if kind == "generate":
            return self._take_generation(lead)
        budget = self._batch_tokens(lead)
        same_kind = [
            job
            for job in self._pending
            if job.kind == kind
            and job is not lead
            and _may_share(lead, job)
            and (job._key is lead._key or _close_in_length(lead, job))
        ]
        closest = sorted(same_kind, key=lambda j: abs(j.length - lead.length))
        requests: dict[object, list[Job[Any]]] = {lead._key: [lead]}
        for job in closest:
            requests.setdefault(job._key, []).append(job)
        if len(requests) == 1:
            return self._fill(kind, budget, [lead, *closest], None)
        # Several requests share the batch: interactive ones first, each getting a max-min fair
        # share of the tokens (a small request's rows all go in), then the batch-priority ones
        # from what is left; then, if room is left, anyone's rows. Rows are counted at the
        # widest candidate's length, which a shared batch pads them to.
        width = max(job.length for job in [lead, *closest])
        demands = {key: sum(j.rows_left for j in jobs) * width for key, jobs in requests.items()}
        shares: dict[object, int] = {}
        left = budget
        for rank in sorted(set(_RANK.values())):
            tier = {k: d for k, d in demands.items() if _RANK[requests[k][0].priority] == rank}
            shares |= fair_shares(tier, left)
            left -= sum(shares[k] for k in tier)
        order = sorted(requests, key=lambda k: (k is not lead._key, _RANK[requests[k][0].priority]))
        candidates = [job for key in order for job in requests[key]]
        return self._fill(kind, budget, candidates, (shares, width))

    def _fill(
        self,
        kind: Kind,
        budget: int,
        candidates: list[Job[Any]],
        shares: tuple[dict[object, int], int] | None,
    ) -> Batch:
        """Takes rows of `candidates`, in order, under `budget` padded tokens, each request
        taking at most its share of tokens (`shares`: per request, and the width its rows are
        counted at) and then, with room left, any rows. Called with the lock held."""
        max_padding = self.options.activation_max_padding if kind == "activation" else None
        taken: dict[object, int] = {}
        placed: dict[int, int] = {}  # a job's piece in the batch, by id(job)
        batch: Batch = []
        rows = 0
        width = 0
        real = 0
        keep = 0
        for limit in [shares, None] if shares is not None else [None]:
            for job in candidates:
                if job.rows_left == 0:
                    continue
                new_width = max(width, job.length)
                new_keep = max(keep, job.keep)
                fit = min(
                    budget // max(new_width, 1) - rows,
                    self.options.max_batch_rows - rows,
                    job.rows_left,
                )
                if new_keep:  # causal LMs: the batch's vocabulary-sized logits are bounded too
                    vocab = max(self.runner.vocab_size, 1)
                    fit = min(fit, self.options.logits_budget // (new_keep * vocab) - rows)
                if limit is not None:  # its request's fair share
                    share, counted = limit
                    fit = min(fit, (share[job._key] - taken.get(job._key, 0)) // counted)
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
                if start == 0:
                    self._note_start(job)
                job._next_row += fit
                if id(job) in placed:  # the second pass extends the first's piece
                    i = placed[id(job)]
                    batch[i] = (job, batch[i][1], job._next_row)
                else:
                    placed[id(job)] = len(batch)
                    batch.append((job, start, job._next_row))
                rows += fit
                real += fit * job.length
                taken[job._key] = taken.get(job._key, 0) + fit * (limit[1] if limit else 0)
                width = new_width
                self._queued_rows -= fit
                keep = new_keep
                if job._next_row >= job.n_rows:
                    self._pending.remove(job)
                if rows >= self.options.max_batch_rows or rows * width >= budget:
                    return batch
        return batch

    # -- running a batch, with out-of-memory splitting and fault isolation --------------------

    def _execute(self, pieces: Batch) -> None:
        """Runs a batch; never raises. Splits it on out-of-memory, isolates failing jobs."""
        pieces = [p for p in pieces if not p[0].future.done()]  # a failed job's other rows
        # Liveness checked before every batch, the parts of a split or retried one included: a
        # request cancelled meanwhile runs no further batch.
        pieces = [p for p in pieces if not self._cancel_piece(*p)]
        if not pieces:
            return
        cap = self._token_cap.get(pieces[0][0].kind)
        rows = sum(stop - start for _, start, stop in pieces)
        width = max(job.length for job, _, _ in pieces)
        if cap is not None and rows > 1 and rows * width > cap:
            for part in self._split(pieces, max(1, cap // width)):
                self._execute(part)
            return
        started = self.clock()
        try:
            if self.fault_hook is not None:
                self.fault_hook(pieces)
            self._executor.run(pieces)
        except Exception as exc:
            if is_out_of_memory(exc):
                self._on_out_of_memory(pieces, exc)
            elif len({id(job) for job, _, _ in pieces}) > 1:
                # Someone's input breaks the model: find whose, the others still get answers.
                by_job: dict[int, Batch] = {}
                for piece in pieces:
                    by_job.setdefault(id(piece[0]), []).append(piece)
                for part in by_job.values():
                    self._execute(part)
            else:
                job = pieces[0][0]
                log.error("a job of model %s failed", self.name, exc_info=exc)
                self._fail_request(job, exc)
        else:
            seconds = self.clock() - started
            kind = pieces[0][0].kind
            self.cost.observe(kind, rows * max(job.width for job, _, _ in pieces), seconds)
            if self.observer is not None:
                self.observer.batch(
                    kind,
                    rows,
                    rows * width,
                    sum((stop - start) * job.length for job, start, stop in pieces),
                    self._budget(pieces[0][0]),
                    seconds,
                )
            self._note_success(pieces)

    def _on_out_of_memory(self, pieces: Batch, exc: Exception) -> None:
        kind = pieces[0][0].kind
        rows = sum(stop - start for _, start, stop in pieces)
        width = max(job.length for job, _, _ in pieces)
        self._executor.free_cached_memory()
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
    def _split(pieces: Batch, size: int) -> list[Batch]:
        """Consecutive parts of at most `size` rows (a job's range may be cut)."""
        parts: list[Batch] = [[]]
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

    def _note_success(self, pieces: Batch) -> None:
        """Grows an out-of-memory cap back by an eighth after enough batches ran at it."""
        kind = pieces[0][0].kind
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

    def _take_generation(self, lead: Job[Any]) -> Batch:
        """The lead generation job and the others that generate the same way (a request's
        prompts), whole, as many as fit the token budget (prompt width + new tokens per row)."""
        same = [
            job
            for job in self._pending
            if job.kind == lead.kind
            and job is not lead
            and _may_share(lead, job)
            and job.may_join(lead)
        ]
        budget = self.options.token_budget
        if not lead.isolated:
            budget = min(budget, self.time_cap(lead.kind) or budget)
        batch: Batch = []
        width = 0
        for job in [lead, *same]:
            new_width = max(width, job.width)
            rows = len(batch) + 1
            if batch and (rows * new_width > budget or rows > self.options.max_batch_rows):
                break
            self._note_start(job)
            self._pending.remove(job)
            self._queued_rows -= job.rows_left
            job._next_row = job.n_rows
            batch.append((job, 0, job.n_rows))
            width = new_width
        return batch

    def _fail_request(self, job: Job[Any], exc: Exception) -> None:
        """Fails `job` and every queued job of the same request with `exc`: the request fails
        as a whole, so the rest of its work would be wasted (its rows in the running batch are
        skipped too, their futures being done)."""
        self.stats.failed_jobs += 1
        with self._cond:
            siblings = [other for other in self._pending if other._key is job._key]
            self.stats.dropped_jobs += len(siblings)
            self.stats.dropped_rows += sum(other.rows_left for other in siblings)
        self._fail_jobs([job, *siblings], exc)

    def _fail_jobs(self, jobs: Iterable[Job[Any]], exc: Exception) -> None:
        with self._cond:
            for job in jobs:
                if job in self._pending:
                    self._pending.remove(job)
                    self._queued_rows -= job.rows_left
                if not job.future.done():
                    job.future.set_exception(exc)
