"""Expansion of unit masks to id rows, and aggregation of token scores to unit scores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from explainserve import _native as native

from . import reference as ref
from .strategies import STRATEGIES, binary_masks

# ---------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------


@st.composite
def expand_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    g = draw(st.integers(1, 8))
    p = draw(st.integers(0, 10))
    n = draw(st.integers(0, 24))
    masks = draw(binary_masks(p, g))
    t2u = np.array(draw(st.lists(st.integers(-1, g - 1), min_size=n, max_size=n)), np.int64)
    ids = np.array(draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)), np.int64)
    replacement = draw(st.integers(0, 2**40))
    return masks, t2u, ids, replacement


@given(expand_inputs())
def test_expand_ids_matches_reference(
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray, int],
) -> None:
    masks, t2u, ids, replacement = inputs
    out = native.expand_ids(masks, t2u, ids, replacement)
    assert out.dtype == np.int64
    assert out.shape == (masks.shape[0], len(ids))
    np.testing.assert_array_equal(out, ref.expand_ids(masks, t2u, ids, replacement))


@given(expand_inputs())
def test_expand_ids_accepts_non_contiguous_views(
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray, int],
) -> None:
    masks, t2u, ids, replacement = inputs
    expected = native.expand_ids(masks, t2u, ids, replacement)
    # The same values behind other strides: Fortran order, reversed rows, every other element.
    masks_f = np.asfortranarray(masks)
    np.testing.assert_array_equal(native.expand_ids(masks_f, t2u, ids, replacement), expected)
    reversed_rows = np.ascontiguousarray(masks[::-1])[::-1]
    assert not reversed_rows.flags.c_contiguous or len(masks) <= 1
    np.testing.assert_array_equal(native.expand_ids(reversed_rows, t2u, ids, replacement), expected)
    spread_t2u = np.repeat(t2u, 2)[::2]
    spread_ids = np.repeat(ids, 3)[::3]
    np.testing.assert_array_equal(
        native.expand_ids(masks, spread_t2u, spread_ids, replacement), expected
    )


def test_expand_ids_leaves_unmapped_tokens() -> None:
    masks = np.ones((3, 2), np.uint8)
    t2u = np.array([-1, 0, 1, -1], np.int64)
    ids = np.array([101, 7, 8, 102], np.int64)
    out = native.expand_ids(masks, t2u, ids, 0)
    np.testing.assert_array_equal(out, np.tile([101, 0, 0, 102], (3, 1)))


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------

FLOATS = st.floats(-1e3, 1e3, width=32)


@st.composite
def aggregate_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores (some NaN), a token -> unit map with -1 tokens, and units that may be empty."""
    r = draw(st.integers(0, 5))
    n = draw(st.integers(0, 20))
    n_units = draw(st.integers(0, 8))
    values = draw(st.lists(FLOATS, min_size=r * n, max_size=r * n))
    scores = np.array(values, dtype=np.float32).reshape(r, n)
    if draw(st.booleans()):
        nan_cells = draw(st.lists(st.booleans(), min_size=r * n, max_size=r * n))
        scores[np.array(nan_cells, dtype=bool).reshape(r, n)] = np.nan
    t2u = np.array(
        draw(st.lists(st.integers(-1, n_units - 1), min_size=n, max_size=n)), dtype=np.int64
    )
    return scores, t2u, n_units


