"""Latency under mixed traffic, on the toy runner and its fake clock (a batch costs `overhead +
per_token x tokens` on it, exactly): the cost model, batches cut at `max_batch_ms`, fair shares of
a batch between requests, length-aware shared batches, priorities, and the observer's request
queue waits. Batches are counted and their fake durations computed; nothing depends on the
machine's speed."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from toy_worker import ToyRunner, make_job, record, start

from explainserve.scheduling import policy
from explainserve.scheduling.cost import MAX_OVERHEAD, CostModel, Fit, theil_sen
from explainserve.scheduling.jobs import ForwardJob, Job, RequestTag
from explainserve.scheduling.policy import fair_shares
from explainserve.scheduling.worker import Worker

OVERHEAD = 0.001
PER_TOKEN = 1e-4


def test_theil_sen_recovers_the_line_despite_outliers() -> None:
    points = [(x, 0.002 + 1e-4 * x) for x in range(100, 1100, 100)]
    points += [(300, 0.5), (700, 0.9)]  # two batches that waited for the CPU
    fit = theil_sen(points)
    # The median slope is one of the exact pairs' slopes: float64 rounding of the differences.
    assert fit.slope == pytest.approx(1e-4, rel=1e-9)
    assert fit.intercept == pytest.approx(0.002, rel=1e-9)
    assert fit.samples == 12
    # One batch size only: the line through the origin and the median.
    flat = theil_sen([(500, 0.05), (500, 0.06), (500, 0.07)])
    assert (flat.intercept, flat.slope) == (0.0, pytest.approx(0.06 / 500))


def test_the_time_bound_never_cuts_below_the_overhead_floor() -> None:
    # (0.1 - 0.002) / 1e-4 = 980 tokens fit the bound; the floor is 0.002 / 1e-4 = 20.
    assert Fit(0.002, 1e-4, 8).tokens_within(0.1) == 980
    # The MiniLM forward measured on the 2-core CPU (25 ms + 0.23 ms per token): the bound
    # decides, (0.1 - 0.025) / 2.3e-4 = 326 tokens; at the old 5 % floor it was 2,065 tokens,
    # batches five times max_batch_ms long.
    assert Fit(0.025, 2.3e-4, 8).tokens_within(0.1) == 326
    # A fixed cost of 80 ms: 200 tokens fit 0.1 s, but the fixed cost would be 80 % of such a
    # batch; the floor keeps it at half, a / b = 800 tokens.
    floor = Fit(0.08, 1e-4, 8).tokens_within(0.1)
    assert floor == pytest.approx(0.08 / 1e-4 * (1 - MAX_OVERHEAD) / MAX_OVERHEAD, abs=1)
    assert floor == pytest.approx(800, abs=1)
    assert Fit(0.0, 0.0, 8).tokens_within(0.1) > 1 << 40  # no cost per token: no bound


def test_the_cost_model_fits_after_enough_batches() -> None:
    model = CostModel(min_samples=8, refit_every=4)
    for i in range(7):
        model.observe("forward", 100 * (i + 1), OVERHEAD + PER_TOKEN * 100 * (i + 1))
    assert model.fit("forward") is None
    model.observe("forward", 800, OVERHEAD + PER_TOKEN * 800)
    fit = model.fit("forward")
    assert fit is not None
    assert fit.slope == pytest.approx(PER_TOKEN, rel=1e-9)
    assert fit.intercept == pytest.approx(OVERHEAD, rel=1e-6)
    assert model.fit("gradient") is None


def test_fair_shares_meet_small_demands_and_split_the_rest() -> None:
    assert fair_shares({"a": 80, "b": 5000, "c": 5000}, 512) == {"a": 80, "b": 216, "c": 216}
    assert fair_shares({"a": 100, "b": 100}, 512) == {"a": 100, "b": 100}


def train(worker: Worker, runner: ToyRunner) -> None:
    """Eight batches of different sizes, run alone: enough for the cost model's first fit."""
    for i in range(8):
        job = make_job(8 * (i + 1), 8, seed=50 + i)
        worker.submit(job)
        job.future.result(timeout=10)


