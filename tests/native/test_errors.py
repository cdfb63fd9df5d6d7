"""Errors: the exception tree, each class in its documented case, and type errors by argument."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from explainserve import _native as native

U8 = np.uint8
I64 = np.int64
F32 = np.float32
F64 = np.float64

EXCEPTIONS = [
    native.ShapeError,
    native.EmptyUnitsError,
    native.IdOutOfRangeError,
    native.UnknownStrategyError,
    native.InvalidParameterError,
    native.TooLargeError,
]


@pytest.mark.parametrize("exc", EXCEPTIONS)
def test_exception_tree(exc: type[Exception]) -> None:
    assert issubclass(exc, native.NativeError)
    assert issubclass(exc, ValueError)
    assert issubclass(native.NativeError, ValueError)
    assert exc.__module__.endswith("_native")


def _masks(p: int, g: int) -> np.ndarray:
    return np.zeros((p, g), U8)


def _shap_design(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, U8)


def _group(granularity: str, n: int, text: str = "abc def", **kw: Any) -> Callable[[], object]:
    special = kw.get("special", np.zeros(n, bool))
    offsets = kw.get("offsets", np.zeros((n, 2), I64))
    word_ids = kw.get("word_ids")
    return lambda: native.group_units(granularity, special, offsets, word_ids, text)


NAN = math.nan

# (id, call, exception class, fragments of the message)
CASES: list[tuple[str, Callable[[], object], type[Exception], list[str]]] = [
    # g = 0
    ("occlusion-g0", lambda: native.occlusion_masks(0), native.EmptyUnitsError, ["no units"]),
    (
        "bernoulli-g0",
        lambda: native.bernoulli_masks(4, 0, 0.5, 1),
        native.EmptyUnitsError,
        ["no units"],
    ),
    (
        "kernel-shap-g0",
        lambda: native.kernel_shap_masks(10, 0, 1),
        native.EmptyUnitsError,
        ["no units"],
    ),
    (
        "sobol-g0",
        lambda: native.sobol_masks(0, 8, "sobol", 1),
        native.EmptyUnitsError,
        ["no units"],
    ),
    # numeric parameters
    (
        "bernoulli-n0",
        lambda: native.bernoulli_masks(0, 3, 0.5, 1),
        native.InvalidParameterError,
        ["invalid parameter"],
    ),
    (
        "bernoulli-prob-1.5",
        lambda: native.bernoulli_masks(4, 3, 1.5, 1),
        native.InvalidParameterError,
        ["invalid parameter", "1.5"],
    ),
    (
        "bernoulli-prob-negative",
        lambda: native.bernoulli_masks(4, 3, -0.25, 1),
        native.InvalidParameterError,
        ["-0.25"],
    ),
    (
        "bernoulli-prob-nan",
        lambda: native.bernoulli_masks(4, 3, NAN, 1),
        native.InvalidParameterError,
        ["NaN"],
    ),
    (
        "kernel-shap-n0",
        lambda: native.kernel_shap_masks(0, 3, 1),
        native.InvalidParameterError,
        ["invalid parameter"],
    ),
    (
        "kernel-shap-sampling-needs-two-rows",
        lambda: native.kernel_shap_masks(1, 5, 1),
        native.InvalidParameterError,
        ["invalid parameter"],
    ),
    (
        "sobol-k0",
        lambda: native.sobol_masks(3, 0, "halton", 1),
        native.InvalidParameterError,
        ["invalid parameter"],
    ),
    (
        "qmc-k0",
        lambda: native.qmc_points(0, 2, "latin_hypercube", 1),
        native.InvalidParameterError,
        ["invalid parameter"],
    ),
    (
        "qmc-d0",
        lambda: native.qmc_points(4, 0, "sobol", 1),
        native.InvalidParameterError,
        ["invalid parameter"],
    ),
    (
        "qmc-sobol-too-many-points",
        lambda: native.qmc_points(65537, 1, "sobol", 1),
        native.InvalidParameterError,
        ["65537"],
    ),
    (
        "lime-negative-alpha",
        lambda: native.lime_scores(_masks(4, 2), np.zeros((4, 1)), alpha=-1.0),
        native.InvalidParameterError,
        ["invalid parameter"],
    ),
    # unknown names
    (
        "sobol-unknown-sampler",
        lambda: native.sobol_masks(3, 4, "random", 1),
        native.UnknownStrategyError,
        ["unknown sampler 'random'", "sobol, halton, latin_hypercube"],
    ),
    (
        "qmc-unknown-sampler",
        lambda: native.qmc_points(3, 4, "lhs", 1),
        native.UnknownStrategyError,
        ["'lhs'"],
    ),
    (
        "group-unknown-granularity",
        _group("paragraph", 2),
        native.UnknownStrategyError,
        ["unknown granularity 'paragraph'", "all_tokens, token, word, sentence"],
    ),
    (
        "aggregate-unknown-strategy",
        lambda: native.aggregate(np.zeros((1, 2), F32), np.zeros(2, I64), 1, "median"),
        native.UnknownStrategyError,
        ["unknown aggregation strategy 'median'", "signed_max"],
    ),
    (
        "lime-unknown-distance",
        lambda: native.lime_scores(_masks(4, 2), np.zeros((4, 1)), "manhattan"),
        native.UnknownStrategyError,
        ["unknown distance 'manhattan'", "cosine, hamming, euclidean"],
    ),
    # shapes
    (
        "group-special-length",
        _group("token", 3, special=np.zeros(2, bool)),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "group-word-ids-length",
        _group("word", 3, word_ids=np.zeros(4, I64)),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "group-offsets-columns",
        _group("token", 3, offsets=np.zeros((3, 3), I64)),
        native.ShapeError,
        ["(3, 3)"],
    ),
    (
        "expand-lengths",
        lambda: native.expand_ids(_masks(2, 3), np.zeros(4, I64), np.zeros(5, I64), 0),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "aggregate-lengths",
        lambda: native.aggregate(np.zeros((2, 4), F32), np.zeros(3, I64), 1, "mean"),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "occlusion-one-row",
        lambda: native.occlusion_scores(np.zeros((1, 2))),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "lime-rows",
        lambda: native.lime_scores(_masks(5, 3), np.zeros((4, 1))),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "kernel-shap-no-full-row",
        lambda: native.kernel_shap_scores(
            _shap_design([[1, 1], [0, 1], [1, 0]]), np.ones(3), np.zeros((3, 1))
        ),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "kernel-shap-no-empty-row",
        lambda: native.kernel_shap_scores(
            _shap_design([[0, 0], [0, 1], [1, 0]]), np.ones(3), np.zeros((3, 1))
        ),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "kernel-shap-weights-length",
        lambda: native.kernel_shap_scores(
            _shap_design([[0, 0], [1, 1], [1, 0]]), np.ones(2), np.zeros((3, 1))
        ),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "kernel-shap-output-rows",
        lambda: native.kernel_shap_scores(
            _shap_design([[0, 0], [1, 1], [1, 0]]), np.ones(3), np.zeros((4, 1))
        ),
        native.ShapeError,
        ["shape error"],
    ),
    (
        "sobol-indices-rows",
        lambda: native.sobol_indices(np.zeros((5 * 4 + 1, 2)), 3, 4),
        native.ShapeError,
        ["shape error"],
    ),
    # ids out of range
    (
        "group-offset-beyond-text",
        _group("token", 1, text="café", offsets=np.array([[0, 5]], I64)),
        native.IdOutOfRangeError,
        ["id out of range"],
    ),
    (
        "group-start-after-end",
        _group("word", 1, offsets=np.array([[2, 1]], I64)),
        native.IdOutOfRangeError,
        ["id out of range"],
    ),
    (
        "group-negative-offset",
        _group("sentence", 1, offsets=np.array([[-1, 2]], I64)),
        native.IdOutOfRangeError,
        ["-1"],
    ),
    (
        "expand-unit-id",
        lambda: native.expand_ids(_masks(2, 3), np.array([0, 3], I64), np.zeros(2, I64), 0),
        native.IdOutOfRangeError,
        ["id out of range", "3"],
    ),
    (
        "expand-negative-replacement",
        lambda: native.expand_ids(_masks(2, 3), np.zeros(2, I64), np.zeros(2, I64), -1),
        native.IdOutOfRangeError,
        ["-1"],
    ),
    (
        "aggregate-unit-id",
        lambda: native.aggregate(np.zeros((1, 2), F32), np.array([0, 5], I64), 5, "max"),
        native.IdOutOfRangeError,
        ["id out of range", "5"],
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_documented_errors(
    call: Callable[[], object], exc: type[Exception], fragments: list[str]
) -> None:
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_offsets_are_code_points_not_bytes() -> None:
    # "café" is 4 characters (5 UTF-8 bytes): (0, 4) is the whole text, (0, 5) is beyond it.
    _, spans = native.group_units("token", np.zeros(1, bool), np.array([[0, 4]], I64), None, "café")
    np.testing.assert_array_equal(spans, [[0, 4]])


# (id, call, the argument the TypeError must name)
TYPE_CASES: list[tuple[str, Callable[[], object], str]] = [
    (
        "aggregate-scores-f64",
        lambda: native.aggregate(np.zeros((1, 2)), np.zeros(2, I64), 1, "mean"),
        "scores",
    ),
    (
        "aggregate-scores-1d",
        lambda: native.aggregate(np.zeros(2, F32), np.zeros(2, I64), 1, "mean"),
        "scores",
    ),
    (
        "aggregate-t2u-i32",
        lambda: native.aggregate(np.zeros((1, 2), F32), np.zeros(2, np.int32), 1, "mean"),
        "token_to_unit",
    ),
    (
        "expand-masks-bool",
        lambda: native.expand_ids(np.zeros((1, 2), bool), np.zeros(2, I64), np.zeros(2, I64), 0),
        "masks",
    ),
    (
        "expand-ids-list",
        lambda: native.expand_ids(_masks(1, 2), np.zeros(2, I64), [1, 2], 0),
        "input_ids",
    ),
    (
        "group-special-u8",
        lambda: native.group_units("token", np.zeros(1, U8), np.zeros((1, 2), I64), None, "a"),
        "special_mask",
    ),
    (
        "group-offsets-i32",
        lambda: native.group_units(
            "token", np.zeros(1, bool), np.zeros((1, 2), np.int32), None, "a"
        ),
        "offsets",
    ),
    (
        "group-word-ids-f64",
        lambda: native.group_units(
            "word", np.zeros(1, bool), np.zeros((1, 2), I64), np.zeros(1), "a"
        ),
        "word_ids",
    ),
    ("occlusion-outputs-f32", lambda: native.occlusion_scores(np.zeros((3, 1), F32)), "outputs"),
    (
        "lime-masks-i64",
        lambda: native.lime_scores(np.zeros((3, 2), I64), np.zeros((3, 1))),
        "masks",
    ),
    (
        "kernel-shap-weights-f32",
        lambda: native.kernel_shap_scores(
            _shap_design([[0, 0], [1, 1]]), np.zeros(2, F32), np.zeros((2, 1))
        ),
        "weights",
    ),
    ("sobol-indices-list", lambda: native.sobol_indices([[0.0]], 1, 1), "outputs"),
]


@pytest.mark.parametrize(
    ("call", "argument"), [c[1:] for c in TYPE_CASES], ids=[c[0] for c in TYPE_CASES]
)
def test_wrong_dtype_is_a_type_error_naming_the_argument(
    call: Callable[[], object], argument: str
) -> None:
    with pytest.raises(TypeError) as info:
        call()
    assert f"'{argument}'" in str(info.value)


# Degenerate but well-typed calls, rejected: (id, call, exception class, message fragments).
# Each raises its NativeError (a Rust panic would surface as pyo3's PanicException instead).
DEGENERATE_REJECTED: list[tuple[str, Callable[[], object], type[Exception], list[str]]] = [
    (
        "lime-no-units",
        lambda: native.lime_scores(_masks(3, 0), np.zeros((3, 1))),
        native.EmptyUnitsError,
        ["no units"],
    ),
    (
        "lime-no-rows",
        lambda: native.lime_scores(_masks(0, 3), np.zeros((0, 1))),
        native.ShapeError,
        ["LIME needs at least one row", "(0, 3)"],
    ),
    (
        "lime-zero-width",
        lambda: native.lime_scores(_masks(3, 2), np.zeros((3, 1)), "cosine", 0.0),
        native.InvalidParameterError,
        ["kernel_width must be a finite number > 0, got 0"],
    ),
    (
        "lime-nan-alpha",
        lambda: native.lime_scores(_masks(3, 2), np.zeros((3, 1)), alpha=NAN),
        native.InvalidParameterError,
        ["alpha must be a finite number >= 0, got NaN"],
    ),
    (
        "kernel-shap-no-units",
        lambda: native.kernel_shap_scores(_masks(2, 0), np.ones(2), np.zeros((2, 1))),
        native.EmptyUnitsError,
        ["no units"],
    ),
    (
        "kernel-shap-no-rows",
        lambda: native.kernel_shap_scores(_masks(0, 2), np.ones(0), np.zeros((0, 1))),
        native.ShapeError,
        ["all-kept (mask of zeros) row among the 0 rows"],
    ),
    (
        "sobol-indices-empty",
        lambda: native.sobol_indices(np.zeros((0, 1)), 0, 0),
        native.EmptyUnitsError,
        ["no units"],
    ),
    (
        "sobol-indices-no-units",
        lambda: native.sobol_indices(np.zeros((2, 1)), 0, 1),
        native.EmptyUnitsError,
        ["no units"],
    ),
    (
        "sobol-indices-no-points",
        lambda: native.sobol_indices(np.zeros((0, 1)), 3, 0),
        native.InvalidParameterError,
        ["Sobol points k must be at least 1, got 0"],
    ),
    (
        "aggregate-unit-below-minus-one",
        lambda: native.aggregate(np.zeros((2, 3), F32), np.full(3, -2, I64), 1, "mean"),
        native.IdOutOfRangeError,
        ["token 0 belongs to unit -2", "(or -1 for none)"],
    ),
    (
        "kernel-shap-masks-g1-n1",
        lambda: native.kernel_shap_masks(1, 1, 0),
        native.InvalidParameterError,
        ["at least 2 rows (all kept and all replaced), got n_rows = 1"],
    ),
]


@pytest.mark.parametrize(
    ("call", "exc", "fragments"),
    [c[1:] for c in DEGENERATE_REJECTED],
    ids=[c[0] for c in DEGENERATE_REJECTED],
)
def test_degenerate_inputs_are_rejected_with_their_error(
    call: Callable[[], object], exc: type[Exception], fragments: list[str]
) -> None:
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


EMPTY_F64 = np.zeros((0, 2), F64)

# Degenerate but well-typed calls that compute: (id, call, the expected result).
DEGENERATE_COMPUTED: list[tuple[str, Callable[[], object], tuple[np.ndarray, ...]]] = [
    # One (all-kept) sample: nothing varies, so the ridge fit is 0 for every unit and target.
    (
        "lime-one-row",
        lambda: native.lime_scores(_masks(1, 3), np.zeros((1, 2))),
        (np.zeros((2, 3), F64),),
    ),
    # The reference row and one row per unit, no target: (0 targets, 2 units).
    ("occlusion-no-targets", lambda: native.occlusion_scores(np.zeros((3, 0))), (EMPTY_F64,)),
    # No token belongs to a unit: (2 rows, 0 units).
    (
        "aggregate-no-units",
        lambda: native.aggregate(np.zeros((2, 3), F32), np.full(3, -1, I64), 0, "mean"),
        (np.zeros((2, 0), F32),),
    ),
    # No unit, so no token is replaced: every row is the input.
    (
        "expand-no-units",
        lambda: native.expand_ids(_masks(2, 0), np.full(3, -1, I64), np.array([5, 6, 7], I64), 0),
        (np.array([[5, 6, 7], [5, 6, 7]], I64),),
    ),
    # Any negative word id is a unit of its own (docs/native.md, "Grouping"), -5 as -1.
    (
        "group-word-ids-below-minus-one",
        _group("word", 2, word_ids=np.array([-5, 3], I64), offsets=np.array([[0, 3], [4, 7]], I64)),
        (np.array([0, 1], I64), np.array([[0, 3], [4, 7]], I64)),
    ),
]


@pytest.mark.parametrize(
    ("call", "expected"),
    [c[1:] for c in DEGENERATE_COMPUTED],
    ids=[c[0] for c in DEGENERATE_COMPUTED],
)
def test_degenerate_inputs_that_compute(
    call: Callable[[], object], expected: tuple[np.ndarray, ...]
) -> None:
    result = call()
    results = result if isinstance(result, tuple) else (result,)
    assert len(results) == len(expected)
    for got, want in zip(results, expected, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want, strict=True)  # shape and dtype too


HUGE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from explainserve import _native as native
    scores = np.zeros((1, 2), np.float32)
    t2u = np.array([0, -1], np.int64)
    # Views of no memory whose sizes multiply into an absurd output.
    tall = np.zeros((2**40, 0), np.uint8)
    wide = np.broadcast_to(np.int64(-1), (2**24,))
    M = 2**64 - 1
    BAD = "TooLargeError"
    calls = {
        # Sizes whose product overflows...
        "occlusion": (lambda: native.occlusion_masks(2**62), BAD),
        "bernoulli": (lambda: native.bernoulli_masks(2**40, 2**40, 0.5, 0), BAD),
        "kernel_shap": (lambda: native.kernel_shap_masks(2**62, 40, 0), BAD),
        "kernel_shap_units": (lambda: native.kernel_shap_masks(2, M, 0), BAD),
        "sobol": (lambda: native.sobol_masks(2**40, 2**10, "latin_hypercube", 0), BAD),
        "qmc": (lambda: native.qmc_points(2**40, 2**40, "halton", 0), BAD),
        "aggregate": (lambda: native.aggregate(scores, t2u, M, "sum"), BAD),
        "expand": (lambda: native.expand_ids(tall, wide, wide, 0), BAD),
        "sobol_indices": (lambda: native.sobol_indices(np.zeros((1, 1)), M, 1), "ShapeError"),
        # ... and sizes that fit in a usize but in no machine's memory (2^56 bytes and more).
        "occlusion_2^62": (lambda: native.occlusion_masks(2**31), BAD),
        "bernoulli_2^62": (lambda: native.bernoulli_masks(2**31, 2**31, 0.5, 0), BAD),
        "kernel_shap_2^61": (lambda: native.kernel_shap_masks(2**56, 40, 0), BAD),
        "sobol_2^50": (lambda: native.sobol_masks(2**20, 2**10, "halton", 0), BAD),
        "qmc_2^63": (lambda: native.qmc_points(2**16, 2**44, "sobol", 0), BAD),
        "qmc_halton_2^59": (lambda: native.qmc_points(1, 2**56, "halton", 0), BAD),
        "aggregate_2^62": (lambda: native.aggregate(scores, t2u, 2**60, "mean"), BAD),
    }
    for name, (call, expected) in calls.items():
        try:
            call()
            print(name, "returned")
        except native.NativeError as err:
            verdict = "ok" if type(err).__name__ == expected else "BAD"
            print(name, verdict, type(err).__name__, err)
        except BaseException as err:
            print(name, "BAD", type(err).__name__, err)
        sys.stdout.flush()
    print(len(calls), "calls")
    """
)


def test_huge_sizes_raise_instead_of_crashing() -> None:
    # In a child process: an allocation failure in Rust aborts the whole interpreter.
    proc = subprocess.run(
        [sys.executable, "-c", HUGE], capture_output=True, text=True, timeout=60, check=False
    )
    report = proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    *lines, total = proc.stdout.splitlines()
    assert total == f"{len(lines)} calls", report
    assert all(" ok " in line for line in lines), report
