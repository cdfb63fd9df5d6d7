"""Units: spans index the input text, token-id inputs behave like their text, sentences split."""

from __future__ import annotations

import numpy as np
import pytest

from explainserve.explain.methods.occlusion import Occlusion
from explainserve.vocabulary import InputSpec

TEXTS = [
    "The weather is nice today, isn't it?",
    "café déjà vu, naïve résumé, façade.",
    "I love 😀 emoji 🎉 and 🚀 rockets!",
    "Tabs\tand\nnew lines\n\nare whitespace too.",
    "Dr. Smith arrived. He sat down! Did he eat?",
]
SENTENCES = ["Dr. Smith arrived.", "He sat down!", "Did he eat?"]


@pytest.mark.parametrize("granularity", ["token", "word", "sentence"])
@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_unit_spans_index_the_text(run, direct, model: str, granularity: str) -> None:
    out = run.many(model, TEXTS, Occlusion(), granularity=granularity)
    for text, e in zip(TEXTS, out, strict=True):
        units = e.units
        assert units.spans.shape == (units.n_units, 2)
        assert e.scores.shape[1] == units.n_units
        for (start, end), unit_text in zip(units.spans.tolist(), units.texts, strict=True):
            assert 0 <= start <= end <= len(text)
            if end > start:
                assert text[start:end] == unit_text
        # Units are in text order and cover every non-special token exactly once.
        assert units.spans[:, 0].tolist() == sorted(units.spans[:, 0].tolist())
        enc = direct[model].tokenizer(
            text, return_special_tokens_mask=True, return_offsets_mapping=True
        )
        assert e.token_ids.tolist() == enc["input_ids"]
        content = [i for i, s in enumerate(enc["special_tokens_mask"]) if not s]
        assert sorted(i for idx in units.token_indices for i in idx) == content
        # Tokens' characters lie inside their unit's span, but for the whitespace before them
        # (a unit never starts with whitespace; a whitespace-only token joins the next word).
        for unit, idx in enumerate(units.token_indices):
            start, end = units.spans[unit]
            for i in idx:
                s, t = enc["offset_mapping"][i]
                s += len(text[s:t]) - len(text[s:t].lstrip())
                assert t <= s or start <= s <= t <= end


@pytest.mark.parametrize("granularity", ["token", "word"])
def test_whitespace_token_unit_text_is_its_span(run, granularity: str) -> None:
    # The tiny BPE has no " H" merge: the space before "He" is a token of its own, and the
    # double space before "Did" a word of its own.
    text = "Dr. Smith arrived. He sat down!  Did he eat?"
    e = run.one("gpt2", text, Occlusion(), granularity=granularity)
    empty = [u for u, (s, t) in enumerate(e.units.spans.tolist()) if s == t]
    assert empty  # the case this test is about is present
    for (start, end), unit_text in zip(e.units.spans.tolist(), e.units.texts, strict=True):
        assert text[start:end] == unit_text


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_word_units_are_the_words(run, model: str) -> None:
    e = run.one(model, "The weather is nice today, isn't it?", Occlusion(), granularity="word")
    if model == "bert":  # WordPiece splits punctuation off words
        words = ["The", "weather", "is", "nice", "today", ",", "isn", "'", "t", "it", "?"]
    else:  # the byte-level pre-tokenizer keeps "isn" and "'t" apart, punctuation on its own
        words = ["The", "weather", "is", "nice", "today", ",", "isn", "'t", "it", "?"]
    assert e.units.texts == words


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_sentence_granularity(run, model: str) -> None:
    text = "Dr. Smith arrived. He sat down!   Did he eat?"
    e = run.one(model, text, Occlusion(), granularity="sentence")
    assert e.units.n_units == 3
    assert e.units.texts == SENTENCES
    assert [text[s:t] for s, t in e.units.spans.tolist()] == SENTENCES


