"""Grouping of tokens into units and sentence splitting, on generated text and tokens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from explainserve import _native as native

from . import reference as ref
from .strategies import GRANULARITIES, check_grouping

# Words that never end a sentence by themselves (no abbreviation, no single letter), including
# inner dots, accents, emoji, CJK and punctuation that is not a terminator.
WORDS = [
    "hello",
    "world",
    "café",
    "déjà",
    "vu",
    "naïve",
    "Smith",
    "arrived",
    "down",
    "我爱",
    "自然语言",
    "😀",
    "🎉👍",
    "3.14",
    "v1.2.3",
    "x-ray",
    "well,",
    "(maybe)",
    '"quoted"',
    "it's",
    "[see",
    "below]",
]
# Abbreviations that may appear inside a sentence, followed by another word.
INNER_ABBREVIATIONS = ["Dr.", "Mrs.", "e.g.", "i.e.", "etc.", "Fig.", "vs.", "J.", "ST."]
TERMINATORS = [".", "!", "?", "...", "?!", '."', "!)", ".\u201d", "?\u2019"]
SENTENCE_GAPS = [" ", "  ", "\n", " \n\t", "\u00a0", "\u3000 "]
WORD_GAPS = [" ", " ", " ", "  ", "\t"]
EDGES = ["", "", " ", "\n  "]


@st.composite
def texts(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]]]:
    """A paragraph and its sentence spans, known by construction."""
    parts = [draw(st.sampled_from(EDGES))]
    pos = len(parts[0])
    spans = []
    n_sentences = draw(st.integers(0, 4))
    for s in range(n_sentences):
        if s > 0:
            gap = draw(st.sampled_from(SENTENCE_GAPS))
            parts.append(gap)
            pos += len(gap)
        words = draw(st.lists(st.sampled_from(WORDS + INNER_ABBREVIATIONS), min_size=0, max_size=5))
        words.append(draw(st.sampled_from(WORDS)))  # the word before the terminator
        sentence = words[0]
        for w in words[1:]:
            sentence += draw(st.sampled_from(WORD_GAPS)) + w
        if s < n_sentences - 1 or draw(st.booleans()):
            sentence += draw(st.sampled_from(TERMINATORS))
        parts.append(sentence)
        spans.append((pos, pos + len(sentence)))
        pos += len(sentence)
    parts.append(draw(st.sampled_from(EDGES)))
    return "".join(parts), spans


@given(texts())
def test_sentence_spans_of_generated_paragraphs(case: tuple[str, list[tuple[int, int]]]) -> None:
    text, spans = case
    assert ref.sentence_spans(text) == spans  # the reference agrees with the construction
    assert native.sentence_spans(text) == spans


@given(st.text(alphabet="Lorem ipsum.!?\"') \n\t\u00e9\u6211", max_size=60))
def test_sentence_spans_are_trimmed_ordered_and_cover_the_text(text: str) -> None:
    spans = native.sentence_spans(text)
    prev_end = 0
    for s, e in spans:
        assert prev_end <= s < e <= len(text)
        assert not ref.is_space(text[s])
        assert not ref.is_space(text[e - 1])
        assert all(ref.is_space(c) for c in text[prev_end:s])
        prev_end = e
    assert all(ref.is_space(c) for c in text[prev_end:])


@st.composite
def tokenized(
    draw: st.DrawFn,
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    """Text cut into word pieces, with specials, whitespace tokens and empty-offset tokens."""
    text, _ = draw(texts())
    special: list[bool] = []
    offsets: list[tuple[int, int]] = []
    word_ids: list[int] = []

    def add(s: int, e: int, is_special: bool = False, word: int = -1) -> None:
        special.append(is_special)
        offsets.append((s, e))
        word_ids.append(-1 if is_special else word)

    if draw(st.booleans()):
        add(0, 0, is_special=True)
    previous_end = 0
    for w, (s, e) in enumerate(ref.whitespace_words(text)):
        if s > previous_end and offsets and draw(st.integers(0, 3)) == 0:
            add(previous_end, s, word=w)  # a whitespace-only token (e.g. GPT-2 "Ċ")
        if draw(st.integers(0, 5)) == 0:
            add(s, s, word=w)  # an empty-offset token
        if draw(st.integers(0, 7)) == 0:
            add(0, 0, is_special=True)
        cut = s
        while cut < e:
            end = min(e, cut + draw(st.integers(1, 3)))
            # A token may start on the whitespace before its word (untrimmed offsets).
            start = previous_end if cut == s and draw(st.integers(0, 4)) == 0 else cut
            add(start, end, word=w if draw(st.integers(0, 9)) else -1)
            cut = end
        previous_end = e
    if draw(st.booleans()):
        add(0, 0, is_special=True)
    n = len(offsets)
    ids = None if draw(st.booleans()) else np.array(word_ids, np.int64)
    return (
        text,
        np.array(special, dtype=bool),
        np.array(offsets, dtype=np.int64).reshape(n, 2),
        ids,
    )


@pytest.mark.parametrize("granularity", GRANULARITIES)
@given(case=tokenized())
def test_group_units_matches_reference(
    granularity: str, case: tuple[str, np.ndarray, np.ndarray, np.ndarray | None]
) -> None:
    text, special, offsets, word_ids = case
    t2u, spans = native.group_units(granularity, special, offsets, word_ids, text)
    check_grouping(granularity, special, offsets, t2u, spans)
    exp_t2u, exp_spans = ref.group_units(granularity, special, offsets, word_ids, text)
    np.testing.assert_array_equal(t2u, exp_t2u)
    np.testing.assert_array_equal(spans, exp_spans)


@st.composite
def random_tokens(
    draw: st.DrawFn,
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    """Arbitrary valid offsets (overlapping, out of order, empty) over a generated paragraph."""
    text, _ = draw(texts())
    n = draw(st.integers(0, 12))
    offsets = []
    for _ in range(n):
        s = draw(st.integers(0, len(text)))
        offsets.append((s, draw(st.integers(s, len(text)))))
    special = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    word_ids = draw(st.none() | st.lists(st.integers(-1, 4), min_size=n, max_size=n))
    return (
        text,
        special,
        np.array(offsets, dtype=np.int64).reshape(n, 2),
        None if word_ids is None else np.array(word_ids, np.int64),
    )


@pytest.mark.parametrize("granularity", GRANULARITIES)
@given(case=random_tokens())
# The examples are small already, and shrinking a failure here takes about a minute.
@settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])
def test_group_units_matches_reference_on_arbitrary_offsets(
    granularity: str, case: tuple[str, np.ndarray, np.ndarray, np.ndarray | None]
) -> None:
    text, special, offsets, word_ids = case
    t2u, spans = native.group_units(granularity, special, offsets, word_ids, text)
    check_grouping(granularity, special, offsets, t2u, spans)
    exp_t2u, exp_spans = ref.group_units(granularity, special, offsets, word_ids, text)
    np.testing.assert_array_equal(t2u, exp_t2u)
    np.testing.assert_array_equal(spans, exp_spans)


def test_group_units_accepts_non_contiguous_views() -> None:
    text = "Hello brave new world. Bye now!"
    offsets = np.array(
        [[0, 0], [0, 5], [6, 11], [12, 15], [16, 21], [21, 22], [23, 26], [0, 0]], np.int64
    )
    special = np.array([1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    word_ids = np.array([-1, 0, 1, 2, 3, 3, 4, -1], np.int64)
    for granularity in GRANULARITIES:
        expected = native.group_units(granularity, special, offsets, word_ids, text)
        got = native.group_units(
            granularity,
            np.repeat(special, 2)[::2],
            np.asfortranarray(offsets),
            np.repeat(word_ids, 2)[::2],
            text,
        )
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_sentence_whitespace_token_joins_previous_unit() -> None:
    """docs/native.md: a token covering only whitespace joins the previous token's unit, for
    sentences as for words ("same fallback as words"), even when the whitespace lies inside a
    sentence (regression: it used to go to that sentence)."""
    text = "Hi. Yo there"
    offsets = np.array([[0, 3], [6, 7]], np.int64)  # "Hi." then the space inside "Yo there"
    special = np.zeros(2, bool)
    t2u, spans = native.group_units("word", special, offsets, None, text)
    assert (t2u.tolist(), spans.tolist()) == ([0, 0], [[0, 7]])
    t2u, spans = native.group_units("sentence", special, offsets, None, text)
    assert (t2u.tolist(), spans.tolist()) == ([0, 0], [[0, 7]])
