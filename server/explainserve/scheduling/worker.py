"""The per-model worker: one thread that owns the model and runs every batch.

Callers (the explain and activations layers) submit jobs (`scheduling.jobs`). The worker queues
them, keyed by request, and packs rows of pending jobs of one kind into batches cut by a token
budget (padding counted), so the perturbations of every input of a request, and of concurrent
requests, share batches; `scheduling.policy` chooses the rows of each batch (fairness,
priority, size) and `scheduling.execute` runs it. Here: the queue and its bound, the batching
window, out-of-memory splitting and fault isolation.
Nothing here knows about gRPC or about attribution methods.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from explainserve import tracing
from explainserve.errors import Cancelled, ResourceExhausted, Unavailable
from explainserve.scheduling import calibration
from explainserve.scheduling.cost import CostModel, ThroughputModel
from explainserve.scheduling.execute import Executor, is_out_of_memory
from explainserve.scheduling.interfaces import Observer, Runner, WorkerStats
from explainserve.scheduling.jobs import CalibrationTag, Job, Kind
from explainserve.scheduling.options import WorkerOptions
from explainserve.scheduling.policy import DEFAULT_MAX_BATCH_MS, Batch, BatchPolicy

log = logging.getLogger(__name__)


class Worker(BatchPolicy):
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
        self._executor = Executor(
            runner,
            self.stats,
            reuse=self.options.reuse,
            read_only=self.options.read_position_only,
            always_prefix=self.options.always_prefix,
        )
        #: Times batches (seconds); tests give a clock of their own.
        self.clock = clock
        #: What batches cost, learnt from their timings: cuts batches at `max_batch_ms`.
        self.cost = CostModel()
        #: Tokens per second by batch size, measured: the throughput-optimal batch size, used
        #: with `options.calibrate` (`calibrate` measures it at warm-up).
        self.throughput = ThroughputModel()
        #: What the last `calibrate` ran and chose (None: never calibrated).
        self.calibration: calibration.Calibration | None = None
        ms = self.options.max_batch_ms
        if ms is None:
            ms = DEFAULT_MAX_BATCH_MS["cpu" if runner.device.type == "cpu" else "accelerator"]
        #: The time bound of a batch in seconds; None: none.
        self.max_batch_seconds = ms / 1000.0 if ms > 0 else None
        #: Per kind, the tokens of a batch under the time bound (a power of two, changed only
        #: when the estimate moves well away from it, so batches do not change at every fit).
        self._time_cap: dict[Kind, int] = {}
        #: The shared cap the last batch taken was cut at (None: isolated, or generation).
        self._cut_cap: int | None = None
        #: Requests with a submission (a round) none of whose rows has run yet, and since when:
        #: the request queue-wait metric, and the cap of their first batch (`policy.FIRST_FILL`).
        self._waiting: dict[object, float] = {}
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        #: Notified when a batch is done (its counters written): `wait_batch_done`.
        self._done = threading.Condition(lock)
        self._running = False
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

    def calibrate(self, sample: Sequence[int]) -> calibration.Calibration:
        """Measures which batch size runs the most tokens per second, on batches of `sample`
        (the token ids of a typical input) within `options.calibration_seconds`
        (`scheduling.calibration`); with `options.calibrate`, shared batches are then cut at
        the best size. Call it at warm-up, from any thread but the worker's; it waits for its
        batches."""
        self.calibration = calibration.calibrate(
            self, sample, self.options.calibration_seconds, self.clock
        )
        return self.calibration

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
                self._running = True
            started = self.clock()
            try:
                self._execute(batch)
            except Exception as exc:
                # `_execute` isolates the model's failures; anything else is a bug in the
                # worker's own bookkeeping. The batch's requests fail with it, and the worker
                # goes on serving: a dead worker thread would leave every later request, and
                # `wait_idle`, waiting forever.
                log.exception("the worker of model %s failed after a batch", self.name)
                self._fail_jobs({id(job): job for job, _, _ in batch}.values(), exc)
            finally:
                self.stats.busy_seconds += self.clock() - started
                with self._cond:
                    self._running = False
                    self._done.notify_all()

    def wait_idle(self) -> None:
        """Waits until no batch runs and none is queued: a job's future resolves inside its
        last batch, before the worker counts that batch (calibration reads the counts)."""
        with self._cond:
            while self._running or self._pending:
                self._done.wait()

    def _wait_for_company(self) -> None:
        """Lets the oldest job wait up to `batch_wait_seconds` (since it was queued) for others
        to share its batch, unless a full batch is already waiting: as many tokens as a shared
        batch of the oldest job's kind holds now (its time bound and measured optimum, not only
        the token budget). Called with the lock held."""
        wait = self.options.batch_wait_seconds
        if wait <= 0:
            return
        oldest = min(self._pending, key=lambda job: job._enqueued)
        deadline = oldest._enqueued + wait
        full = self._budget(oldest)
        if not oldest.isolated:  # the caps as they stand: this batch is not cut yet
            full = self._batch_tokens(oldest, explore=False)
        while not self._closed:
            tokens = sum(job.rows_left * job.length for job in self._pending)
            left = deadline - time.monotonic()
            if left <= 0 or tokens >= full or self._queued_rows >= self.options.max_batch_rows:
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
            padded = rows * max(job.width for job, _, _ in pieces)  # what its cap counts
            # The tokens the batch ran: fewer than rows x width on a causal LM's prefix path.
            tokens = self._executor.ran_tokens or padded
            self.cost.observe(kind, tokens, seconds)
            # A batch that its shared cap cut (one more row of its width would not have fitted)
            # measures that cap, whatever its rows' length makes of its tokens: one 129-token
            # row under a cap of 256 is what the cap 256 gives such rows (`ThroughputModel`).
            cut = self._cut_cap
            at_cap = cut if cut is not None and padded + padded // rows > cut else None
            self.throughput.observe(kind, tokens, seconds, cap=at_cap)
            if isinstance(pieces[0][0].is_cancelled, CalibrationTag):
                self.stats.calibration_batches += 1
                self.stats.calibration_seconds += seconds
            if self.observer is not None:
                self.observer.batch(
                    kind,
                    rows,
                    rows * width,
                    sum((stop - start) * job.length for job, start, stop in pieces),
                    self._budget(pieces[0][0]),
                    seconds,
                )
            # Tracing: queue and batch spans of each request in the batch (explainserve.tracing).
            tracing.batch_ran(pieces, started)
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
