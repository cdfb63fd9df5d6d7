"""Grouping on the output of real tokenizers: BERT WordPiece (MiniLM) and a byte-level BPE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest

from explainserve import _native as native

from . import reference as ref
from .strategies import GRANULARITIES, check_grouping

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerFast

TEXTS = [
    "Hello, world!",
    "café déjà vu",
    "I love 😀 emoji 🎉!",
    "我爱自然语言处理",
    "Dr. Smith arrived. He sat down! Did he eat?",
    "  leading and trailing spaces  ",
    "Tabs\tand\nnew lines.\n\nA second paragraph, e.g. this one.",
    "Naïve résumé: \u201cit works\u201d (mostly). OK?! Yes...",
    "",
]

# BERT's words (whitespace and punctuation split) as they appear in the original text.
BERT_WORDS = {
    "Hello, world!": ["Hello", ",", "world", "!"],
    "café déjà vu": ["café", "déjà", "vu"],
    "I love 😀 emoji 🎉!": ["I", "love", "😀", "emoji", "🎉", "!"],
    "我爱自然语言处理": list("我爱自然语言处理"),
    "Dr. Smith arrived. He sat down! Did he eat?": (
        ["Dr", ".", "Smith", "arrived", ".", "He", "sat", "down", "!", "Did", "he", "eat", "?"]
    ),
    "": [],
}


@dataclass(frozen=True)
class Encoded:
    """One tokenized text as the arrays `group_units` takes."""

    text: str
    encoding: BatchEncoding
    special: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> Encoded:
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    n = len(enc["input_ids"])
    return Encoded(
        text=text,
        encoding=enc,
        special=np.array(enc["special_tokens_mask"], dtype=bool),
        offsets=np.array(enc["offset_mapping"], dtype=np.int64).reshape(n, 2),
        word_ids=np.array([-1 if w is None else w for w in enc.word_ids()], dtype=np.int64),
    )


@pytest.fixture(params=["bert_tokenizer", "bpe_tokenizer"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return request.getfixturevalue(request.param)


def group(e: Encoded, granularity: str, word_ids: bool = True) -> tuple[np.ndarray, np.ndarray]:
    ids = e.word_ids if word_ids else None
    t2u, spans = native.group_units(granularity, e.special, e.offsets, ids, e.text)
    check_grouping(granularity, e.special, e.offsets, t2u, spans)
    exp_t2u, exp_spans = ref.group_units(granularity, e.special, e.offsets, ids, e.text)
    np.testing.assert_array_equal(t2u, exp_t2u)
    np.testing.assert_array_equal(spans, exp_spans)
    return t2u, spans


def span_texts(text: str, spans: np.ndarray) -> list[str]:
    return [text[s:e] for s, e in spans]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_grouping_matches_reference(
    tokenizer: PreTrainedTokenizerFast, text: str, granularity: str
) -> None:
    e = encode(tokenizer, text)
    group(e, granularity)
    if granularity in ("word", "sentence"):
        group(e, granularity, word_ids=False)


@pytest.mark.parametrize("text", TEXTS)
def test_all_tokens_and_token_units(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    e = encode(tokenizer, text)
    _, spans = group(e, "all_tokens")
    assert len(spans) == len(e.offsets)
    np.testing.assert_array_equal(spans, e.offsets)
    _, spans = group(e, "token")
    assert len(spans) == int((~e.special).sum())
    np.testing.assert_array_equal(spans, e.offsets[~e.special])


@pytest.mark.parametrize("text", TEXTS)
def test_word_units_are_the_tokenizer_words(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    e = encode(tokenizer, text)
    t2u, spans = group(e, "word")
    content = ~e.special
    # Same unit iff same word id, for every pair of non-special tokens.
    same_unit = t2u[content][:, None] == t2u[content][None, :]
    same_word = e.word_ids[content][:, None] == e.word_ids[content][None, :]
    np.testing.assert_array_equal(same_unit, same_word)
    for k, (s, end) in enumerate(spans):
        tokens = np.flatnonzero(t2u == k)
        if (e.offsets[tokens, 0] == e.offsets[tokens, 1]).all():
            continue  # e.g. trimmed "Ġ" tokens: Hugging Face spans them (first start, last end)
        chars = e.encoding.word_to_chars(int(e.word_ids[tokens[0]]))
        assert (s, end) == (chars.start, chars.end), k


@pytest.mark.parametrize("text", list(BERT_WORDS))
def test_bert_word_units_are_the_original_words(
    bert_tokenizer: PreTrainedTokenizerFast, text: str
) -> None:
    e = encode(bert_tokenizer, text)
    _, spans = group(e, "word")
    assert span_texts(text, spans) == BERT_WORDS[text]


@pytest.mark.parametrize("text", TEXTS)
def test_sentence_units_are_the_sentences(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    e = encode(tokenizer, text)
    _, spans = group(e, "sentence")
    sentences = [text[s:end] for s, end in native.sentence_spans(text)]
    units = [t.strip() for t in span_texts(text, spans)]
    # Byte-level BPE may open with a whitespace-only token (its own unit) and attach newline
    # tokens to the sentence before them; what remains is exactly the sentences.
    assert [u for u in units if u] == sentences


@pytest.mark.parametrize("text", TEXTS)
def test_bert_sentence_spans_are_exact(bert_tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    e = encode(bert_tokenizer, text)
    _, spans = group(e, "sentence")
    assert [tuple(s) for s in spans.tolist()] == native.sentence_spans(text)


@pytest.mark.parametrize("text", TEXTS)
def test_word_fallback_groups_whitespace_words(
    tokenizer: PreTrainedTokenizerFast, text: str
) -> None:
    e = encode(tokenizer, text)
    _, spans = group(e, "word", word_ids=False)
    units = [t.strip() for t in span_texts(text, spans)]
    assert [u for u in units if u] == text.split()


def test_bert_word_fallback_is_exact(bert_tokenizer: PreTrainedTokenizerFast) -> None:
    text = "Hello, world! café déjà-vu 😀 我爱"
    e = encode(bert_tokenizer, text)
    _, spans = group(e, "word", word_ids=False)
    assert span_texts(text, spans) == ["Hello,", "world!", "café", "déjà-vu", "😀", "我爱"]


def test_cafe_stays_one_word(bert_tokenizer: PreTrainedTokenizerFast) -> None:
    text = "un café noir"
    e = encode(bert_tokenizer, text)
    t2u, spans = group(e, "word")
    assert span_texts(text, spans) == ["un", "café", "noir"]
    assert t2u.tolist() == [-1, 0, 1, 2, -1]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_empty_text(tokenizer: PreTrainedTokenizerFast, granularity: str) -> None:
    e = encode(tokenizer, "")
    assert e.special.all()
    t2u, spans = group(e, granularity)
    if granularity == "all_tokens":
        assert len(spans) == len(e.special)
        np.testing.assert_array_equal(spans, np.zeros((len(e.special), 2)))
    else:
        assert spans.shape == (0, 2)
        assert (t2u == -1).all()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_no_tokens_at_all(granularity: str) -> None:
    t2u, spans = native.group_units(
        granularity, np.zeros(0, bool), np.zeros((0, 2), np.int64), None, "some text"
    )
    assert t2u.shape == (0,)
    assert spans.shape == (0, 2)