def assert_aggregate_equal(actual: np.ndarray, expected: np.ndarray, strategy: str) -> None:
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    if strategy in ("mean", "sum"):
        # f64 accumulation then one rounding to f32: equal up to the order of the additions.
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("strategy", STRATEGIES)
@given(inputs=aggregate_inputs())
def test_aggregate_matches_reference(
    strategy: str, inputs: tuple[np.ndarray, np.ndarray, int]
) -> None:
    scores, t2u, n_units = inputs
    out = native.aggregate(scores, t2u, n_units, strategy)
    assert_aggregate_equal(out, ref.aggregate(scores, t2u, n_units, strategy), strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
@given(inputs=aggregate_inputs())
def test_aggregate_accepts_non_contiguous_views(
    strategy: str, inputs: tuple[np.ndarray, np.ndarray, int]
) -> None:
    scores, t2u, n_units = inputs
    expected = native.aggregate(scores, t2u, n_units, strategy)
    transposed = np.ascontiguousarray(scores.T).T  # Fortran order
    np.testing.assert_array_equal(native.aggregate(transposed, t2u, n_units, strategy), expected)
    # Every other column of a wider array, every other element of a longer map.
    wide = np.repeat(scores, 2, axis=1)[:, ::2]
    long_t2u = np.repeat(t2u, 2)[::2]
    np.testing.assert_array_equal(native.aggregate(wide, long_t2u, n_units, strategy), expected)
    # Reversed rows (negative stride).
    flipped = np.ascontiguousarray(scores[::-1])[::-1]
    np.testing.assert_array_equal(native.aggregate(flipped, t2u, n_units, strategy), expected)


@st.composite
def structured_units(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Maps with the shapes granularities give: one token per unit (contiguous or between
    specials), contiguous runs (words, sentences), or runs interleaved with earlier units."""
    kind = draw(st.sampled_from(["slice", "one_token", "runs", "interleaved"]))
    n_units = draw(st.integers(1, 8))
    units: list[int] = []
    if draw(st.booleans()):
        units.append(-1)
    for u in range(n_units):
        length = 1 if kind in ("slice", "one_token") else draw(st.integers(0, 4))
        units.extend([u] * length)
        if kind == "one_token" and draw(st.booleans()):
            units.append(-1)
        if kind == "interleaved" and u > 0 and draw(st.booleans()):
            units.append(draw(st.integers(0, u - 1)))
    if draw(st.booleans()):
        units.append(-1)
    return np.array(units, dtype=np.int64), n_units


@pytest.mark.parametrize("strategy", STRATEGIES)
@given(case=structured_units(), r=st.integers(1, 4), data=st.data())
def test_aggregate_matches_reference_on_granularity_layouts(
    strategy: str, case: tuple[np.ndarray, int], r: int, data: st.DataObject
) -> None:
    t2u, n_units = case
    n = len(t2u)
    values = data.draw(st.lists(FLOATS | st.just(np.nan), min_size=r * n, max_size=r * n))
    scores = np.array(values, dtype=np.float32).reshape(r, n)
    out = native.aggregate(scores, t2u, n_units, strategy)
    assert_aggregate_equal(out, ref.aggregate(scores, t2u, n_units, strategy), strategy)


def test_aggregate_nan_only_poisons_its_own_unit_and_row() -> None:
    scores = np.arange(12, dtype=np.float32).reshape(2, 6)
    scores[0, 1] = np.nan
    t2u = np.array([0, 0, 1, 1, 2, -1], np.int64)
    for strategy in STRATEGIES:
        out = native.aggregate(scores, t2u, 3, strategy)
        assert np.isnan(out[0, 0]), strategy
        assert not np.isnan(out[0, 1:]).any(), strategy
        assert not np.isnan(out[1]).any(), strategy


def test_aggregate_ignores_nan_on_unmapped_tokens() -> None:
    scores = np.array([[np.nan, 1.0, 2.0, np.nan]], np.float32)
    t2u = np.array([-1, 0, 0, -1], np.int64)
    for strategy in STRATEGIES:
        assert not np.isnan(native.aggregate(scores, t2u, 1, strategy)).any(), strategy


def test_aggregate_sums_in_f64() -> None:
    # 2^24 + 1 + 1 ... in f32 would stay at 2^24; accumulated in f64 it does not.
    n = 1001
    scores = np.ones((1, n), np.float32)
    scores[0, 0] = 2.0**24
    t2u = np.zeros(n, np.int64)
    out = native.aggregate(scores, t2u, 1, "sum")
    assert out[0, 0] == np.float32(2.0**24 + 1000)
    mean = native.aggregate(scores, t2u, 1, "mean")
    assert mean[0, 0] == np.float32((2.0**24 + 1000) / n)


def test_aggregate_signed_max_keeps_sign_and_first_on_ties() -> None:
    scores = np.array([[1.0, -3.0, 2.0, 3.0, -0.5, 0.5]], np.float32)
    t2u = np.array([0, 0, 0, 0, 1, 1], np.int64)
    np.testing.assert_array_equal(native.aggregate(scores, t2u, 2, "signed_max"), [[-3.0, -0.5]])
