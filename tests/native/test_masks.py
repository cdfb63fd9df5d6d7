"""Masks and designs: occlusion, Bernoulli (LIME), KernelSHAP, Sobol, and the QMC points."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explainserve import _native as native

from . import reference as ref
from .strategies import SAMPLERS, SEEDS, one_per_stratum

# ---------------------------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------------------------


@given(g=st.integers(1, 300))
def test_occlusion_masks_match_reference(g: int) -> None:
    out = native.occlusion_masks(g)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref.occlusion_masks(g))


# ---------------------------------------------------------------------------------------------
# Bernoulli (LIME)
# ---------------------------------------------------------------------------------------------


@given(n=st.integers(1, 6), g=st.integers(1, 12), prob=st.floats(0.0, 1.0), seed=SEEDS)
def test_bernoulli_masks_match_reference_row_streams(
    n: int, g: int, prob: float, seed: int
) -> None:
    # Cell (r, j) is lane j % 4 (16 bits) of draw j // 4 of `Rng::for_stream(seed, r)` below
    # round(prob * 65536).
    out = native.bernoulli_masks(n, g, prob, seed)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref.bernoulli_masks(n, g, prob, seed))


@given(n=st.integers(1, 50), g=st.integers(1, 50), prob=st.floats(0.05, 0.95), seed=SEEDS)
def test_bernoulli_masks_are_reproducible_and_seeded(
    n: int, g: int, prob: float, seed: int
) -> None:
    a = native.bernoulli_masks(n, g, prob, seed)
    assert a.shape == (n, g)
    assert set(np.unique(a)) <= {0, 1}
    np.testing.assert_array_equal(a, native.bernoulli_masks(n, g, prob, seed))
    if n * g >= 64:
        assert not np.array_equal(a, native.bernoulli_masks(n, g, prob, seed ^ 1))


@pytest.mark.parametrize(
    "step", [0.0, 0.25, 0.4999, 0.5, 0.5001, 1.0, 1.5, 19660.8, 32767.5, 65535.4999, 65535.5]
)
def test_bernoulli_probability_is_rounded_to_sixteen_bits(step: float) -> None:
    # prob = step / 65536: the threshold is step rounded to an integer, halves up.
    prob = step / 65536
    assert ref.bernoulli_threshold(prob) == math.floor(step + 0.5)
    out = native.bernoulli_masks(7, 13, prob, 99)
    np.testing.assert_array_equal(out, ref.bernoulli_masks(7, 13, prob, 99))
    if step < 0.5:
        assert not out.any()
    if step >= 65535.5:
        assert out.all()


def test_bernoulli_lanes_of_one_draw() -> None:
    # The first four cells of a row are the four 16-bit lanes of its first draw, low bits first.
    draw = ref.Rng.for_stream(42, 3).next_u64()
    lanes = [(draw >> (16 * i)) & 0xFFFF for i in range(4)]
    for t in sorted({*lanes, 1, 65535}):
        out = native.bernoulli_masks(4, 4, t / 65536, 42)
        assert out[3].tolist() == [int(lane < t) for lane in lanes]


def test_bernoulli_rows_do_not_depend_on_the_number_of_rows() -> None:
    # Each row has its own stream, so a longer draw extends a shorter one.
    short = native.bernoulli_masks(10, 33, 0.5, 7)
    long = native.bernoulli_masks(100, 33, 0.5, 7)
    np.testing.assert_array_equal(long[:10], short)


@pytest.mark.parametrize("prob", [0.1, 0.5, 0.73])
def test_bernoulli_frequency_close_to_prob(prob: float) -> None:
    out = native.bernoulli_masks(2000, 500, prob, 12345)
    # 10^6 cells: the standard error is at most 5e-4.
    assert abs(out.mean() - prob) < 3e-3
    # Neither rows nor columns are stuck.
    assert abs(out.mean(axis=0) - prob).max() < 0.06
    assert abs(out.mean(axis=1) - prob).max() < 0.12


@given(n=st.integers(1, 40), g=st.integers(1, 40), seed=SEEDS)
def test_bernoulli_prob_zero_and_one_are_exact(n: int, g: int, seed: int) -> None:
    np.testing.assert_array_equal(native.bernoulli_masks(n, g, 0.0, seed), np.zeros((n, g)))
    np.testing.assert_array_equal(native.bernoulli_masks(n, g, 1.0, seed), np.ones((n, g)))


# ---------------------------------------------------------------------------------------------
# KernelSHAP
# ---------------------------------------------------------------------------------------------


@given(g=st.integers(1, 9), extra=st.integers(0, 40), seed=SEEDS)
def test_kernel_shap_enumerated_design_is_exact(g: int, extra: int, seed: int) -> None:
    masks, weights = native.kernel_shap_masks(2**g + extra, g, seed)
    expected_masks, expected_weights = ref.kernel_shap_enumerated(g)
    assert masks.dtype == np.uint8
    assert weights.dtype == np.float64
    np.testing.assert_array_equal(masks, expected_masks)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-14, atol=0)
    assert weights[0] == 0.0
    assert weights[-1] == 0.0


@given(
    g=st.integers(2, 14),
    n=st.integers(2, 400),
    seed=SEEDS,
)
def test_kernel_shap_sampled_design_structure(g: int, n: int, seed: int) -> None:
    if 2**g <= n:
        n = 2**g - 1  # stay in the sampling regime
    masks, weights = native.kernel_shap_masks(n, g, seed)
    assert masks.shape == (n, g)
    assert weights.shape == (n,)
    np.testing.assert_array_equal(masks[0], np.zeros(g))
    np.testing.assert_array_equal(masks[1], np.ones(g))
    np.testing.assert_array_equal(weights[:2], [0.0, 0.0])
    np.testing.assert_array_equal(weights[2:], np.ones(n - 2))
    kept = g - masks[2:].sum(axis=1)
    assert ((kept >= 1) & (kept <= g - 1)).all(), "sampled coalitions keep 1..g-1 units"
    for first in range(2, n - 1, 2):
        np.testing.assert_array_equal(masks[first + 1], 1 - masks[first])
    again_masks, again_weights = native.kernel_shap_masks(n, g, seed)
    np.testing.assert_array_equal(again_masks, masks)
    np.testing.assert_array_equal(again_weights, weights)
    if n >= 12 and g >= 6:
        assert not np.array_equal(native.kernel_shap_masks(n, g, seed ^ 1)[0], masks)


def test_kernel_shap_sampled_sizes_follow_the_kernel() -> None:
    g, pairs = 16, 20_000  # 2^16 > 2 + 2 * pairs: the sampling regime
    masks, _ = native.kernel_shap_masks(2 + 2 * pairs, g, 2024)
    first = masks[2::2]
    kept = g - first.sum(axis=1).astype(np.int64)
    probs = ref.kernel_shap_size_probs(g)
    counts = np.bincount(kept, minlength=g + 1)
    assert counts[0] == 0
    assert counts[g] == 0
    for k, pk in probs.items():
        sd = np.sqrt(pk * (1 - pk) / pairs)
        assert abs(counts[k] / pairs - pk) < 5 * sd, (k, counts[k] / pairs, pk)
    # The kept set is uniform among the sets of its size: each unit kept with frequency k / g.
    for k in range(1, g):
        rows = first[kept == k]
        freq = 1.0 - rows.mean(axis=0)
        sd = np.sqrt((k / g) * (1 - k / g) / len(rows))
        assert abs(freq - k / g).max() < 5 * sd + 1e-9, (k, freq)


def test_kernel_shap_odd_budget_leaves_last_row_unpaired() -> None:
    masks, weights = native.kernel_shap_masks(9, 6, 3)
    assert masks.shape == (9, 6)
    for first in (2, 4, 6):
        np.testing.assert_array_equal(masks[first + 1], 1 - masks[first])
    assert 1 <= 6 - masks[8].sum() <= 5
    assert weights[8] == 1.0


@pytest.mark.parametrize("n", [2, 3, 50])
def test_kernel_shap_single_unit_has_two_rows(n: int) -> None:
    masks, weights = native.kernel_shap_masks(n, 1, 0)
    np.testing.assert_array_equal(masks, [[0], [1]])
    np.testing.assert_array_equal(weights, [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# Sobol masks and QMC points
# ---------------------------------------------------------------------------------------------


@given(g=st.integers(1, 12), k=st.integers(1, 20), sampler=SAMPLERS, seed=SEEDS)
def test_sobol_masks_threshold_the_qmc_design(g: int, k: int, sampler: str, seed: int) -> None:
    out = native.sobol_masks(g, k, sampler, seed)
    assert out.dtype == np.uint8
    points = native.qmc_points(k, 2 * g, sampler, seed)
    np.testing.assert_array_equal(out, ref.sobol_masks_from_points(points, g))


@given(g=st.integers(1, 40), k=st.integers(1, 32), sampler=SAMPLERS, seed=SEEDS)
def test_sobol_masks_block_structure(g: int, k: int, sampler: str, seed: int) -> None:
    out = native.sobol_masks(g, k, sampler, seed)
    assert out.shape == ((g + 2) * k, g)
    a, b = out[:k], out[k : 2 * k]
    for i in range(g):
        c = out[(2 + i) * k : (3 + i) * k]
        expected = a.copy()
        expected[:, i] = b[:, i]
        np.testing.assert_array_equal(c, expected)
    np.testing.assert_array_equal(out, native.sobol_masks(g, k, sampler, seed))


@given(k=st.integers(1, 200), d=st.integers(1, 30), sampler=SAMPLERS, seed=SEEDS)
def test_qmc_points_in_unit_cube_and_reproducible(k: int, d: int, sampler: str, seed: int) -> None:
    x = native.qmc_points(k, d, sampler, seed)
    assert x.shape == (k, d)
    assert x.dtype == np.float64
    assert ((x >= 0.0) & (x < 1.0)).all()
    np.testing.assert_array_equal(x, native.qmc_points(k, d, sampler, seed))
    if k >= 4:
        assert not np.array_equal(x, native.qmc_points(k, d, sampler, seed ^ 1))


@given(k=st.integers(1, 500), d=st.integers(1, 8), seed=SEEDS)
def test_latin_hypercube_one_point_per_stratum(k: int, d: int, seed: int) -> None:
    x = native.qmc_points(k, d, "latin_hypercube", seed)
    for j in range(d):
        assert one_per_stratum(x[:, j], k), j


@given(m=st.integers(0, 10), d=st.integers(1, 300), seed=SEEDS)
@settings(max_examples=25)
def test_sobol_power_of_two_points_are_balanced(m: int, d: int, seed: int) -> None:
    k = 2**m
    x = native.qmc_points(k, d, "sobol", seed)
    for j in range(d):
        assert one_per_stratum(x[:, j], k), j
    if k >= 2:
        # What the Sobol masks rely on: exactly half of every column is replaced.
        np.testing.assert_array_equal((x < 0.5).sum(axis=0), np.full(d, k // 2))


@given(j=st.integers(0, 4), m=st.integers(1, 3), seed=SEEDS)
def test_halton_prime_powers_are_stratified(j: int, m: int, seed: int) -> None:
    base = [2, 3, 5, 7, 11][j]
    k = base**m
    x = native.qmc_points(k, j + 1, "halton", seed)
    assert one_per_stratum(x[:, j], k)


@pytest.mark.parametrize("sampler", ["sobol", "halton", "latin_hypercube"])
def test_qmc_points_are_roughly_uniform(sampler: str) -> None:
    x = native.qmc_points(4096, 16, sampler, 99)
    np.testing.assert_allclose(x.mean(axis=0), 0.5, atol=0.01)
    np.testing.assert_allclose(x.var(axis=0), 1 / 12, atol=0.01)


# ---------------------------------------------------------------------------------------------
# Determinism across thread counts
# ---------------------------------------------------------------------------------------------

DIGEST = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from explainserve import _native as native

    def digest() -> str:
        h = hashlib.sha256()
        arrays = [
            native.bernoulli_masks(3000, 70, 0.3, 5),
            *native.kernel_shap_masks(3001, 40, 6),
            native.sobol_masks(300, 16, "sobol", 7),
            native.sobol_masks(60, 50, "halton", 8),
            native.sobol_masks(60, 50, "latin_hypercube", 9),
            native.sobol_masks(1024, 4, "latin_hypercube", 15),  # filled by all threads
            native.qmc_points(2000, 600, "sobol", 10),
        ]
        scores = native.qmc_points(2000, 300, "halton", 11).astype(np.float32)
        t2u = np.repeat(np.arange(100), 3).astype(np.int64)
        arrays += [native.aggregate(scores, t2u, 100, s) for s in ("mean", "sum", "signed_max")]
        masks = native.bernoulli_masks(3000, 100, 0.5, 12)
        arrays.append(native.expand_ids(masks, t2u, np.arange(300, dtype=np.int64), 0))
        y = native.qmc_points(3000, 3, "halton", 13)
        arrays.append(native.lime_scores(masks, y))
        design, weights = native.kernel_shap_masks(3000, 30, 14)
        arrays.append(native.kernel_shap_scores(design, weights, y))
        arrays += native.sobol_indices(y[: 32 * 90], 30, 90)
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()
    """
)


@pytest.mark.parametrize("threads", [1, 3])
def test_results_do_not_depend_on_the_thread_count(threads: int) -> None:
    namespace: dict[str, Any] = {}
    exec(DIGEST, namespace)
    here = namespace["digest"]()
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    child = subprocess.run(
        [sys.executable, "-c", DIGEST + "\nprint(digest())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert child.stdout.strip() == here
