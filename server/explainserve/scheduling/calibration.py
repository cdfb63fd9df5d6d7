"""The warm-up calibration of batch sizes: a few batches of one sample input at doubling sizes,
timed, so that the worker's `ThroughputModel` (`scheduling.cost`) knows which size runs the
most tokens per second on this model, device and dtype before the first client's batch.

Bounded twice: at most `ROUNDS` batches of each size of each kind (forward, and gradient
where the model has it), smallest size first, every size of both kinds once per round (a slow
moment of a shared machine spreads over the sizes rather than falling on one); and no batch
starts that would end past `WorkerOptions.calibration_seconds` (predicted from the batches run
so far): on a slow device the largest sizes are left out, and the online refinement tries them
later if the measured optimum is the largest size calibrated. After the first round, sizes
above the first one whose fastest batch took longer than the longest batch the time bound
allows (`policy.LONG_BATCH` x `max_batch_ms`) are not measured again: shared batches are cut
below them anyway (within a round, only a batch of twice that stops the larger sizes: one slow
moment must not hide them).
The batches are ordinary jobs of an isolated request (cut by the token budget alone, so each
job is one batch of exactly the size asked), counted in `WorkerStats.calibration_batches`.
Every later batch goes on refining the rates (`ThroughputModel.next_cap`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from explainserve.scheduling.cost import ThroughputModel
from explainserve.scheduling.interfaces import Runner, WorkerStats
from explainserve.scheduling.jobs import CalibrationTag, ForwardJob, GradientJob, Job, Kind
from explainserve.scheduling.options import WorkerOptions

log = logging.getLogger(__name__)


class Worker(Protocol):
    """What the calibration needs of the worker it calibrates (`scheduling.worker.Worker`): its
    model, options and counters, submitting a job and waiting for the queue to empty, the time
    bound of a batch and the throughput model its batches feed."""

    @property
    def name(self) -> str:
        """The model's name (logs)."""
        ...

    @property
    def runner(self) -> Runner:
        """The model."""
        ...

    @property
    def options(self) -> WorkerOptions:
        """The token budgets and the row bound the sizes go up to."""
        ...

    @property
    def stats(self) -> WorkerStats:
        """Counts the calibration's batches."""
        ...

    @property
    def throughput(self) -> ThroughputModel:
        """Learns the rates from the batches timed, and chooses the best size."""
        ...

    def submit(self, job: Job[Any]) -> None:
        """Queues one calibration job."""
        ...

    def wait_idle(self) -> None:
        """Waits until every batch has run and been counted."""
        ...

    def longest_batch_seconds(self, kind: Kind) -> float | None:
        """The longest a batch of `kind` may take (None: no time bound)."""
        ...


#: The smallest batch tried (tokens, padding counted); sizes double from it to the memory bound.
SMALLEST_TOKENS = 256
#: Batches of each size (and kind) at most: a size's rate is the median of its batches.
ROUNDS = 3
#: A gradient batch's time predicted from a forward batch's of as many rows (forward +
#: backward, about three forward passes).
GRADIENT_FACTOR = 3.0


@dataclass(frozen=True)
class Calibration:
    """What a calibration ran and chose: `batches` batches in `seconds`; per kind, the tokens
    of the best measured size (`caps`)."""

    batches: int
    seconds: float
    caps: dict[Kind, int]


