"""Throughput-optimal batch sizes (issue 17), on a toy runner whose fake clock makes batches above
2048 tokens slower per token (activations out of the caches) and small ones slower by their fixed
cost, so the measured optimum is 2048 tokens: the warm-up calibration's batches (counted, bounded
by rounds and by seconds of the fake clock), the cap it chooses, its hysteresis and online
refinement, and the bounds it never goes above. Nothing depends on the machine's speed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from toy_worker import ToyRunner, make_job, record, start

from explainserve.scheduling import calibration
from explainserve.scheduling.calibration import ROUNDS, sizes
from explainserve.scheduling.cost import (
    EXPLORE_EVERY,
    MIN_APART,
    RATE_WINDOW,
    ThroughputModel,
    size_class,
    theil_sen,
)
from explainserve.scheduling.jobs import RequestTag
from explainserve.scheduling.worker import Worker

OVERHEAD = 0.002
PER_TOKEN = 1e-5
#: Batches above this many tokens cost `SLOWDOWN` times more per token.
CACHE_TOKENS = 2048
SLOWDOWN = 1.5
#: The calibration sample: 32 token ids.
SAMPLE = list(range(1, 33))


class CacheRunner(ToyRunner):
    """`ToyRunner` whose batches above `CACHE_TOKENS` tokens are slower per token."""

    def __init__(self, overhead: float = OVERHEAD) -> None:
        super().__init__(overhead, PER_TOKEN)

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        tokens = ids.shape[0] * ids.shape[1]
        if tokens > CACHE_TOKENS:
            self.now += PER_TOKEN * (SLOWDOWN - 1) * tokens
        return super().logits(ids, attention, inputs_embeds)


def seconds(tokens: int) -> float:
    """What a batch of `tokens` tokens costs on `CacheRunner`'s clock."""
    return OVERHEAD + PER_TOKEN * tokens * (SLOWDOWN if tokens > CACHE_TOKENS else 1.0)


def calibrated(overhead: float = OVERHEAD, **options: object) -> tuple[Worker, CacheRunner]:
    runner = CacheRunner(overhead)
    worker = start(runner, calibrate=True, calibration_seconds=60.0, **options)
    worker.calibrate(SAMPLE)
    return worker, runner


def batch_rows(worker: Worker, job_rows: int, length: int, **job: object) -> list[int]:
    """Rows of each batch of one job of `job_rows` rows of `length` tokens."""
    batches: list[list[tuple[int, int, int]]] = []
    worker.fault_hook = record(batches)
    big = make_job(job_rows, length, seed=3, **job)
    worker.submit(big)
    big.future.result(timeout=30)
    worker.fault_hook = None
    return [sum(stop - begin for _, begin, stop in b) for b in batches]


def test_sizes_double_from_the_smallest_to_the_memory_bound() -> None:
    assert sizes(8192, 32, 512) == [8, 16, 32, 64, 128, 256]
    assert sizes(4096, 32, 512) == [8, 16, 32, 64, 128]
    assert sizes(8192, 32, 100) == [8, 16, 32, 64, 100]  # max_batch_rows
    assert sizes(8192, 1000, 512) == [1, 2, 4, 8]  # rows longer than the smallest size
    assert sizes(100, 1000, 512) == [1]  # one row always


def test_calibration_runs_a_bounded_counted_number_of_batches_and_finds_the_optimum() -> None:
    worker, _ = calibrated(token_budget=8192, gradient_token_budget=4096)
    try:
        result = worker.calibration
        assert result is not None
        # Every size of each kind once per round: forward 8..256 rows, gradient 8..128 rows.
        assert result.batches == ROUNDS * (6 + 5) == 33
        assert worker.stats.calibration_batches == 33
        assert worker.stats.batches == 33
        assert result.caps == {"forward": CACHE_TOKENS, "gradient": CACHE_TOKENS}
        # Its seconds are those of its batches on the fake clock, exactly.
        expected = ROUNDS * (
            sum(seconds(32 * r) for r in [8, 16, 32, 64, 128, 256])
            + sum(seconds(32 * r) for r in [8, 16, 32, 64, 128])
        )
        assert result.seconds == pytest.approx(expected)
        assert worker.stats.calibration_seconds == pytest.approx(expected)
        rates = {r.tokens: r for r in worker.throughput.rates()["forward"]}
        assert sorted(rates) == [256, 512, 1024, 2048, 4096, 8192]
        assert all(r.batches == ROUNDS for r in rates.values())
        assert rates[2048].tokens_per_second == pytest.approx(2048 / seconds(2048))
        assert worker.batch_caps()["forward"] == CACHE_TOKENS
    finally:
        worker.close()


