"""GetActivations tokenizes many texts in batched calls: the same ids and encodings as one by one,
and the same validation errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from activation_refs import TEXTS

from explainserve.activations.service import scan_inputs
from explainserve.errors import InvalidArgument
from explainserve.models.registry import Registry
from explainserve.vocabulary import (
    InputSpec,
    TokenTable,
    encode_ids,
    encode_text,
    encode_texts,
    tokenize_table,
)

MORE = [
    "Crème brûlée is a French dessert; piñata is Spanish.",
    "自然语言处理很有趣。我们学习机器学习。",
    "café déjà vu, naïve résumé.",
    "I love 😀 emoji 🎉 and 🚀 rockets!",
    "我爱自然语言处理",
    "Tabs\tand\nnew lines\n\nare whitespace too.",
    "  leading and trailing spaces  ",
]


@pytest.mark.parametrize("tokenizer_fixture", ["bert_tokenizer", "bpe_tokenizer"])
def test_batched_encoding_equals_one_by_one(
    request: pytest.FixtureRequest, tokenizer_fixture: str
) -> None:
    tokenizer: Any = request.getfixturevalue(tokenizer_fixture)
    texts = [*TEXTS, *MORE]
    fields = [f"inputs[{i}]" for i in range(len(texts))]
    batched = encode_texts(tokenizer, texts, 10**6, fields)
    for text, field, got in zip(texts, fields, batched, strict=True):
        one = encode_text(tokenizer, text, 10**6, field)
        assert got.text == one.text
        for name in ("ids", "attention", "special", "offsets", "word_ids"):
            np.testing.assert_array_equal(getattr(got, name), getattr(one, name), err_msg=name)
    assert encode_texts(tokenizer, [], 10, []) == []


@pytest.mark.parametrize("with_offsets", [False, True])
def test_token_table_gives_encode_texts_ids(bert_tokenizer: Any, with_offsets: bool) -> None:
    texts = [*TEXTS, *MORE]
    fields = [f"inputs[{i}]" for i in range(len(texts))]
    half = len(texts) // 2
    table = TokenTable.concatenate(
        [
            tokenize_table(
                bert_tokenizer, texts[:half], 10**6, fields[:half], with_offsets=with_offsets
            ),
            tokenize_table(
                bert_tokenizer, texts[half:], 10**6, fields[half:], with_offsets=with_offsets
            ),
        ]
    )
    assert table.ids.dtype == np.int32
    assert len(table) == len(texts)
    assert (table.offsets is not None) == with_offsets
    for k, e in enumerate(encode_texts(bert_tokenizer, texts, 10**6, fields)):
        np.testing.assert_array_equal(table.token_ids(k), e.ids)
    with pytest.raises(InvalidArgument) as err:
        tokenize_table(
            bert_tokenizer,
            ["fine", "word " * 200],
            128,
            ["inputs[4]", "inputs[7]"],
            with_offsets=False,
        )
    assert (err.value.message, err.value.field) == (
        "input 7 has 202 tokens, more than the model's maximum of 128"
        ": shorten it, or set truncate to cut it",
        "inputs[7]",
    )


@pytest.mark.parametrize("with_offsets", [False, True])
def test_scanned_inputs_keep_ids_and_masks(registry: Registry, with_offsets: bool) -> None:
    model = registry.get("bert")
    ids = model.tokenizer("Token ids here.")["input_ids"]
    specs = [
        InputSpec(text="First."),
        InputSpec(ids=ids, attention=[1] * (len(ids) - 1) + [0]),
        InputSpec(text="Third one, the longest of them."),
    ]
    tokens = scan_inputs(model, specs, batch=1, with_offsets=with_offsets)
    assert len(tokens) == 3
    for i, spec in enumerate(specs):
        one = (
            encode_text(model.tokenizer, spec.text, 128, "x")
            if spec.text is not None
            else encode_ids(model.tokenizer, ids, spec.attention, 128, "x")
        )
        np.testing.assert_array_equal(tokens.ids(i), one.ids)
        np.testing.assert_array_equal(tokens.attention(i), one.attention)
        assert tokens.length(i) == one.n_tokens
        if with_offsets or spec.text is None:
            again = tokens.encoded(model, i)
            for name in ("ids", "attention", "special", "offsets", "word_ids"):
                np.testing.assert_array_equal(getattr(again, name), getattr(one, name))
            assert again.text == one.text
    assert tokens.attention(1)[-1] == 0
    if not with_offsets:
        with pytest.raises(ValueError, match="without offsets"):
            tokens.encoded(model, 0)


def test_scan_errors_come_in_input_order_then_lengths(registry: Registry) -> None:
    model = registry.get("bert")
    with pytest.raises(InvalidArgument) as err:
        scan_inputs(model, [InputSpec(text="word " * 200), InputSpec(text=" ")])
    assert err.value.field == "inputs[1].text"  # empty contents are reported first
    with pytest.raises(InvalidArgument) as err:
        scan_inputs(model, [InputSpec(text="ok"), InputSpec(ids=[5, 10**7])])
    assert err.value.message == "token id 10000000 is outside the vocabulary [0, 30522)"
    assert err.value.field == "inputs[1].token_ids"
