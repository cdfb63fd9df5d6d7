"""Small exact outputs written out by hand, so that any change of behaviour is caught."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explainserve import _native as native

NAN = np.nan

AGG_SCORES = np.array([[1.0, -3.0, 2.0, 4.0, 5.0], [2.0, -2.0, NAN, 1.0, 7.0]], np.float32)
AGG_UNITS = np.array([0, 0, 1, 1, -1], np.int64)  # unit 2 has no token; token 4 has no unit
AGG_EXPECTED = {
    "mean": [[-1.0, 3.0, NAN], [0.0, NAN, NAN]],
    "max": [[1.0, 4.0, NAN], [2.0, NAN, NAN]],
    "min": [[-3.0, 2.0, NAN], [-2.0, NAN, NAN]],
    "sum": [[-2.0, 6.0, 0.0], [0.0, NAN, 0.0]],
    "signed_max": [[-3.0, 4.0, NAN], [2.0, NAN, NAN]],  # |2| == |-2|: the first token wins
}


@pytest.mark.parametrize("strategy", sorted(AGG_EXPECTED))
def test_aggregate_golden(strategy: str) -> None:
    out = native.aggregate(AGG_SCORES, AGG_UNITS, 3, strategy)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array(AGG_EXPECTED[strategy], np.float32))


PARAGRAPH = (
    'Dr. Smith arrived. He sat down! Did he eat? "Yes," she said... (Really!) '
    "J. R. R. Tolkien wrote e.g. this. Pi is 3.14 exactly.\n\n  Last one"
)


def test_sentence_spans_golden() -> None:
    spans = native.sentence_spans(PARAGRAPH)
    assert [PARAGRAPH[s:e] for s, e in spans] == [
        "Dr. Smith arrived.",
        "He sat down!",
        "Did he eat?",
        '"Yes," she said...',
        "(Really!)",
        "J. R. R. Tolkien wrote e.g. this.",
        "Pi is 3.14 exactly.",
        "Last one",
    ]
    assert spans == [
        (0, 18),
        (19, 31),
        (32, 43),
        (44, 62),
        (63, 72),
        (73, 106),
        (107, 126),
        (130, 138),
    ]


def test_sentence_spans_golden_abbreviations_and_quotes() -> None:
    text = (
        "She said \u201cStop.\u201d Then left.  Mr. Brown, Prof. Xu and Ms. Lee met at "
        "St. Paul vs. Fig. 2 etc. fine. Wow!!! Ok?"
    )
    assert [text[s:e] for s, e in native.sentence_spans(text)] == [
        "She said \u201cStop.\u201d",
        "Then left.",
        "Mr. Brown, Prof. Xu and Ms. Lee met at St. Paul vs. Fig. 2 etc. fine.",
        "Wow!!!",
        "Ok?",
    ]


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_sentence_spans_of_blank_text(text: str) -> None:
    assert native.sentence_spans(text) == []


def test_sentence_spans_counts_code_points() -> None:
    text = "Café au lait. 我爱自然语言处理! 😀 Done."
    assert native.sentence_spans(text) == [(0, 13), (14, 23), (24, 31)]


# "Hi there. Bye!" as a BERT-like tokenizer gives it.
G_TEXT = "Hi there. Bye!"
G_SPECIAL = np.array([1, 0, 0, 0, 0, 0, 1], bool)
G_OFFSETS = np.array([[0, 0], [0, 2], [3, 8], [8, 9], [10, 13], [13, 14], [0, 0]], np.int64)
G_WORDS = np.array([-1, 0, 1, 2, 3, 4, -1], np.int64)


@pytest.mark.parametrize(
    ("granularity", "word_ids", "t2u", "spans"),
    [
        ("all_tokens", G_WORDS, list(range(7)), G_OFFSETS.tolist()),
        ("token", G_WORDS, [-1, 0, 1, 2, 3, 4, -1], G_OFFSETS[1:6].tolist()),
        ("word", G_WORDS, [-1, 0, 1, 2, 3, 4, -1], G_OFFSETS[1:6].tolist()),
        ("word", None, [-1, 0, 1, 1, 2, 2, -1], [[0, 2], [3, 9], [10, 14]]),
        ("sentence", G_WORDS, [-1, 0, 0, 0, 1, 1, -1], [[0, 9], [10, 14]]),
        ("sentence", None, [-1, 0, 0, 0, 1, 1, -1], [[0, 9], [10, 14]]),
    ],
)
def test_group_units_golden(
    granularity: str, word_ids: np.ndarray | None, t2u: list[int], spans: list[list[int]]
) -> None:
    got_t2u, got_spans = native.group_units(granularity, G_SPECIAL, G_OFFSETS, word_ids, G_TEXT)
    assert got_t2u.tolist() == t2u
    assert got_spans.tolist() == spans


def test_group_units_golden_word_order_and_empty_offsets() -> None:
    # Units are numbered by first token; word -1 is a unit of its own; an empty offset does not
    # move a span, and a unit of only empty offsets spans (s, s) of its first token.
    text = "ab cd ef"
    special = np.zeros(5, bool)
    offsets = np.array([[3, 5], [0, 2], [3, 3], [6, 6], [6, 8]], np.int64)
    word_ids = np.array([1, 0, 1, -1, -1], np.int64)
    t2u, spans = native.group_units("word", special, offsets, word_ids, text)
    assert t2u.tolist() == [0, 1, 0, 2, 3]
    assert spans.tolist() == [[3, 5], [0, 2], [6, 6], [6, 8]]


def test_occlusion_masks_golden() -> None:
    np.testing.assert_array_equal(
        native.occlusion_masks(3), [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    )


def test_kernel_shap_masks_golden() -> None:
    masks, weights = native.kernel_shap_masks(8, 3, 0)
    np.testing.assert_array_equal(
        masks,
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]],
    )
    # (g - 1) / (C(g, k) k (g - k)) = 2 / 6 = 1/3 for k = 1 and k = 2.
    np.testing.assert_allclose(weights, [0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 0])
    _, weights4 = native.kernel_shap_masks(16, 4, 0)
    kept = [4 - bin(r).count("1") for r in range(16)]
    expected = {0: 0.0, 1: 1 / 4, 2: 1 / 8, 3: 1 / 4, 4: 0.0}
    np.testing.assert_allclose(weights4, [expected[k] for k in kept], rtol=1e-15)


def test_expand_ids_golden() -> None:
    masks = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.uint8)
    t2u = np.array([-1, 0, 0, 1, -1], np.int64)
    ids = np.array([101, 7, 8, 9, 102], np.int64)
    np.testing.assert_array_equal(
        native.expand_ids(masks, t2u, ids, 103),
        [
            [101, 7, 8, 9, 102],
            [101, 103, 103, 9, 102],
            [101, 7, 8, 103, 102],
            [101, 103, 103, 103, 102],
        ],
    )


def test_occlusion_scores_golden() -> None:
    outputs = np.array([[1.0, 10.0], [0.5, 10.0], [1.5, 4.0]])
    np.testing.assert_array_equal(native.occlusion_scores(outputs), [[0.5, -0.5], [0.0, 6.0]])


def test_lime_scores_golden_single_unit() -> None:
    # Rows z = 1 (y = 3, d = 0, w = 1) and z = 0 (y = 1, d = 1, w = e = exp(-1 / 0.75^2)).
    masks = np.array([[0], [1]], np.uint8)
    outputs = np.array([[3.0], [1.0]])
    assert native.lime_scores(masks, outputs, alpha=0.0)[0, 0] == pytest.approx(2.0, abs=1e-12)
    e = math.exp(-1 / 0.75**2)
    q = e / (1 + e)  # sum of w (z - weighted mean)^2
    expected = 2 * q / (q + 1.0)
    assert native.lime_scores(masks, outputs)[0, 0] == pytest.approx(expected, rel=1e-12)
    # Hamming and euclidean distances are both 1 for the empty row here, as is cosine.
    for distance in ("hamming", "euclidean"):
        got = native.lime_scores(masks, outputs, distance)[0, 0]
        assert got == pytest.approx(expected, rel=1e-12)


def test_kernel_shap_scores_golden() -> None:
    # v({}) = 0, v({0}) = 1, v({1}) = 2, v({0, 1}) = 5: Shapley = (2, 3).
    masks, weights = native.kernel_shap_masks(4, 2, 0)
    values = {(0, 0): 5.0, (1, 0): 2.0, (0, 1): 1.0, (1, 1): 0.0}
    outputs = np.array([[values[tuple(row)]] for row in masks.tolist()])
    np.testing.assert_allclose(native.kernel_shap_scores(masks, weights, outputs), [[2.0, 3.0]])


def test_sobol_indices_golden() -> None:
    # g = 1, k = 2: A = [0, 1], B = [1, 0], C_1 = B. V = 0.25,
    # S = (V - mean((B - C)^2) / 2) / V = 1, ST = mean((A - C)^2) / 2 / V = 2.
    outputs = np.array([[0.0], [1.0], [1.0], [0.0], [1.0], [0.0]])
    first, total = native.sobol_indices(outputs, 1, 2)
    np.testing.assert_allclose(first, [[1.0]])
    np.testing.assert_allclose(total, [[2.0]])
