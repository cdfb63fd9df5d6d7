"""Estimators: occlusion deltas, LIME ridge, KernelSHAP (constrained WLS), Sobol (Jansen)."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explainserve import _native as native

from . import reference as ref
from .strategies import DISTANCES, SEEDS, binary_masks

OUTPUT = st.floats(-10.0, 10.0)


@st.composite
def outputs(draw: st.DrawFn, p: int, t: int) -> np.ndarray:
    values = draw(st.lists(OUTPUT, min_size=p * t, max_size=p * t))
    return np.array(values, dtype=np.float64).reshape(p, t)


# ---------------------------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------------------------


@given(data=st.data(), p=st.integers(2, 30), t=st.integers(1, 4))
def test_occlusion_scores_match_reference(data: st.DataObject, p: int, t: int) -> None:
    out_rows = data.draw(outputs(p, t))
    scores = native.occlusion_scores(out_rows)
    assert scores.shape == (t, p - 1)
    np.testing.assert_array_equal(scores, ref.occlusion_scores(out_rows))


def test_occlusion_scores_of_a_linear_model_are_its_coefficients() -> None:
    g = 7
    beta = np.arange(1.0, g + 1.0)
    z = 1 - native.occlusion_masks(g).astype(np.float64)
    y = (3.0 + z @ beta)[:, None]
    np.testing.assert_allclose(native.occlusion_scores(y), beta[None, :], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# LIME
# ---------------------------------------------------------------------------------------------


@st.composite
def lime_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    g = draw(st.integers(1, 8))
    p = draw(st.integers(2, 40))
    t = draw(st.integers(1, 3))
    return draw(binary_masks(p, g)), draw(outputs(p, t))


@given(
    inputs=lime_inputs(),
    distance=st.sampled_from(DISTANCES),
    kernel_width=st.none() | st.floats(0.5, 5.0),
    alpha=st.floats(0.01, 10.0),
)
def test_lime_scores_match_reference_ridge(
    inputs: tuple[np.ndarray, np.ndarray],
    distance: str,
    kernel_width: float | None,
    alpha: float,
) -> None:
    masks, out_rows = inputs
    scores = native.lime_scores(masks, out_rows, distance, kernel_width, alpha)
    expected = ref.lime_scores(masks, out_rows, distance, kernel_width, alpha)
    assert scores.shape == (out_rows.shape[1], masks.shape[1])
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("distance", DISTANCES)
@given(g=st.integers(1, 10), seed=SEEDS)
@settings(max_examples=15)
def test_lime_recovers_a_linear_model_without_penalty(distance: str, g: int, seed: int) -> None:
    rng = np.random.default_rng(seed % 2**32)
    masks = native.bernoulli_masks(40 * g, g, 0.5, seed)
    z = 1.0 - masks
    if np.linalg.matrix_rank(z - z.mean(axis=0)) < g:
        return  # an unlucky tiny design; the recovery needs a full-rank one
    beta = rng.normal(size=(g, 3))
    y = rng.normal(size=3) + z @ beta
    scores = native.lime_scores(masks, y, distance, None, 0.0)
    np.testing.assert_allclose(scores, beta.T, atol=1e-8)


def test_lime_default_arguments() -> None:
    masks = native.bernoulli_masks(60, 6, 0.4, 1)
    y = np.random.default_rng(0).normal(size=(60, 2))
    default = native.lime_scores(masks, y)
    np.testing.assert_array_equal(default, native.lime_scores(masks, y, "cosine", None, 1.0))
    np.testing.assert_allclose(
        default, native.lime_scores(masks, y, "cosine", 0.75 * math.sqrt(6), 1.0), rtol=1e-12
    )
    np.testing.assert_allclose(default, ref.lime_scores(masks, y), rtol=1e-8)


def test_lime_accepts_non_contiguous_views() -> None:
    masks = native.bernoulli_masks(50, 5, 0.5, 3)
    y = np.random.default_rng(1).normal(size=(50, 3))
    expected = native.lime_scores(masks, y)
    np.testing.assert_allclose(
        native.lime_scores(np.asfortranarray(masks), np.asfortranarray(y)), expected, rtol=1e-12
    )
    wide = np.repeat(y, 2, axis=1)[:, ::2]
    np.testing.assert_allclose(native.lime_scores(masks, wide), expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# KernelSHAP
# ---------------------------------------------------------------------------------------------


@st.composite
def shap_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A design with exactly one all-kept and one all-replaced row, positive weights."""
    g = draw(st.integers(1, 7))
    m = draw(st.integers(0, 40))
    middle = draw(binary_masks(m, g))
    sums = middle.sum(axis=1)
    middle = middle[(sums > 0) & (sums < g)]
    masks = np.vstack([np.zeros((1, g)), np.ones((1, g)), middle]).astype(np.uint8)
    order = draw(st.permutations(range(len(masks))))
    masks = masks[list(order)]
    weights = np.array(
        draw(st.lists(st.floats(0.01, 10.0), min_size=len(masks), max_size=len(masks)))
    )
    t = draw(st.integers(1, 3))
    return masks, weights, draw(outputs(len(masks), t))


