"""The reference's own pass is the prefix pass: rows equal to the reference are scored from it.

A causal LM's Explain sends the unperturbed prompt + continuation twice: the teacher-forced
row (the continuation's scores) and, for Occlusion, the design's unperturbed row. Both carry the
input as their `reference`; in a batch with the method's perturbed rows they share one prefix
row, which then runs the whole reference and scores them, and they run no suffix of their own.
The scores must equal every row run in full, and the counters must show exactly that: one
prefix row of `n` tokens, then each perturbed row from its first change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from lm_jobs import causal_job, scale

from explainserve.models.registry import ServedModel
from explainserve.scheduling.execute import Executor
from explainserve.scheduling.interfaces import WorkerStats
from explainserve.scheduling.jobs import ForwardJob


def _jobs(
    reference: np.ndarray, p: int, mode: str, zero: bool
) -> tuple[ForwardJob, ForwardJob, list[int]]:
    """The teacher-forced job (its row is the reference) and an Occlusion-like job: row 0
    unchanged, row r (1..n-1) changing position r - 1; and the perturbed rows' starts."""
    n = len(reference)
    rows = np.repeat(reference[None], n, axis=0)
    replaced = np.zeros(rows.shape, dtype=bool) if zero else None
    for r in range(1, n):
        if replaced is not None:
            replaced[r, r - 1] = True
        else:
            rows[r, r - 1] = reference[r - 1] + 1
    base = causal_job(reference[None].copy(), reference, p, mode=mode)
    method = causal_job(rows, reference, p, mode=mode, replaced=replaced)
    return base, method, [min(r - 1, p - 1) for r in range(1, n)]


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["logits", "log_softmax"])
@pytest.mark.parametrize("head", ["plain", "whole"])
@pytest.mark.parametrize("zero", [False, True])
def test_rows_equal_to_the_reference_are_scored_from_the_prefix_pass(
    reuse_lms: dict[str, ServedModel],
    model: str,
    mode: str,
    head: str,
    zero: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`head="whole"`: the runner without the target-row head (the prefix pass then computes
    the logits of the kept positions, and the suffixes run in groups, not packed)."""
    reference = np.random.default_rng(3).integers(10, 200, size=19).astype(np.int64)
    n, p = len(reference), 14
    results = {}
    for reuse in (True, False):
        m = reuse_lms[f"{model}-{reuse}"]
        if head == "whole":
            monkeypatch.setattr(m.worker.runner, "target_head", None)
        base, method, starts = _jobs(reference, p, mode, zero)
        stats = m.worker.stats
        before = (stats.batches, stats.rows, stats.real_tokens, stats.naive_tokens)
        m.worker.submit_all([base, method])  # queued together: one batch
        results[reuse] = (base.future.result(), method.future.result())
        counted = (
            stats.batches - before[0],
            stats.rows - before[1],
            stats.real_tokens - before[2],
            stats.naive_tokens - before[3],
        )
        if reuse:
            # One prefix row of the whole reference (both jobs' rows equal to it scored from
            # it), then each perturbed row from its first change.
            assert counted == (1, n + 1, n + sum(n - s for s in starts), (n + 1) * n)
        else:
            assert counted == (1, n + 1, (n + 1) * n, (n + 1) * n)
    for a, b in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale(b))
    # The two unperturbed rows: the same sequence, the same pass, the same scores.
    np.testing.assert_array_equal(results[True][0][0], results[True][1][0])


def test_two_references_keep_two_prefix_rows(reuse_lms: dict[str, ServedModel]) -> None:
    """Two inputs in one batch: a prefix row each (each the whole reference, since each has
    its unperturbed rows in the batch), scores equal to full recomputation."""
    rng = np.random.default_rng(5)
    references = [rng.integers(10, 200, size=n).astype(np.int64) for n in (17, 12)]
    results = {}
    for reuse in (True, False):
        m = reuse_lms[f"gpt2-{reuse}"]
        jobs, expected = [], 0
        for reference in references:
            base, method, starts = _jobs(reference, len(reference) - 3, "logits", False)
            jobs += [base, method]
            expected += len(reference) + sum(len(reference) - s for s in starts)
        stats = m.worker.stats
        before = stats.real_tokens
        m.worker.submit_all(jobs)
        results[reuse] = [j.future.result() for j in jobs]
        if reuse:
            assert stats.real_tokens - before == expected
    for a, b in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale(b))


def test_without_unchanged_rows_the_prefix_stops_at_the_latest_start(
    reuse_lms: dict[str, ServedModel],
) -> None:
    """Only perturbed rows (a later batch of a large design): the prefix row runs to the
    latest start among them, not the whole reference."""
    reference = np.random.default_rng(9).integers(10, 200, size=20).astype(np.int64)
    n, p = len(reference), 15
    _, method, starts = _jobs(reference, p, "logits", False)
    job = causal_job(method.ids[1:8].copy(), reference, p)  # changes at positions 0..6
    m = reuse_lms["llama-True"]
    before = m.worker.stats.real_tokens
    m.worker.submit(job)
    job.future.result()
    assert m.worker.stats.real_tokens - before == max(starts[:7]) + sum(n - s for s in starts[:7])


def test_cost_models_record_the_tokens_the_prefix_path_ran(
    reuse_lms: dict[str, ServedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's cost and throughput models get a prefix-path batch's tokens as run (its
    padded prefix and suffix tokens), not its rows x width; a full batch's rows x width."""
    reference = np.random.default_rng(11).integers(10, 200, size=24).astype(np.int64)
    n = len(reference)
    for reuse in (True, False):
        worker = reuse_lms[f"gpt2-{reuse}"].worker
        seen: dict[str, list[int]] = {"cost": [], "throughput": []}
        for name in seen:
            model = getattr(worker, name)
            observe = model.observe

            def spy(
                kind: str, tokens: int, seconds: float, _o=observe, _s=seen[name], **kw
            ) -> None:  # type: ignore[no-untyped-def]
                _s.append(tokens)
                _o(kind, tokens, seconds, **kw)

            monkeypatch.setattr(model, "observe", spy)
        base, method, _ = _jobs(reference, n - 4, "logits", False)
        before = worker.stats.padded_tokens
        worker.submit_all([base, method])
        method.future.result()
        worker.wait_idle()
        ran = worker.stats.padded_tokens - before
        assert seen["cost"] == seen["throughput"] == [ran]
        if reuse:
            assert ran < 0.7 * (n + 1) * n  # the prefix path: well under rows x width
        else:
            assert ran == (n + 1) * n


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_packed_rows_with_the_additive_mask_of_eager_attention(
    reuse_lms: dict[str, ServedModel], model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SDPA gets the packed rows' boolean mask as it is; the eager attention, which adds its
    mask to the scores, gets it as 0 / the dtype's minimum. Both forms (SDPA takes either)
    give the scores of every row run in full."""
    reference = np.random.default_rng(13).integers(10, 200, size=21).astype(np.int64)
    results = []
    for name, additive in (
        (f"{model}-True", False),
        (f"{model}-True", True),
        (f"{model}-False", False),
    ):
        m = reuse_lms[name]
        monkeypatch.setattr(m.worker.runner, "_additive_mask", additive)
        base, method, _ = _jobs(reference, 16, "logits", False)
        m.worker.submit_all([base, method])
        results.append(method.future.result())
    for out in results[:2]:
        np.testing.assert_allclose(out, results[2], rtol=0, atol=1e-5 * scale(results[2]))


def test_a_job_without_positions_in_a_causal_batch_is_an_error(
    reuse_lms: dict[str, ServedModel],
) -> None:
    """A forward job that names no positions, in a batch scored at a causal LM's last
    positions: a real error (not an assert, gone under `python -O`), which makes the worker
    retry the batch's jobs one by one."""
    m = reuse_lms["gpt2-False"]
    reference = np.random.default_rng(17).integers(10, 200, size=9).astype(np.int64)
    good = causal_job(reference[None].copy(), reference, 6)
    bad = ForwardJob(
        ids=reference[None].copy(), attention=np.ones(9, dtype=np.int64), targets=np.zeros(1)
    )
    executor = Executor(m.worker.runner, WorkerStats(), reuse=False)
    with pytest.raises(ValueError, match="a forward job without positions in a batch scored"):
        executor.run([(good, 0, 1), (bad, 0, 1)])


def test_a_runner_that_keeps_no_positions_is_an_error(
    reuse_lms: dict[str, ServedModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prefix pass must keep the positions it is asked to (`Runner.prefix_cache`): rows
    equal to their reference are scored from them. A runner that keeps none fails the job with
    a real error, not an assert."""
    m = reuse_lms["gpt2-True"]
    runner = m.worker.runner
    real = runner.prefix_cache

    def keeps_nothing(ids: Any, attention: Any, keep: int = 0) -> Any:
        passed = real(ids, attention, keep)
        return None if passed is None else (passed[0], None)

    monkeypatch.setattr(runner, "prefix_cache", keeps_nothing)
    reference = np.random.default_rng(19).integers(10, 200, size=12).astype(np.int64)
    _, method, _ = _jobs(reference, 9, "logits", False)  # its row 0 equals the reference
    m.worker.submit(method)
    with pytest.raises(RuntimeError, match="prefix_cache kept none of the last"):
        method.future.result(timeout=30)
