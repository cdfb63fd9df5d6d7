"""The worker under faults and load, on a toy runner whose rows do not depend on their batch:
out-of-memory splitting (injected), per-job fault isolation, the queue bound, fairness between a
huge request and small ones, the batching wait window and dropping cancelled work."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from toy_worker import ToyRunner, make_job, record, start

from explainserve.errors import Cancelled, ResourceExhausted, Unavailable
from explainserve.scheduling.jobs import Job, RequestTag
from explainserve.scheduling.worker import Worker


def test_out_of_memory_halves_the_batch_then_grows_back(
    runner: ToyRunner, closing: list[Worker]
) -> None:
    worker = start(runner, token_budget=64 * 8, oom_grow_after=2)
    closing.append(worker)
    sizes: list[int] = []

    def oom_above_16_rows(pieces: Sequence[tuple[Job, int, int]]) -> None:
        rows = sum(stop - start for _, start, stop in pieces)
        sizes.append(rows)
        if rows > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    worker.fault_hook = oom_above_16_rows
    job = make_job(200, 8, seed=1)
    worker.submit(job)
    np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    assert worker.stats.oom_splits >= 2  # 64 -> 32 -> 16
    assert worker.stats.rows == 200  # failed attempts run nothing
    after_first = sizes[sizes.index(16) :]
    # The cap is remembered: later batches start at the size that worked ...
    assert max(after_first) <= 18
    # ... and grow back slowly (by an eighth after `oom_grow_after` batches at the cap).
    worker.fault_hook = None
    more = make_job(400, 8, seed=2)
    sizes.clear()
    worker.fault_hook = lambda pieces: sizes.append(sum(b - a for _, a, b in pieces))
    worker.submit(more)
    np.testing.assert_array_equal(more.future.result(timeout=10), runner.expected(more))
    assert sizes[0] <= 18
    assert max(sizes) > sizes[0]
    assert max(sizes) <= 64


def test_a_row_too_big_even_alone_fails_only_its_job(
    runner: ToyRunner, closing: list[Worker]
) -> None:
    worker = start(runner, batch_wait_seconds=0.05)
    closing.append(worker)

    def oom_when_long(pieces: Sequence[tuple[Job, int, int]]) -> None:
        if any(job.length > 20 for job, _, _ in pieces):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    worker.fault_hook = oom_when_long
    small = [make_job(5, 6, seed=s) for s in range(3)]
    huge = make_job(2, 30, seed=9)
    worker.submit_all([small[0], huge, *small[1:]])
    with pytest.raises(ResourceExhausted, match="does not fit in device memory even alone"):
        huge.future.result(timeout=10)
    for job in small:
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    assert worker.stats.failed_jobs == 1
    # The worker lives on.
    again = make_job(3, 6, seed=4)
    worker.submit(again)
    np.testing.assert_array_equal(again.future.result(timeout=10), runner.expected(again))


def test_a_job_that_breaks_the_model_fails_alone(
    runner: ToyRunner, closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    worker = start(runner, batch_wait_seconds=0.05)
    closing.append(worker)
    good = [make_job(7, 5 + s, seed=s) for s in range(4)]
    poison = make_job(3, 6, seed=99)
    seen = record(batches)

    def raise_on_poison(pieces: Sequence[tuple[Job, int, int]]) -> None:
        seen(pieces)
        if any(job is poison for job, _, _ in pieces):
            raise ValueError("this input breaks the model")

    worker.fault_hook = raise_on_poison
    worker.submit_all([good[0], good[1], poison, good[2], good[3]])
    with pytest.raises(ValueError, match="breaks the model"):
        poison.future.result(timeout=10)
    for job in good:
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    assert len(batches[0]) == 5  # they did share the failing batch
    assert worker.stats.failed_jobs == 1


def test_a_failed_input_drops_the_rest_of_its_request(
    runner: ToyRunner, closing: list[Worker]
) -> None:
    """Once one input of a request breaks the model the request fails as a whole: its other
    queued rows are dropped unrun (they would be wasted), other requests are untouched."""
    worker = start(runner, token_budget=8 * 10)
    closing.append(worker)

    def request() -> bool:  # a request's jobs share their `is_cancelled` callback
        return False

    poison = make_job(2, 8, seed=99, is_cancelled=request)
    big = make_job(400, 8, seed=1, is_cancelled=request)
    other = make_job(40, 8, seed=2, is_cancelled=lambda: False)

    def raise_on_poison(pieces: Sequence[tuple[Job, int, int]]) -> None:
        if any(job is poison for job, _, _ in pieces):
            raise ValueError("this input breaks the model")

    worker.fault_hook = raise_on_poison
    worker.submit_all([poison, big])
    worker.submit(other)
    with pytest.raises(ValueError, match="breaks the model"):
        poison.future.result(timeout=10)
    with pytest.raises(ValueError, match="breaks the model"):
        big.future.result(timeout=10)
    np.testing.assert_array_equal(other.future.result(timeout=10), runner.expected(other))
    assert worker.stats.dropped_jobs == 1
    assert worker.stats.dropped_rows > 300  # at most a batch or two of `big` ran
    assert worker.stats.rows < 40 + 100
    assert worker.queued_rows == 0


def test_isolated_requests_never_share_a_batch(
    runner: ToyRunner, closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    worker = start(runner, batch_wait_seconds=0.05)
    closing.append(worker)
    worker.fault_hook = record(batches)
    isolated = RequestTag(None, isolated=True)
    mine = [make_job(5, 6, seed=s, is_cancelled=isolated) for s in range(3)]
    others = [make_job(5, 6, seed=10 + s, is_cancelled=lambda: False) for s in range(3)]
    worker.submit_all([others[0], *mine, *others[1:]])
    for job in [*mine, *others]:
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    ids = {id(job) for job in mine}
    for batch in batches:
        inside = {job_id in ids for job_id, _, _ in batch}
        assert len(inside) == 1, "an isolated request shared a batch"
    assert any(len({j for j, _, _ in b}) == 3 for b in batches if b[0][0] in ids)  # its own


def test_a_full_queue_refuses_at_once_and_drains(runner: ToyRunner, closing: list[Worker]) -> None:
    worker = start(runner, max_queued_rows=100, token_budget=40)
    closing.append(worker)
    runner.gate.clear()
    try:
        first = make_job(10, 4, seed=0)  # taken by the worker, held at the gate
        worker.submit(first)
        deadline = time.monotonic() + 5
        while worker.queued_rows and time.monotonic() < deadline:
            time.sleep(0.001)
        queued = [make_job(30, 4, seed=s) for s in range(3)]
        worker.submit_all(queued)
        assert worker.queued_rows == 90
        refusals: list[Exception] = []

        def submit_too_much() -> None:
            for job in (make_job(11, 4, seed=5), make_job(101, 4, seed=6)):
                try:
                    worker.submit(job)
                except ResourceExhausted as exc:
                    refusals.append(exc)

        # At once: refused while the worker is held at the gate, which nothing opens before
        # the join; a submission that waited for room would still be waiting after it.
        submitter = threading.Thread(target=submit_too_much)
        submitter.start()
        submitter.join(30)
        assert not submitter.is_alive(), "a submission waits for room instead of failing"
        assert [str(exc) for exc in refusals] == [
            "the queue of model toy is full (90 sequences waiting, bound 100): retry later",
            "the request needs 101 sequences through the model at once, more than the queue "
            "bound of 100: send fewer inputs or perturbations per request",
        ]
        worker.submit(make_job(10, 4, seed=7))  # what fits still goes in
        assert worker.stats.rejected == 2
    finally:
        runner.gate.set()
    for job in [first, *queued]:
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    deadline = time.monotonic() + 5
    while worker.queued_rows and time.monotonic() < deadline:
        time.sleep(0.001)
    assert worker.queued_rows == 0


def test_a_closed_worker_is_unavailable(runner: ToyRunner) -> None:
    worker = start(runner)
    worker.close()
    with pytest.raises(Unavailable, match="shutting down"):
        worker.submit(make_job(1, 3, seed=0))


def test_a_huge_request_does_not_starve_small_ones(
    runner: ToyRunner, closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    worker = start(runner, max_batch_rows=8)
    closing.append(worker)
    worker.fault_hook = record(batches)
    runner.gate.clear()
    try:
        huge_key = threading.Event().is_set  # one request: its jobs share a cancel callback
        huge = [make_job(40, 6, seed=s, is_cancelled=huge_key) for s in range(10)]
        worker.submit_all(huge)
        time.sleep(0.01)
        small = [make_job(3, 6, seed=100 + s) for s in range(3)]  # three separate requests
        for job in small:
            worker.submit(job)
    finally:
        runner.gate.set()
    for job in small:
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    for job in huge:
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    small_ids = {id(job) for job in small}
    served = [i for i, b in enumerate(batches) if any(j in small_ids for j, _, _ in b)]
    # 400 rows of the huge request take 50 batches; each small request leads one of the first
    # few, interleaved with the huge one's.
    assert len(batches) >= 50
    assert max(served) <= 6


def test_the_wait_window_lets_close_arrivals_share_a_batch(
    runner: ToyRunner, closing: list[Worker]
) -> None:
    """`a` alone is half a batch: it waits for company, within a window (60 s) that `b`, sent
    right after it, cannot miss on any machine, and the batch runs as soon as `b` fills it (a
    worker that waited out the window would time the results out)."""
    worker = start(runner, batch_wait_seconds=60.0, token_budget=30)
    closing.append(worker)
    a, b = make_job(3, 5, seed=1), make_job(3, 5, seed=2)  # 15 tokens each
    worker.submit(a)
    # Room for the worker to take `a` alone had it no window (what the test must catch); the
    # window makes the outcome the same however long this takes.
    time.sleep(0.02)
    worker.submit(b)
    a.future.result(timeout=10)
    b.future.result(timeout=10)
    assert worker.stats.batches == 1


def test_a_full_batch_does_not_wait(runner: ToyRunner, closing: list[Worker]) -> None:
    """40 tokens fill the budget: the batch runs at once, and a 60 s wait would time the
    result out."""
    worker = start(runner, batch_wait_seconds=60.0, token_budget=40)
    closing.append(worker)
    job = make_job(10, 4, seed=1)  # 40 tokens: a full batch
    worker.submit(job)
    job.future.result(timeout=10)
    assert worker.stats.batches == 1


def test_a_batch_full_at_the_shared_cap_does_not_wait(
    runner: ToyRunner, closing: list[Worker]
) -> None:
    """Full is what a shared batch holds now (here the explicit `batch_tokens`), not the token
    budget: 40 tokens fill it, and a 60 s wait would time the result out."""
    worker = start(runner, batch_wait_seconds=60.0, batch_tokens=40)
    closing.append(worker)
    job = make_job(10, 4, seed=1)  # 40 tokens: a full batch at the cap, 0.5 % of the budget
    worker.submit(job)
    job.future.result(timeout=10)
    assert worker.stats.batches == 1


def test_cancelled_jobs_are_dropped_unrun(runner: ToyRunner, closing: list[Worker]) -> None:
    worker = start(runner, max_batch_rows=4)
    closing.append(worker)
    cancelled = threading.Event()
    runner.gate.clear()
    try:
        job = make_job(100, 4, seed=3, is_cancelled=cancelled.is_set)
        worker.submit(job)
        time.sleep(0.01)
        cancelled.set()
    finally:
        runner.gate.set()
    with pytest.raises(Cancelled):
        job.future.result(timeout=10)
    assert worker.stats.cancelled_jobs == 1
    assert worker.stats.rows <= 8  # at most the batch in flight and one more boundary
    assert worker.stats.cancelled_rows >= 92
    assert worker.queued_rows == 0


@pytest.mark.parametrize("fault", ["out_of_memory", "error_of_one_job"])
def test_a_request_cancelled_during_a_batch_runs_no_retried_part_of_it(
    runner: ToyRunner, closing: list[Worker], fault: str
) -> None:
    """The batch that fails is split (out of memory) or retried job by job (an error); the
    request was cancelled while it ran, so none of the parts runs: liveness is checked before
    every batch, retried parts included."""
    worker = start(runner)
    closing.append(worker)
    cancelled = threading.Event()
    attempts: list[int] = []

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        attempts.append(sum(stop - start for _, start, stop in pieces))
        if len(attempts) == 1:
            cancelled.set()  # the client cancels while the batch runs
            if fault == "out_of_memory":
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            raise ValueError("injected")

    worker.fault_hook = hook
    jobs = [make_job(8, 4, seed=s, is_cancelled=cancelled.is_set) for s in (1, 2)]
    worker.submit_all(jobs)
    for job in jobs:
        with pytest.raises(Cancelled):
            job.future.result(timeout=10)
    assert attempts == [16]
    assert worker.stats.rows == 0
    assert worker.stats.cancelled_jobs == 2
    assert worker.stats.cancelled_rows == 16
    assert worker.queued_rows == 0


def test_a_bug_after_a_batch_fails_its_requests_and_the_worker_goes_on(
    runner: ToyRunner, closing: list[Worker]
) -> None:
    """An exception in the worker's own bookkeeping after a batch (here the throughput model's
    `observe`, as a stale test spy once did) must not kill the worker thread: later requests
    run and `wait_idle` returns (it used to hang for ever)."""
    worker = start(runner)
    closing.append(worker)
    calls = [0]
    observe = worker.throughput.observe

    def broken_once(*args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("bookkeeping bug")
        observe(*args, **kwargs)  # type: ignore[arg-type]

    worker.throughput.observe = broken_once  # type: ignore[method-assign]
    first = make_job(4, 4, seed=1)
    worker.submit(first)
    first.future.exception(timeout=10)  # resolved: in its batch, or failed by the bug
    worker.wait_idle()
    second = make_job(4, 4, seed=2)
    worker.submit(second)
    np.testing.assert_array_equal(second.future.result(timeout=10), runner.expected(second))
    worker.wait_idle()
    assert calls[0] == 2