def efficiency_gap(masks: np.ndarray, out_rows: np.ndarray, phi: np.ndarray) -> np.ndarray:
    sums = masks.sum(axis=1)
    full = out_rows[np.flatnonzero(sums == 0)[0]]
    empty = out_rows[np.flatnonzero(sums == masks.shape[1])[0]]
    return phi.sum(axis=1) - (full - empty)


@given(inputs=shap_inputs())
def test_kernel_shap_efficiency_is_exact(
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    masks, weights, out_rows = inputs
    phi = native.kernel_shap_scores(masks, weights, out_rows)
    assert phi.shape == (out_rows.shape[1], masks.shape[1])
    assert np.isfinite(phi).all()
    np.testing.assert_allclose(efficiency_gap(masks, out_rows, phi), 0.0, atol=1e-9)


@given(inputs=shap_inputs())
def test_kernel_shap_matches_reference_on_full_rank_designs(
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    masks, weights, out_rows = inputs
    g = masks.shape[1]
    z = 1.0 - masks
    x = z[:, :-1] - z[:, -1:]
    if g > 1 and np.linalg.cond(x.T @ (weights[:, None] * x)) > 1e8:
        return  # singular or nearly: the ridge fallback is tested separately
    phi = native.kernel_shap_scores(masks, weights, out_rows)
    expected = ref.kernel_shap_scores(masks, weights, out_rows)
    np.testing.assert_allclose(phi, expected, rtol=1e-6, atol=1e-8)


def set_function(g: int, rng: np.random.Generator) -> dict[frozenset[int], float]:
    """A random game with pairwise and higher-order interactions."""
    singles = rng.normal(size=g)
    pairs = rng.normal(size=(g, g))
    value = {}
    for size in range(g + 1):
        for subset in combinations(range(g), size):
            s = frozenset(subset)
            v = sum(singles[i] for i in s) + sum(pairs[i, j] for i in s for j in s if i < j)
            value[s] = v + rng.normal()  # a fully arbitrary part on top
    return value


@pytest.mark.parametrize("g", range(1, 9))
def test_kernel_shap_enumerated_design_gives_exact_shapley(g: int) -> None:
    rng = np.random.default_rng(100 + g)
    value = set_function(g, rng)
    masks, weights = native.kernel_shap_masks(2**g, g, 0)
    out_rows = np.array([[value[frozenset(np.flatnonzero(row == 0).tolist())]] for row in masks])
    phi = native.kernel_shap_scores(masks, weights, out_rows)
    np.testing.assert_allclose(phi[0], ref.brute_force_shapley(value, g), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("n", "g"), [(2**6, 6), (300, 12), (81, 9), (1000, 40)])
def test_kernel_shap_additive_model_gives_its_coefficients(n: int, g: int) -> None:
    rng = np.random.default_rng(g)
    masks, weights = native.kernel_shap_masks(n, g, 77)
    beta = rng.normal(size=(g, 2))
    y = np.array([1.5, -2.0]) + (1.0 - masks) @ beta
    phi = native.kernel_shap_scores(masks, weights, y)
    np.testing.assert_allclose(phi, beta.T, atol=1e-9)


def test_kernel_shap_singular_design_stays_finite() -> None:
    # Four units, only the two ends and one coalition: an underdetermined fit.
    masks = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], np.uint8)
    weights = np.array([0.0, 0.0, 1.0])
    y = np.array([[2.0], [-1.0], [0.5]])
    phi = native.kernel_shap_scores(masks, weights, y)
    assert np.isfinite(phi).all()
    np.testing.assert_allclose(phi.sum(), 3.0, atol=1e-9)