def test_batches_are_cut_at_max_batch_ms_once_the_cost_is_learnt(
    closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    runner = ToyRunner(overhead=OVERHEAD, per_token=PER_TOKEN)
    worker = start(runner, max_batch_ms=100)
    closing.append(worker)
    train(worker, runner)
    assert worker.stats.batches == 8
    worker.fault_hook = record(batches)
    job = make_job(400, 8, seed=1)  # 3,200 tokens: one batch of the token budget
    worker.submit(job)
    np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    cap = worker.time_cap("forward")
    assert cap is not None
    # The request's first batch: (0.1 - 0.001) / 1e-4 = 990 tokens fit max_batch_ms. Its later
    # ones (its round under way) LONG_BATCH x 100 ms: 1,490 tokens, the cap the step of 2^(1/4)
    # below.
    assert policy.LONG_BATCH == 1.5
    assert 1490 / 2**0.25 < cap <= 1490
    sizes = [sum(stop - start for _, start, stop in b) for b in batches]
    first = 990 // 8
    later = [cap // 8] * ((400 - first) // (cap // 8))
    assert sizes == [first, *later] + (
        [400 - first - sum(later)] if 400 - first - sum(later) else []
    )
    assert OVERHEAD + PER_TOKEN * 8 * sizes[0] <= 0.1
    assert all(OVERHEAD + PER_TOKEN * 8 * rows <= 0.15 for rows in sizes)


def test_a_round_arriving_behind_one_under_way_waits_at_most_two_max_batch_ms(
    closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    """Issue 12's promise under `LONG_BATCH` / `FIRST_FILL`: a huge request's batches, once it
    is under way, take up to 1.5 x max_batch_ms; a small request arriving during one waits for
    it, then leads a batch of its rows and only 0.5 x max_batch_ms of the huge one's: at most
    2 x max_batch_ms (fake clock) more than alone. Then the huge one's batches are long again."""
    runner = ToyRunner(overhead=OVERHEAD, per_token=PER_TOKEN)
    worker = start(runner, max_batch_ms=100)
    closing.append(worker)
    train(worker, runner)
    huge = make_job(2000, 8, seed=1, is_cancelled=threading.Event().is_set)
    small = make_job(10, 8, seed=2, is_cancelled=threading.Event().is_set)
    second_held = threading.Event()
    recorder = record(batches)

    def hook(pieces: Sequence[tuple[Job[Any], int, int]]) -> None:
        recorder(pieces)
        if len(batches) == 2:  # the huge one's second batch: its round is under way
            runner.gate.clear()
            second_held.set()

    worker.fault_hook = hook
    try:
        worker.submit(huge)
        assert second_held.wait(10)
        worker.submit(small)
    finally:
        runner.gate.set()
    for job in (huge, small):
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))

    def seconds(batch: list[tuple[int, int, int]]) -> float:
        return OVERHEAD + PER_TOKEN * 8 * sum(stop - start for _, start, stop in batch)

    cap = worker.time_cap("forward")
    assert cap is not None
    # First batch: the huge one's round starts, 990 tokens (max_batch_ms); then long ones.
    assert [sum(b - a for _, a, b in batch) for batch in batches[:2]] == [990 // 8, cap // 8]
    running, own = batches[1], batches[2]
    assert seconds(running) <= policy.LONG_BATCH * 0.1
    # The small request's batch: all its rows, and the huge one's up to 0.5 x 100 ms more
    # (500 tokens: 62 rows of 8).
    assert own[0] == (id(small), 0, 10)
    assert {p[0]: p[2] - p[1] for p in own} == {id(small): 10, id(huge): 500 // 8}
    alone = OVERHEAD + PER_TOKEN * 8 * 10
    assert seconds(own) <= alone + policy.FIRST_FILL * 0.1
    assert seconds(running) + seconds(own) <= alone + 2 * 0.1
    # The huge one goes on in long batches.
    assert all(b[0][2] - b[0][1] == cap // 8 for b in batches[3:-1])


def test_no_time_bound_and_isolated_requests_are_cut_by_tokens_only(
    closing: list[Worker],
) -> None:
    runner = ToyRunner(overhead=OVERHEAD, per_token=PER_TOKEN)
    unbounded = start(runner, max_batch_ms=0)
    bounded = start(runner, max_batch_ms=100)
    closing.extend([unbounded, bounded])
    for worker in (unbounded, bounded):
        train(worker, runner)
    before = unbounded.stats.batches
    job = make_job(400, 8, seed=1)
    unbounded.submit(job)
    job.future.result(timeout=10)
    assert unbounded.stats.batches == before + 1
    assert unbounded.time_cap("forward") is None
    # Isolated: the batches it gets alone do not depend on timings (bit-exact results).
    before = bounded.stats.batches
    isolated = make_job(400, 8, seed=1, is_cancelled=RequestTag(None, isolated=True))
    bounded.submit(isolated)
    np.testing.assert_array_equal(isolated.future.result(timeout=10), job.future.result())
    assert bounded.stats.batches == before + 1


def test_a_fixed_cost_that_dominates_keeps_batches_whole(closing: list[Worker]) -> None:
    """A batch's fixed cost of 90 ms: batches cut at 100 ms (1,000 tokens) would spend 90 % of
    their time on it, so the overhead floor (MAX_OVERHEAD, a / b = 9,000 tokens) keeps them at
    the token budget."""
    runner = ToyRunner(overhead=0.09, per_token=1e-5)
    worker = start(runner, max_batch_ms=100)
    closing.append(worker)
    train(worker, runner)
    before = worker.stats.batches
    job = make_job(500, 16, seed=1)  # 8,000 tokens: (0.1 - 0.09) / 1e-5 = 1,000 by time alone
    worker.submit(job)
    job.future.result(timeout=10)
    assert worker.stats.batches == before + 1


def hold_first_batch(worker: Worker, runner: ToyRunner, rows_left: int) -> None:
    """Waits until the worker has taken its first batch (held at the runner's gate)."""
    deadline = time.monotonic() + 10
    while worker.queued_rows != rows_left and time.monotonic() < deadline:
        time.sleep(0.001)
    assert worker.queued_rows == rows_left


def recording(
    runner: ToyRunner, closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> Worker:
    """A worker of 512-token batches without a time bound, closed after the test, recording the
    pieces of every batch it runs into `batches` (`record`)."""
    worker = start(runner, token_budget=8 * 64, max_batch_ms=0)
    closing.append(worker)
    worker.fault_hook = record(batches)
    return worker


def queue_behind_first_batch(
    worker: Worker, runner: ToyRunner, first: ForwardJob, taken: int, later: list[ForwardJob]
) -> None:
    """Submits `first`, holds its first batch (`taken` rows) at the runner's gate while `later`
    queue, then lets the worker go on; every job's results checked."""
    runner.gate.clear()
    try:
        worker.submit(first)
        hold_first_batch(worker, runner, first.n_rows - taken)
        for job in later:
            worker.submit(job)
    finally:
        runner.gate.set()
    for job in (first, *later):
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))


def test_a_small_request_gets_all_its_rows_into_the_next_batch_it_does_not_lead(
    runner: ToyRunner, closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    """Two huge requests and a small one: the next batch is led by a huge one, and the small
    one's rows all go in it all the same (its fair share covers them), not one batch later."""
    worker = recording(runner, closing, batches)
    huge1 = make_job(300, 8, seed=1, is_cancelled=threading.Event().is_set)
    huge2 = make_job(300, 8, seed=2, is_cancelled=threading.Event().is_set)
    small = make_job(10, 8, seed=3, is_cancelled=threading.Event().is_set)
    queue_behind_first_batch(worker, runner, huge1, 64, [huge2, small])
    second = batches[1]
    assert second[0][0] == id(huge2)  # huge2 leads it
    assert (id(small), 0, 10) in second
    # The rest is split fairly between the two huge requests: (512 - 80) / 2 = 216 tokens each.
    rows = {job_id: stop - start for job_id, start, stop in second}
    assert rows == {id(huge2): 27, id(small): 10, id(huge1): 27}


def test_interactive_rows_overtake_queued_batch_rows(
    runner: ToyRunner, closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    worker = recording(runner, closing, batches)
    background = make_job(
        300, 8, seed=1, is_cancelled=RequestTag(threading.Event().is_set, priority="batch")
    )
    interactive = make_job(200, 8, seed=2, is_cancelled=threading.Event().is_set)
    queue_behind_first_batch(worker, runner, background, 64, [interactive])
    with_interactive = [i for i, b in enumerate(batches) if any(p[0] == id(interactive) for p in b)]
    # 200 rows at 64 a batch: batches 1 to 4, right after the one that was running; the batch
    # request only fills what the last of them leaves.
    assert with_interactive == [1, 2, 3, 4]
    for b in batches[1:4]:
        assert all(p[0] == id(interactive) for p in b)
    assert sum(stop - start for _, start, stop in batches[4]) == 64


class Recorder:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, float]] = []
        self.batches: list[tuple[str, int, int, float]] = []

    def queued(self, kind: str, seconds: float) -> None:
        pass

    def request_queued(self, priority: str, seconds: float) -> None:
        self.requests.append((priority, seconds))

    def batch(
        self, kind: str, rows: int, padded: int, real: int, budget: int, seconds: float
    ) -> None:
        self.batches.append((kind, rows, padded, seconds))


def test_the_observer_hears_each_request_once_and_each_batch_with_its_time(
    closing: list[Worker],
) -> None:
    runner = ToyRunner(overhead=OVERHEAD, per_token=PER_TOKEN)
    worker = start(runner, max_batch_ms=0, token_budget=8 * 64)
    closing.append(worker)
    observer = Recorder()
    worker.observer = observer
    tag = RequestTag(None, priority="batch")
    jobs = [make_job(100, 8, seed=s, is_cancelled=tag) for s in range(2)]
    worker.submit_all(jobs)  # one request, two jobs, four batches
    for job in jobs:
        job.future.result(timeout=10)
    alone = make_job(5, 8, seed=9)
    worker.submit(alone)
    alone.future.result(timeout=10)
    worker.close()  # the observer hears of a batch after its futures resolve
    assert [p for p, _ in observer.requests] == ["batch", "interactive"]
    assert [b[1] for b in observer.batches] == [64, 64, 64, 8, 5]
    for kind, _rows, padded, seconds in observer.batches:
        assert kind == "forward"
        assert seconds == pytest.approx(OVERHEAD + PER_TOKEN * padded, rel=1e-9)


def test_the_time_bound_defaults_by_device_when_unset(runner: ToyRunner) -> None:
    """`max_batch_ms=None` (what `explainserve serve` passes unless configured): 100 ms on a CPU;
    a bare WorkerOptions has no time bound."""
    by_device = start(runner, max_batch_ms=None)
    bare = start(runner)
    try:
        assert by_device.max_batch_seconds == pytest.approx(0.1)
        assert bare.max_batch_seconds is None
    finally:
        by_device.close()
        bare.close()


def test_batches_of_one_size_keep_the_slope_and_refit_the_intercept() -> None:
    model = CostModel(min_samples=8, refit_every=4)
    for tokens in [100, 200, 400, 800] * 2:  # sizes apart: the line is measured
        model.observe("forward", tokens, 0.02 + 2e-4 * tokens)
    fit = model.fit("forward")
    assert fit is not None
    assert (fit.intercept, fit.slope) == (pytest.approx(0.02), pytest.approx(2e-4))
    # Then 64 batches of one row of 129 tokens: no pair is apart, so the slope stays (through
    # the origin it would become 0.0458 / 129 = 3.6e-4 and the time cap half what it is).
    for _ in range(64):
        model.observe("forward", 129, 0.02 + 2e-4 * 129)
    fit = model.fit("forward")
    assert fit is not None
    assert (fit.intercept, fit.slope) == (pytest.approx(0.02), pytest.approx(2e-4))
    assert fit.tokens_within(0.1) == pytest.approx((0.1 - 0.02) / 2e-4, abs=1)
    # On a machine now 10 ms slower per batch, the intercept follows.
    slower = theil_sen([(129, 0.03 + 2e-4 * 129)] * 64, previous=fit)
    assert (slower.intercept, slower.slope) == (pytest.approx(0.03), pytest.approx(2e-4))


#: bench/peers.py's 16 texts: (tokens, Occlusion rows at WORD granularity).
PEER_TEXTS = [
    (22, 20), (22, 18), (20, 19), (18, 17), (18, 17), (17, 16), (20, 19), (18, 17),
    (15, 12), (14, 13), (16, 15), (15, 11), (13, 12), (13, 12), (12, 11), (13, 12),
]  # fmt: skip


def eight_clients(
    runner: ToyRunner, worker: Worker
) -> tuple[dict[int, ForwardJob], list[list[tuple[int, int, int]]]]:
    """The peers bench's 8 clients (2 texts each, Occlusion rows), all queued before the
    worker's next batch (a one-row batch of 4 tokens holds it meanwhile). Returns their jobs by
    id and the batches after the held one, as (job id, start, stop) pieces. Results checked."""
    batches: list[list[tuple[int, int, int]]] = []
    worker.fault_hook = record(batches)
    jobs: dict[int, ForwardJob] = {}
    runner.gate.clear()
    try:
        worker.submit(make_job(1, 4, seed=99))
        hold_first_batch(worker, runner, 0)
        for c in range(8):
            tag = RequestTag(threading.Event().is_set)
            mine = [
                make_job(rows, length, seed=i, is_cancelled=tag)
                for i, (length, rows) in enumerate(PEER_TEXTS[2 * c : 2 * c + 2])
            ]
            worker.submit_all(mine)
            jobs |= {id(job): job for job in mine}
    finally:
        runner.gate.set()
    for job in jobs.values():
        np.testing.assert_array_equal(job.future.result(timeout=10), runner.expected(job))
    return jobs, batches[1:]


@pytest.mark.parametrize("stretch_only", [False, True])
def test_shared_batches_hold_rows_close_in_length(
    runner: ToyRunner, closing: list[Worker], monkeypatch: pytest.MonkeyPatch, stretch_only: bool
) -> None:
    """8 concurrent requests of texts of 12-22 tokens in batches of 512 tokens: length-aware
    filling pads 1 % of the tokens; rows of any requests within MAX_SHARED_STRETCH of the lead
    (the filling before it, `stretch_only`) padded 28 %, in as many batches. Counted by the
    worker's counters and from the batches' pieces."""
    if stretch_only:
        monkeypatch.setattr(policy, "MAX_SHARED_PADDING", policy.MAX_SHARED_STRETCH)
    worker = start(runner, batch_tokens=512, max_batch_ms=0)
    closing.append(worker)
    jobs, batches = eight_clients(runner, worker)
    worker.close()  # the counters count a batch after its futures resolve
    stats = worker.stats
    padded, real = stats.padded_tokens - 4, stats.real_tokens - 4  # less the held batch
    assert real == sum(length * rows for length, rows in PEER_TEXTS)
    assert stats.rows - 1 == sum(rows for _, rows in PEER_TEXTS)
    assert len(batches) == stats.batches - 1 == 11
    widths = [[jobs[j].length for j, _, _ in b] for b in batches]
    requests = [len({id(jobs[j].is_cancelled) for j, _, _ in b}) for b in batches]
    if stretch_only:
        assert padded / real > 1.25
        assert max(requests) == 8
    else:
        assert padded / real < 1.02
        # No batch mixes requests whose rows differ by more than 5 % in length, but the last
        # (small requests: what each has left fits its share, so it completes there).
        for w, n in zip(widths[:-1], requests[:-1], strict=True):
            assert n == 1 or max(w) <= policy.MAX_SHARED_PADDING * min(w)
        assert max(requests) < 8


def test_a_small_request_of_another_length_still_completes_in_the_next_batch(
    runner: ToyRunner, closing: list[Worker], batches: list[list[tuple[int, int, int]]]
) -> None:
    """A huge request of 16-token rows runs; another of 12-token rows and a small one of 12
    tokens queue. The next batch, led by the 12-token one, takes all the small request's rows
    but none of the 16-token rows (33 % padding); the 16-token request leads the one after,
    alone, and so on in turn."""
    worker = recording(runner, closing, batches)
    wide = make_job(300, 16, seed=1, is_cancelled=threading.Event().is_set)
    narrow = make_job(300, 12, seed=2, is_cancelled=threading.Event().is_set)
    small = make_job(10, 12, seed=3, is_cancelled=threading.Event().is_set)
    queue_behind_first_batch(worker, runner, wide, 32, [narrow, small])
    rows = [{job_id: stop - start for job_id, start, stop in b} for b in batches[:3]]
    # 512 tokens: the small request's 120, the rest (392) to the narrow one: 32 rows.
    assert rows == [{id(wide): 32}, {id(narrow): 32, id(small): 10}, {id(wide): 32}]
    # The only padding: the narrow request's last 16 rows, small by then, complete in a batch
    # the wide one leads (16 rows x 4 tokens).
    mixed = [i for i, b in enumerate(batches) if len(b) > 1]
    assert mixed == [1, 14]
    assert {job_id: stop for job_id, _, stop in batches[14]} == {id(wide): 240, id(narrow): 300}
    worker.close()  # the counters count a batch after its futures resolve
    assert worker.stats.padded_tokens - worker.stats.real_tokens == 16 * 4