def test_calibration_stops_at_its_time_budget() -> None:
    runner = CacheRunner()
    worker = start(runner, calibrate=True, calibration_seconds=0.05)
    try:
        result = worker.calibrate(SAMPLE)
        # Sizes alternate between the kinds: forward and gradient (on the toy, as costly) at
        # 8, 16 and 32 rows take 0.0478 s; forward 64 rows, predicted at twice 32 rows' 0.0122
        # s, would end past 0.05 s, and so would gradient 64 and the second round's first one.
        assert result.batches == worker.stats.calibration_batches == 6
        ran = 2 * sum(seconds(32 * r) for r in [8, 16, 32])
        assert result.seconds == pytest.approx(ran)
        assert result.seconds <= 0.05
        assert result.caps == {"forward": 1024, "gradient": 1024}
    finally:
        worker.close()


def test_shared_batches_are_cut_at_the_calibrated_optimum_exploring_its_neighbours() -> None:
    worker, _ = calibrated()
    try:
        rows = batch_rows(worker, 64 * 40, 32)
        # 2048 tokens = 64 rows of 32; one batch in EXPLORE_EVERY tries 4096 or 1024 tokens.
        assert sum(rows) == 64 * 40
        assert set(rows) <= {32, 64, 128}
        explored = [r for r in rows if r != 64]
        assert len(explored) == pytest.approx(len(rows) / EXPLORE_EVERY, abs=1)
        assert 32 in explored
        assert 128 in explored
        assert worker.batch_caps()["forward"] == CACHE_TOKENS  # still the optimum
    finally:
        worker.close()


def test_isolated_requests_are_cut_by_the_token_budget_alone() -> None:
    worker, _ = calibrated(token_budget=8192)
    try:
        rows = batch_rows(worker, 512, 32, is_cancelled=RequestTag(None, isolated=True))
        assert rows == [256, 256]  # 8192 tokens each, not the optimum's 2048
    finally:
        worker.close()


def test_the_cap_is_never_above_the_memory_bound_the_override_or_the_time_bound() -> None:
    # Memory bound: with a budget of 1024 tokens, nothing larger is tried nor used.
    worker, _ = calibrated(token_budget=1024, gradient_token_budget=1024)
    try:
        assert worker.calibration is not None
        assert worker.calibration.caps == {"forward": 1024, "gradient": 1024}
        rows = batch_rows(worker, 320, 32)
        assert max(rows) == 32  # exploring upwards is cut at the bound; downwards, 16 rows
        assert set(rows) <= {16, 32}
    finally:
        worker.close()
    # An explicit batch_tokens replaces the measured optimum (no exploration).
    worker, _ = calibrated(batch_tokens=512)
    try:
        assert set(batch_rows(worker, 320, 32)) == {16}
        assert worker.batch_caps()["forward"] == 512
    finally:
        worker.close()
    # The time bound: with a fixed cost of 0.5 ms (the optimum would still be 2048 tokens),
    # max_batch_ms 10 lets the batches of a request under way take 15 ms (LONG_BATCH), at most
    # (0.015 - 0.0005) / 1e-5 = 1450 tokens; its round's first batch 10 ms, 950 tokens.
    worker, _ = calibrated(overhead=0.0005, max_batch_ms=10)
    try:
        rows = batch_rows(worker, 320, 32)
        assert worker.calibration is not None
        # Round 1 stops after 128 rows (0.0619 s, over twice 15 ms); rounds 2 and 3 after the
        # first size slower than 15 ms (64 rows: 0.0210 s). Forward and gradient alike.
        assert worker.calibration.batches == 2 * (5 + (ROUNDS - 1) * 4)
        # 512 tokens run 91.0k tokens/s, 1024 95.3k (within the 5 % hysteresis), 2048 97.6k:
        # the optimum is 2048 tokens, but the time bound cuts the batches below it.
        assert worker.calibration.caps["forward"] == CACHE_TOKENS
        cap = worker.time_caps()["forward"]
        assert 1450 / 2**0.25 < cap <= 1450
        assert rows[0] == 950 // 32
        assert max(rows) * 32 <= cap
        assert worker.batch_caps()["forward"] == min(cap, worker.throughput.caps()["forward"])
    finally:
        worker.close()


