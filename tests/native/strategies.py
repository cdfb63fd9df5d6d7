"""Hypothesis strategies and checks shared by the native tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

SEEDS = st.integers(min_value=0, max_value=2**64 - 1)
SAMPLERS = st.sampled_from(["sobol", "halton", "latin_hypercube"])
STRATEGIES = ("mean", "max", "min", "sum", "signed_max")
DISTANCES = ("cosine", "hamming", "euclidean")
GRANULARITIES = ("all_tokens", "token", "word", "sentence")


def strata(column: np.ndarray, bins: int) -> np.ndarray:
    """Index of the stratum [b / bins, (b + 1) / bins) of each value, exact despite rounding."""
    b = np.clip(np.floor(column * bins).astype(np.int64), 0, bins - 1)
    b = np.where(column < b / bins, b - 1, b)
    return np.where(column >= (b + 1) / bins, b + 1, b)


def one_per_stratum(column: np.ndarray, bins: int) -> bool:
    """Whether `column` has exactly one value in each of `bins` equal strata of [0, 1)."""
    return bool(np.array_equal(np.sort(strata(column, bins)), np.arange(bins)))


@st.composite
def binary_masks(draw: st.DrawFn, rows: int, g: int) -> np.ndarray:
    """A `(rows, g)` uint8 0/1 array."""
    bits = draw(st.lists(st.booleans(), min_size=rows * g, max_size=rows * g))
    return np.array(bits, dtype=np.uint8).reshape(rows, g)


def check_grouping(
    granularity: str,
    special: np.ndarray,
    offsets: np.ndarray,
    t2u: np.ndarray,
    spans: np.ndarray,
) -> None:
    """Invariants of every grouping: a partition in order of first token, spans from offsets."""
    n, u = len(t2u), len(spans)
    assert t2u.dtype == np.int64
    assert spans.dtype == np.int64
    assert spans.shape == (u, 2)
    if granularity == "all_tokens":
        np.testing.assert_array_equal(t2u, np.arange(n))
    else:
        assert (t2u[special] == -1).all()
        assert (t2u[~special] >= 0).all()
    firsts = [int(np.flatnonzero(t2u == k)[0]) for k in range(u)]
    assert firsts == sorted(firsts), "units are numbered in order of their first token"
    assert set(t2u[t2u >= 0].tolist()) == set(range(u))
    for k in range(u):
        own = offsets[t2u == k]
        non_empty = own[own[:, 0] < own[:, 1]]
        if len(non_empty):
            expected = (non_empty[:, 0].min(), non_empty[:, 1].max())
        else:
            expected = (own[0, 0], own[0, 0])
        assert tuple(spans[k]) == expected
