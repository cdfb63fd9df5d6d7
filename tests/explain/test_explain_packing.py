"""Packed suffixes: causal LMs' rows on a cached prefix run several to a batch row.

Both tiny LMs take SDPA attention and have a plain head, so their suffixes are packed; the
packed scores must equal those of every row run in full, for rows of many lengths packed
together, with the zero-embedding replacement too, and for several inputs in one batch.
"""

from __future__ import annotations

import numpy as np
import pytest
from lm_jobs import causal_job, scale

from explainserve.models.registry import ServedModel


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["logits", "log_softmax"])
@pytest.mark.parametrize("zero", [False, True])
def test_packed_rows_equal_full_rows(
    reuse_lms: dict[str, ServedModel],
    model: str,
    mode: str,
    zero: bool,
) -> None:
    rng = np.random.default_rng(7)
    jobs_ids = []
    for n in (23, 17):  # two inputs of different lengths in one batch
        reference = rng.integers(10, 200, size=n)
        rows = np.repeat(reference[None], 2 * n, axis=0)
        for r in range(2 * n - 1):  # rows changing at every position, some twice
            at = r % n
            rows[r, at:] = np.where(rng.random(n - at) < 0.3, rows[r, at:] + 1, rows[r, at:])
            rows[r, at] = reference[at] + 1
        jobs_ids.append(rows)
    results = {}
    for reuse in (True, False):
        m = reuse_lms[f"{model}-{reuse}"]
        runner = m.worker.runner
        if reuse:
            assert runner.packing  # SDPA attention and a plain head
        stats = m.worker.stats
        before = (stats.padded_tokens, stats.real_tokens, stats.naive_tokens)
        jobs = []
        for rows in jobs_ids:
            replaced = None
            if zero:
                replaced = np.zeros(rows.shape, dtype=bool)
                replaced[::3, -4] = True
            reference = rows[-1].copy()  # the last row is unchanged
            p = len(reference) - 4
            ids = np.arange(5, 9, dtype=np.int64)  # any 4 target ids, at the last 4 positions
            jobs.append(causal_job(rows, reference, p, targets=ids, mode=mode, replaced=replaced))
        m.worker.submit_all(jobs)
        results[reuse] = [j.future.result() for j in jobs]
        padded = stats.padded_tokens - before[0]
        run = stats.real_tokens - before[1]
        naive = stats.naive_tokens - before[2]
        if reuse:
            # Packed: little padding beside the tokens run, far fewer than every row in full.
            assert run < 0.8 * naive
            assert padded < 1.3 * run
    for a, b in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale(b))