def test_a_bare_worker_measures_but_keeps_its_budget() -> None:
    """`calibrate` off (a bare WorkerOptions): the calibration may run, batches stay as before."""
    runner = CacheRunner()
    worker = start(runner, calibration_seconds=60.0)
    try:
        assert worker.calibrate(SAMPLE).batches == 33
        assert set(batch_rows(worker, 512, 32)) == {256}
        assert worker.batch_caps()["forward"] == 8192
    finally:
        worker.close()


def test_the_chosen_size_changes_only_past_the_hysteresis_margin() -> None:
    model = ThroughputModel()
    for _ in range(RATE_WINDOW):
        model.observe("forward", 2048, 2048 / 100.0)  # 100 tokens/s
    assert model.cap("forward") == 2048
    for _ in range(RATE_WINDOW):
        model.observe("forward", 4096, 4096 / 104.0)  # 4 % better: not enough
    assert model.cap("forward") == 2048
    for _ in range(3):  # the median of the last 5 moves to 106 after 3 of them
        model.observe("forward", 4096, 4096 / 106.0)
    assert model.cap("forward") == 4096
    assert model.cap("gradient") is None
    # Batches of 1500 or 2800 tokens are of the 2048 class (the nearest power of two).
    assert size_class(1500) == size_class(2800) == 11


def test_one_batch_in_eight_tries_a_neighbouring_size() -> None:
    model = ThroughputModel()
    assert model.next_cap("forward") is None  # nothing measured: no cap
    model.observe("forward", 2048, 0.02)
    caps = [model.next_cap("forward") for _ in range(4 * EXPLORE_EVERY)]
    assert caps.count(2048) == 4 * (EXPLORE_EVERY - 1)
    assert [caps[i] for i in range(EXPLORE_EVERY - 1, len(caps), EXPLORE_EVERY)] == [
        1024,
        4096,
        1024,
        4096,
    ]


def test_the_calibration_helper_refuses_an_empty_sample() -> None:
    worker = start(CacheRunner())
    try:
        with pytest.raises(ValueError, match="non-empty"):
            calibration.calibrate(worker, [], 1.0)
    finally:
        worker.close()


def test_theil_sen_ignores_pairs_of_nearly_equal_sizes() -> None:
    """Batches cut at one cap differ by a few tokens: the slope between two of them is their
    noise. Pairs closer than `MIN_APART` are left out, so a few batches of other sizes give the
    slope."""
    line = [(x, 0.002 + 1e-4 * x) for x in (200, 400, 600)]
    rng = np.random.default_rng(0)
    near = [
        (int(x), 0.002 + 1e-4 * x + float(e))
        for x, e in zip(rng.integers(990, 1011, 30), rng.normal(0, 0.01, 30), strict=True)
    ]
    assert all(abs(a - b) < MIN_APART * 1010 for (a, _), (b, _) in itertools.pairwise(near))
    fit = theil_sen(line + near)
    assert fit.slope == pytest.approx(1e-4, rel=0.15)


def test_a_batch_cut_at_its_cap_measures_the_cap() -> None:
    model = ThroughputModel()
    model.observe("forward", 129, 0.05, cap=256)  # one 129-token row cut at a cap of 256
    model.observe("forward", 120, 0.05)  # a batch that ran out of rows: its own size
    assert [(r.tokens, r.batches) for r in model.rates()["forward"]] == [(128, 1), (256, 1)]


def test_one_row_batches_under_the_optimum_count_for_it() -> None:
    """Rows of 1,100 tokens under the calibrated 2,048-token cap: each batch holds one row
    (1,100 tokens, the 1,024 class by its size), and is counted for the cap that cut it, so the
    2,048 class's rate follows what that cap gives; only the batches that explore the cap below
    count for 1,024."""
    worker, _ = calibrated()
    try:
        before = {r.tokens: r.batches for r in worker.throughput.rates()["forward"]}
        rows = batch_rows(worker, 40, 1100)
        after = {r.tokens: r.batches for r in worker.throughput.rates()["forward"]}
        assert sum(rows) == 40
        # Every EXPLORE_EVERY-th batch explores, alternately 1024 (one row still goes) and
        # 4096 (three rows): the others are one-row batches at the cap 2048. Counted by their
        # tokens, all the one-row batches would be of the 1,024 class.
        assert set(rows) == {1, 3}
        explored = len(rows) // EXPLORE_EVERY
        assert after[4096] - before[4096] == sum(1 for r in rows if r == 3)
        # At most one more for 1,024: the last batch, one row left, not cut by its cap.
        assert 1 <= after[1024] - before[1024] <= explored + 1
        assert after[2048] - before[2048] >= len(rows) - explored - 1
        assert worker.batch_caps()["forward"] == CACHE_TOKENS
    finally:
        worker.close()
