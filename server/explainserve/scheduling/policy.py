"""Which rows go in the worker's next batch: the batching policy of `scheduling.worker`.

The lead request (priority first, then the one that led a batch least recently), the rows that
may share its batch (same kind, not isolated, close in length), max-min fair shares of the
batch's tokens between requests, and the batch's size: its kind's token budget, under the cap
learnt from out-of-memory errors, the time bound from the cost model (longer for requests under
way than for a round's first batch: `LONG_BATCH`, `FIRST_FILL`) and the measured
throughput-optimal size (`scheduling.cost`), or an explicit `batch_tokens`.
`BatchPolicy` is the part of `Worker` that decides; the worker queues, runs and recovers.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from explainserve.scheduling.cost import CostModel, Rate, ThroughputModel
from explainserve.scheduling.interfaces import Observer, Runner
from explainserve.scheduling.jobs import Job, Kind, Pieces
from explainserve.scheduling.options import WorkerOptions
from explainserve.vocabulary import Priority

#: A batch of the worker: row ranges of jobs of one kind.
Batch = Pieces[Job[Any]]


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


#: Rows of different requests share a batch only while its longest and shortest rows stay within
#: this factor (so those rows' padded / real tokens stay within it too), except a small request's
#: rows (`_length_aware`). Measured on bench/peers.py's 16 texts (12-22 tokens, 8 clients of 2
#: texts each, Occlusion and KernelSHAP rows, batches of 512 and 1024 tokens, the worker on a
#: runner that costs nothing): padded / real tokens 1.28-1.31 with MAX_SHARED_STRETCH alone,
#: 1.04-1.06 at 1.1, 1.01-1.04 at 1.05 (as at 1.0: lengths differ by whole tokens), in 0-3 more
#: batches. Counting a batch's fixed cost as 50 tokens (MiniLM-L6 on this 2-core CPU, one thread,
#: load ~2: 1 row of 20 tokens 20 ms, 26 rows 208 ms), 1.05 costs 1-3 % less than 1.1 and 2-6 %
#: less than 1.2 on those four workloads.
MAX_SHARED_PADDING = 1.05


def _length_aware(lead: Job[Any], closest: list[Job[Any]], budget: int) -> list[Job[Any]]:
    """The jobs of `closest` (same kind as `lead`, closest in length first) that may share its
    batch, length-aware: a shared batch pads every row to its longest, so

    - other requests' jobs join only while the lengths of the lead job and of those joining stay
      within `MAX_SHARED_PADDING` of each other (closest first); the others lead batches of
      their own, where rows of their length join them (each request leads in turn, `_lead`);
    - a small request (its rows, at the widest candidate's length, within an equal split of the
      budget between the candidate requests: fair shares meet it in full) joins whole whatever
      its length (within `MAX_SHARED_STRETCH`): it completes in this batch rather than waiting
      for one it leads (issue 12's latency of small requests beside huge ones);
    - the lead request's own other jobs join only within the same window while other requests
      share the batch, and all of them (closest first, as in a batch of its own) when none does.
    """
    requests: dict[object, list[Job[Any]]] = {lead._key: []}
    for job in closest:
        requests.setdefault(job._key, []).append(job)
    width = max(job.length for job in [lead, *closest])
    split = budget // len(requests)
    small = {
        key
        for key, jobs in requests.items()
        if key is not lead._key and sum(j.rows_left for j in jobs) * width <= split
    }
    lo = hi = lead.length
    kept = []
    for job in closest:
        if job._key in small:
            kept.append(job)
        elif max(hi, job.length) <= MAX_SHARED_PADDING * min(lo, job.length):
            lo, hi = min(lo, job.length), max(hi, job.length)
            kept.append(job)
    if all(job._key is lead._key for job in kept):
        return requests[lead._key]
    return kept


#: Priorities in the order they are served.
_RANK: dict[Priority, int] = {"interactive": 0, "batch": 1}

#: A batch's time cap (tokens) stays while the cost model's estimate is within these factors of
#: it, so batch sizes do not move with every refit (a new cap is 1 to 2^(1/4) below its estimate).
CAP_KEEP = (0.85, 1.5)

#: `WorkerOptions.max_batch_ms` when unset: on a CPU, and on an accelerator (bench/RESULTS.md).
DEFAULT_MAX_BATCH_MS = {"cpu": 100.0, "accelerator": 30.0}

#: How `max_batch_ms` (B) is spent. A round of a request (the rows of one submission) that
#: arrives while a batch runs waits for that batch, then runs in a batch it leads, which others'
#: rows fill; issue 12 promises it at most 2 B more than alone. So:
#:
#: - a batch that takes the first rows of a waiting round (a request in `_waiting`) holds that
#:   round's rows up to B in all, and others' rows only up to `FIRST_FILL` x B of time beyond
#:   them (`_first_rows_cap`): at most 0.5 B more than the round alone;
#: - every other batch (each request in it has had rows run this round) holds up to
#:   `LONG_BATCH` x B (`time_cap`): an arriving round waits at most 1.5 B for it.
#:
#: 1.5 B + 0.5 B = 2 B, the promise, while requests already under way amortise a batch's fixed
#: cost over more rows: on the 2-core CPU a MiniLM gradient batch costs ~40 ms + ~15 ms per
#: 20-token row, so a 100 ms bound held 3-5 rows (26.5 ms per row, Integrated Gradients 0.81x
#: Interpreto's best) and 150 ms holds 7-8 (1.35-1.42x; bench/RESULTS.md, issue 17).
LONG_BATCH = 1.5
FIRST_FILL = 0.5


@dataclass(frozen=True)
class KindSizes:
    """A job kind's batch sizes in tokens: the cap of shared batches now (the least of the
    bounds), the memory bound, the time bound (0: none yet), the measured throughput-optimal
    size (0: nothing measured) and the measured rates by size class."""

    kind: Kind
    cap: int
    memory_bound: int
    time_bound: int
    optimum: int
    rates: list[Rate]


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


class BatchPolicy:
    """The worker's choice of each batch. Its state is the worker's (declared here, set by
    `Worker.__init__`); every method runs on the worker thread with the worker's lock held."""

    runner: Runner
    options: WorkerOptions
    observer: Observer | None
    cost: CostModel
    throughput: ThroughputModel
    max_batch_seconds: float | None
    _pending: deque[Job[Any]]
    _queued_rows: int
    _batch_seq: int
    _last_lead: dict[object, int]
    _token_cap: dict[Kind, int]
    _time_cap: dict[Kind, int]
    _waiting: dict[object, float]
    _cut_cap: int | None

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

    def _batch_tokens(self, lead: Job[Any], *, explore: bool) -> int:
        """The tokens a batch led by `lead` may hold: its kind's token budget, under the cap
        learnt from out-of-memory errors and, unless `lead` is isolated, the shared caps
        (`_shared_cap`, exploring or not)."""
        budget = self._budget(lead)
        budget = min(budget, self._token_cap.get(lead.kind, budget))
        if not lead.isolated:
            budget = self._shared_cap(lead.kind, budget, explore=explore)
        return budget

    def _shared_cap(self, kind: Kind, bound: int, *, explore: bool) -> int:
        """The tokens a batch of `kind` shared between requests may hold under `bound` (the
        memory bound): the least of it, the time bound, and the explicit `batch_tokens` or else
        (with `calibrate`) the measured throughput optimum.

        `explore`, for the batch being cut (worker thread only: it counts batches): the time
        bound is refitted (`time_cap`) and one batch in `EXPLORE_EVERY` tries a neighbouring
        size (`ThroughputModel.next_cap`). Without it, no side effect (no exploration, no
        refit of the time cap): what a shared batch of `kind` would hold now, for the wait for
        company (a batch full at it need not wait) and `batch_sizes` (any thread)."""
        time_cap = self.time_cap(kind) if explore else self._time_cap.get(kind)
        cap = min(bound, time_cap or bound)
        if self.options.batch_tokens > 0:
            return min(cap, self.options.batch_tokens)
        if self.options.calibrate:
            optimum = self.throughput.next_cap(kind) if explore else self.throughput.cap(kind)
            return min(cap, optimum or cap)
        return cap

    def batch_sizes(self) -> list[KindSizes]:
        """Per kind measured or bounded so far (forward and gradient always), its batch bounds
        and the tokens a shared batch may hold now (no exploration). Any thread."""
        budgets: dict[Kind, int] = {
            "forward": self.options.token_budget,
            "gradient": self.options.gradient_token_budget,
        }
        # Copies: the worker thread writes these while GetModel or metrics read them.
        memory, time_caps = dict(self._token_cap), dict(self._time_cap)
        optimum, rates = self.throughput.caps(), self.throughput.rates()
        for kind in [*optimum, *time_caps, *memory]:
            budgets.setdefault(kind, self.options.token_budget)
        sizes = []
        for kind, budget in budgets.items():
            bound = min(budget, memory.get(kind, budget))
            cap = self._shared_cap(kind, bound, explore=False)
            sizes.append(
                KindSizes(
                    kind,
                    cap,
                    bound,
                    time_caps.get(kind, 0),
                    optimum.get(kind, 0),
                    rates.get(kind, []),
                )
            )
        return sizes

    def batch_caps(self) -> dict[Kind, int]:
        """Per kind, the tokens a shared batch may hold now (`batch_sizes`)."""
        return {s.kind: s.cap for s in self.batch_sizes()}

    def time_caps(self) -> dict[Kind, int]:
        """Per kind, the tokens a batch may hold under the time bound, as last computed."""
        return dict(self._time_cap)

    def longest_batch_seconds(self, kind: Kind) -> float | None:
        """The longest a batch of `kind` may take (None: no time bound): `LONG_BATCH` x
        `max_batch_seconds`, that of a batch of requests under way; a generation batch takes
        whole requests, each one's first rows, so `max_batch_seconds`."""
        if self.max_batch_seconds is None:
            return None
        return self.max_batch_seconds * (1.0 if kind == "generate" else LONG_BATCH)

    def time_cap(self, kind: Kind) -> int | None:
        """The tokens a batch of `kind` may hold to take at most `LONG_BATCH` x
        `max_batch_seconds` (a batch of requests under way; generation: `max_batch_seconds`),
        from the cost model (None: no bound, or too few batches measured yet). Worker thread
        only."""
        fit = self.cost.fit(kind)
        longest = self.longest_batch_seconds(kind)
        if longest is None or fit is None:
            return None
        estimate = min(fit.tokens_within(longest), 1 << 40)
        cap = self._time_cap.get(kind)
        if cap is None or not cap * CAP_KEEP[0] <= estimate < cap * CAP_KEEP[1]:
            # A step of 2^(1/4) at or below the estimate: 84-100 % of the bound's tokens.
            cap = min(estimate, max(1, int(2 ** (math.floor(4 * math.log2(estimate)) / 4))))
            self._time_cap[kind] = cap
        return cap

    def _first_rows_cap(self, kind: Kind, own: int) -> int | None:
        """The tokens of a batch that takes the first rows of a waiting round, `own` tokens of
        rows of such rounds among its candidates: those rows, up to `max_batch_seconds` in all,
        and others' up to `FIRST_FILL` x `max_batch_seconds` beyond them (None: no time bound
        yet). Not stepped like `time_cap`: it follows the round's size."""
        fit = self.cost.fit(kind)
        if self.max_batch_seconds is None or fit is None or fit.slope <= 0:
            return None
        fill = int(FIRST_FILL * self.max_batch_seconds / fit.slope)
        return max(1, min(fit.tokens_within(self.max_batch_seconds), own + fill))

    def _note_start(self, job: Job[Any]) -> None:
        """Notes that `job`'s first rows are taken: its request's round is no longer waiting
        (`_waiting`), and the observer hears both waits."""
        since = self._waiting.pop(job._key, None)
        if self.observer is None:
            return
        now = time.monotonic()
        self.observer.queued(job.kind, now - job._enqueued)
        if since is not None:
            self.observer.request_queued(job.priority, now - since)

    def _take_batch(self) -> Batch:
        """Pops row ranges `(job, start, stop)` of one kind under the token budget.

        The lead job's kind and rows come first (see the class docstring); the rest of the
        batch is filled from the jobs of the same kind closest in length to it, to limit padding:
        other requests' rows only within `MAX_SHARED_PADDING` of its length, or a small
        request's (`_length_aware`); activation batches also cap it (`activation_max_padding`).
        A job whose rows are all taken leaves the queue. Called with the lock held.
        """
        lead = self._lead()
        kind = lead.kind
        if kind == "generate":
            self._cut_cap = None
            return self._take_generation(lead)
        budget = self._batch_tokens(lead, explore=True)
        same_kind = [
            job
            for job in self._pending
            if job.kind == kind
            and job is not lead
            and _may_share(lead, job)
            and job.may_join(lead)
            and (job._key is lead._key or _close_in_length(lead, job))
        ]
        closest = sorted(same_kind, key=lambda j: abs(j.length - lead.length))
        if any(job._key is not lead._key for job in closest):
            closest = _length_aware(lead, closest, budget)
        requests: dict[object, list[Job[Any]]] = {lead._key: [lead]}
        for job in closest:
            requests.setdefault(job._key, []).append(job)
        # Rows are counted at the widest candidate's length, which a shared batch pads them to.
        width = max(job.length for job in [lead, *closest])
        demands = {key: sum(j.rows_left for j in jobs) * width for key, jobs in requests.items()}
        first = [key for key in requests if key in self._waiting]
        if first and not lead.isolated:  # the first batch of a round: `FIRST_FILL`
            cap = self._first_rows_cap(kind, sum(demands[key] for key in first))
            budget = min(budget, cap or budget)
        self._cut_cap = None if lead.isolated else budget
        if len(requests) == 1:
            return self._fill(kind, budget, [lead, *closest], None)
        # Several requests share the batch: interactive ones first, each getting a max-min fair
        # share of the tokens (a small request's rows all go in), then the batch-priority ones
        # from what is left; then, if room is left, anyone's rows.
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
            budget = self._shared_cap(lead.kind, budget, explore=True)
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