@pytest.mark.parametrize("granularity", ["all_tokens", "token", "word"])
@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_token_ids_input_equals_text_input(run, direct, model: str, granularity: str) -> None:
    ref = direct[model]
    # Lower case and no accents: BERT's uncased tokenizer decodes to the same characters.
    text = "the movie was surprisingly good, and the tokenization unbelievably fine."
    ids = ref.encode(text).tolist()
    by_text = run.one(
        model, InputSpec(text=text, targets=[0, 1]), Occlusion(), granularity=granularity
    )
    by_ids = run.one(
        model, InputSpec(ids=ids, targets=[0, 1]), Occlusion(), granularity=granularity
    )
    assert by_ids.token_ids.tolist() == ids
    assert by_ids.units.token_indices == by_text.units.token_indices
    np.testing.assert_array_equal(by_ids.units.token_to_unit, by_text.units.token_to_unit)
    assert by_ids.units.texts == by_text.units.texts
    np.testing.assert_allclose(by_ids.scores, by_text.scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(by_ids.logits, by_text.logits, rtol=1e-6, atol=1e-6)
    if model == "gpt2":  # byte-level BPE round-trips the text exactly, spans included
        np.testing.assert_array_equal(by_ids.units.spans, by_text.units.spans)


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_token_ids_with_attention_mask(run, direct, model: str) -> None:
    """Padding given with attention 0 (on the side the model pads) is never a unit, and the input
    explains like the unpadded ids."""
    ref = direct[model]
    ids = ref.encode("the weather is nice today.").tolist()
    pad = ref.tokenizer.pad_token_id
    if model == "bert":
        padded = InputSpec(ids=[*ids, pad, pad], attention=[1] * len(ids) + [0, 0], targets=[2])
        shift = 0
    else:
        padded = InputSpec(ids=[pad, pad, *ids], attention=[0, 0] + [1] * len(ids), targets=[2])
        shift = 2
    a = run.one(model, padded, Occlusion(), granularity="token")
    b = run.one(model, InputSpec(ids=ids, targets=[2]), Occlusion(), granularity="token")
    assert a.units.token_indices == [[i + shift for i in u] for u in b.units.token_indices]
    assert a.units.texts == b.units.texts
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)


def test_token_ids_with_unknown_token_equal_text_input(run, direct) -> None:
    ref = direct["bert"]
    text = "i love 😀 emoji"  # the emoji is [UNK] in the MiniLM vocabulary
    ids = ref.encode(text).tolist()
    assert ref.tokenizer.unk_token_id in ids
    by_text = run.one("bert", text, Occlusion(), granularity="word")
    by_ids = run.one("bert", InputSpec(ids=ids), Occlusion(), granularity="word")
    assert by_text.units.token_indices == [[1], [2], [3], [4, 5, 6]]
    assert by_ids.units.token_indices == by_text.units.token_indices
    np.testing.assert_allclose(by_ids.scores, by_text.scores, rtol=1e-6, atol=1e-6)


def test_non_canonical_byte_level_ids_group_words_by_whitespace(run, direct) -> None:
    """Ids the tokenizer would not produce for their text (here "Hello world" spelled letter by
    letter): the text is the decoded tokens laid end to end, words are its whitespace runs, and
    the scores are the direct model's occlusion of those words."""
    ref = direct["gpt2"]
    tokens = ["<s>", "H", "e", "l", "l", "o", "Ġ", "w", "or", "l", "d", "</s>"]
    ids = np.asarray(ref.tokenizer.convert_tokens_to_ids(tokens))
    assert ref.encode("Hello world").tolist() != ids.tolist()
    e = run.one("gpt2", InputSpec(ids=ids.tolist(), targets=[0, 1, 2]), Occlusion())
    # The space token holds only whitespace: it joins the word before it.
    groups = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10]]
    assert e.units.token_indices == groups
    assert [t.strip() for t in e.units.texts] == ["Hello", "world"]
    rows = np.tile(ids, (2, 1))
    for u, g in enumerate(groups):
        rows[u, g] = ref.tokenizer.unk_token_id
    for t in range(3):
        expected = ref.f(t, ids=ids) - ref.f(t, ids=rows)
        np.testing.assert_allclose(e.scores[t], expected, rtol=1e-4, atol=2e-6)


def test_non_canonical_wordpiece_ids_keep_word_boundaries(run, direct) -> None:
    ref = direct["bert"]
    tokens = ["[CLS]", "the", "##re", "is", "a", "good", "movie", "[SEP]"]
    ids = ref.tokenizer.convert_tokens_to_ids(tokens)
    assert ref.encode("there is a good movie").tolist() != ids  # "there" is one token
    e = run.one("bert", InputSpec(ids=ids), Occlusion(), granularity="word")
    assert e.units.token_indices == [[1, 2], [3], [4], [5], [6]]
    assert e.units.texts == ["there", "is", "a", "good", "movie"]