def test_kernel_shap_accepts_non_contiguous_views() -> None:
    masks, weights = native.kernel_shap_masks(200, 9, 5)
    y = np.random.default_rng(2).normal(size=(200, 3))
    expected = native.kernel_shap_scores(masks, weights, y)
    got = native.kernel_shap_scores(
        np.asfortranarray(masks), np.repeat(weights, 2)[::2], np.asfortranarray(y)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Sobol
# ---------------------------------------------------------------------------------------------


@given(data=st.data(), g=st.integers(1, 6), k=st.integers(1, 12), t=st.integers(1, 3))
def test_sobol_indices_match_reference_jansen(data: st.DataObject, g: int, k: int, t: int) -> None:
    out_rows = data.draw(outputs((g + 2) * k, t))
    first, total = native.sobol_indices(out_rows, g, k)
    exp_first, exp_total = ref.sobol_indices(out_rows, g, k)
    assert first.shape == total.shape == (t, g)
    np.testing.assert_allclose(first, exp_first, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(total, exp_total, rtol=1e-9, atol=1e-9)


def test_sobol_indices_zero_variance_gives_zeros() -> None:
    out_rows = np.tile([[3.0, 1.0]], (5 * 4, 1))
    out_rows[:, 1] = np.arange(20.0)
    first, total = native.sobol_indices(out_rows, 3, 4)
    np.testing.assert_array_equal(first[0], np.zeros(3))
    np.testing.assert_array_equal(total[0], np.zeros(3))


def test_sobol_indices_of_an_additive_model() -> None:
    """f = sum a_i m_i over independent balanced bits: S_i = ST_i = a_i^2 / sum a^2, exactly
    (to float rounding) on this design, not within the estimator's sampling error: the 1024
    Sobol points' A and B bits (2g = 10 coordinates) are every one of the 2^10 combinations
    once, a full factorial, over which the Jansen estimators of an additive model equal the
    variance shares. (With random points, k = 1024 would leave errors of a few hundredths:
    latin_hypercube's, over six seeds, miss the first-order indices by up to 0.07.)"""
    g, k = 5, 1024
    a = np.array([3.0, 2.0, 1.0, 0.5, 0.0])
    masks = native.sobol_masks(g, k, "sobol", 11)
    ab = np.hstack([masks[:k], masks[k : 2 * k]]).astype(np.int64)
    assert len(np.unique(ab @ (1 << np.arange(2 * g)))) == k  # the full factorial
    y = (masks.astype(np.float64) @ a)[:, None]
    first, total = native.sobol_indices(y, g, k)
    share = a**2 / (a**2).sum()
    np.testing.assert_allclose(total[0], share, rtol=0, atol=1e-12)
    np.testing.assert_allclose(first[0], share, rtol=0, atol=1e-12)
    assert total[0, -1] == 0.0  # a unit the model ignores: f(A) == f(C_i) exactly