def sizes(budget: int, length: int, max_rows: int) -> list[int]:
    """Rows per batch of `length`-token rows: doubling tokens from `SMALLEST_TOKENS` (at least
    one row) up to `budget` tokens and `max_rows` rows, the largest size at the bound."""
    bound = max(1, min(max_rows, budget // length))
    rows: list[int] = []
    tokens = SMALLEST_TOKENS
    while not rows or rows[-1] < bound:
        r = min(max(1, tokens // length), bound)
        if not rows or r > rows[-1]:
            rows.append(r)
        tokens *= 2
    return rows


def _forward_job(worker: Worker, ids: np.ndarray[Any, Any], rows: int) -> Job[Any]:
    n = len(ids)
    causal = worker.runner.vocab_size > 0
    return ForwardJob(
        ids=np.repeat(ids[None], rows, axis=0),
        attention=np.ones(n, dtype=np.int64),
        targets=np.zeros(1, dtype=np.int64),
        positions=np.array([n - 1], dtype=np.int64) if causal else None,
        is_cancelled=CalibrationTag(),
    )


def _gradient_job(worker: Worker, ids: np.ndarray[Any, Any], rows: int) -> Job[Any]:
    n = len(ids)
    runner = worker.runner
    with torch.no_grad():  # the embedding table's rows: the job's input, not a forward
        embeds = runner.embed(torch.as_tensor(ids[None], device=runner.device)).cpu()
    causal = runner.vocab_size > 0
    return GradientJob(
        embeds=embeds,
        attention=np.ones(n, dtype=np.int64),
        targets=np.zeros(rows, dtype=np.int64),
        positions=np.full(rows, n - 1, dtype=np.int64) if causal else None,
        accumulate=lambda start, stop, grads: None,  # only the time counts
        is_cancelled=CalibrationTag(),
    )


def _predict(
    last: dict[tuple[Kind, int], float], kind: Kind, rows_list: list[int], i: int
) -> float:
    """The seconds of the next batch of `kind` and `rows_list[i]` rows: its size's last batch,
    else twice the size below's, else (a gradient batch) `GRADIENT_FACTOR` times a forward
    batch's of as many rows, else nothing known."""
    rows = rows_list[i]
    if (kind, rows) in last:
        return last[(kind, rows)]
    if i and (kind, rows_list[i - 1]) in last:
        return 2 * last[(kind, rows_list[i - 1])]
    if kind == "gradient" and ("forward", rows) in last:
        return GRADIENT_FACTOR * last[("forward", rows)]
    return 0.0


def calibrate(
    worker: Worker,
    sample: Sequence[int],
    seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> Calibration:
    """Runs the calibration batches of `sample` (token ids of a typical input) on `worker`,
    within `seconds`; returns what it ran and the sizes chosen. A kind the model cannot run
    (its first batch raises) is left out; the error is logged, never raised."""
    ids = np.asarray(sample, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError("the calibration sample is one non-empty sequence of token ids")
    options = worker.options
    plans: dict[Kind, tuple[Callable[[Worker, Any, int], Job[Any]], list[int]]] = {
        "forward": (_forward_job, sizes(options.token_budget, len(ids), options.max_batch_rows)),
        "gradient": (
            _gradient_job,
            sizes(options.gradient_token_budget, len(ids), options.max_batch_rows),
        ),
    }
    started = clock()
    deadline = started + seconds
    before = worker.stats.calibration_batches
    #: Per kind and size, the seconds of its last batch (what the next one is predicted to take).
    last: dict[tuple[Kind, int], float] = {}
    failed: set[Kind] = set()
    #: Per kind and size, its fastest batch's seconds (the time bound's test, see below).
    fastest: dict[tuple[Kind, int], float] = {}
    longest = max(len(rows_list) for _, rows_list in plans.values())
    for _ in range(ROUNDS):
        stopped = set(failed)  # kinds whose next size would end past the deadline
        for i in range(longest):
            for kind, (make, rows_list) in plans.items():
                if kind in stopped or i >= len(rows_list):
                    continue
                rows = rows_list[i]
                predicted = _predict(last, kind, rows_list, i)
                now = clock()
                if now + predicted > deadline:
                    stopped.add(kind)  # larger sizes would take longer still
                    continue
                job = make(worker, ids, rows)
                worker.submit(job)
                try:
                    job.future.result()
                except Exception as exc:
                    log.warning("model %s: no %s calibration (%s)", worker.name, kind, exc)
                    failed.add(kind)
                    stopped.add(kind)
                    continue
                took = clock() - now
                last[(kind, rows)] = took
                fastest[(kind, rows)] = min(took, fastest.get((kind, rows), took))
                bound = worker.longest_batch_seconds(kind)
                if bound is not None and took > 2 * bound:
                    del rows_list[i + 1 :]  # far past the time bound: larger ones are too
        # Sizes above the first one whose fastest batch took longer than the time bound would
        # be cut by it anyway: not measured in the next rounds.
        for kind, (_, rows_list) in plans.items():
            bound = worker.longest_batch_seconds(kind)
            for i, rows in enumerate(rows_list):
                if bound is not None and fastest.get((kind, rows), 0.0) > bound:
                    del rows_list[i + 1 :]
                    break
    worker.wait_idle()  # the last batch counted
    # Its batches' garbage (rows, activations' host copies) now rather than in a client's call.
    gc.collect()
    spent = clock() - started
    result = Calibration(
        batches=worker.stats.calibration_batches - before,
        seconds=spent,
        caps={k: c for k, c in worker.throughput.caps().items() if k in plans and k not in failed},
    )
    rates = worker.throughput.rates()
    log.info(
        "model %s: batch sizes calibrated in %.2f s (%d batches, %d-token rows): %s",
        worker.name,
        spent,
        result.batches,
        len(ids),
        "; ".join(
            f"{kind} best {cap} tokens ("
            + ", ".join(f"{r.tokens}: {r.tokens_per_second:.0f}/s" for r in rates.get(kind, []))
            + ")"
            for kind, cap in result.caps.items()
        )
        or "nothing measured",
    )
    return result
