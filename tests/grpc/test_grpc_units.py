"""Units over gRPC on awkward text: whitespace tokens, unknown characters, token-id inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


def explain(
    stub: explain_pb2_grpc.ExplainServiceStub, model: str, item: pb.Input, granularity: int
) -> pb.Explanation:
    reply = stub.Explain(
        pb.ExplainRequest(
            model=model, inputs=[item], occlusion=pb.Occlusion(), granularity=granularity
        ),
        timeout=30,
    )
    return reply.explanations[0]


@pytest.mark.parametrize("granularity", [pb.GRANULARITY_TOKEN, pb.GRANULARITY_WORD])
@pytest.mark.parametrize(
    ("model", "text"),
    [
        ("bert", "Unbelievably good film. I hated the ending!"),
        ("gpt2", "I love 😀 emoji and café."),
        # [UNK] and [MASK] are content, in token ids as in text (token-id inputs once dropped
        # them, marking every special id as special).
        pytest.param("bert", "I love 😀 emoji", id="bert-unk"),
        pytest.param("bert", "The [MASK] is great", id="bert-mask"),
    ],
)
def test_token_id_input_explains_the_same_tokens_as_its_text(
    stub: explain_pb2_grpc.ExplainServiceStub,
    request: pytest.FixtureRequest,
    model: str,
    text: str,
    granularity: int,
) -> None:
    tokenizer = request.getfixturevalue("bert_tokenizer" if model == "bert" else "bpe_tokenizer")
    ids = tokenizer(text)["input_ids"]
    as_text = explain(stub, model, pb.Input(text=text), granularity)
    as_ids = explain(stub, model, pb.Input(token_ids=pb.TokenIds(ids=ids)), granularity)
    assert list(as_ids.token_ids) == list(as_text.token_ids) == ids
    assert [list(u.token_indices) for u in as_ids.units] == [
        list(u.token_indices) for u in as_text.units
    ]
    # Same units, same forward passes: the same scores.
    np.testing.assert_array_equal(as_ids.scores.values, as_text.scores.values)
    # Spans index into the returned text: the input itself, or the text decoded from the ids.
    assert as_text.text == text
    for reply in (as_text, as_ids):
        for unit in reply.units:
            if unit.char_end > unit.char_start:
                assert reply.text[unit.char_start : unit.char_end] == unit.text


def test_token_id_input_returns_the_decoded_text(
    stub: explain_pb2_grpc.ExplainServiceStub, bert_tokenizer: Any
) -> None:
    ids = bert_tokenizer("Café au LAIT, please.")["input_ids"]
    reply = explain(stub, "bert", pb.Input(token_ids=pb.TokenIds(ids=ids)), pb.GRANULARITY_WORD)
    # The uncased WordPiece lowercases and strips accents: the client needs the server's text.
    assert reply.text == "cafe au lait, please."
    assert [u.text for u in reply.units] == ["cafe", "au", "lait", ",", "please", "."]


TOKEN, WORD = pb.GRANULARITY_TOKEN, pb.GRANULARITY_WORD


@pytest.mark.parametrize(
    ("model", "text", "granularity"),
    [
        ("gpt2", "Tabs\tand\nnew lines\n\nare whitespace too.", TOKEN),
        ("gpt2", "Tabs\tand\nnew lines\n\nare whitespace too.", WORD),
        ("bert", "  Leading spaces, café and 😀 emoji.  ", TOKEN),
        ("bert", "  Leading spaces, café and 😀 emoji.  ", WORD),
        # The tiny BPE has no "Ġv": " vu" is "Ġ" "v" "u", and the word unit holds all three.
        ("gpt2", "café déjà vu 😀 and 日本語のテキスト", WORD),
        # Whitespace-only tokens have empty (trimmed) spans; their text once was the raw
        # byte-level symbol "Ġ", which is not in the input.
        pytest.param("gpt2", "café déjà vu", TOKEN, id="gpt2-space-token"),
        pytest.param("gpt2", "Hello  world", TOKEN, id="gpt2-double-space"),
        pytest.param("gpt2", "Hello  world", WORD, id="gpt2-double-space-word"),
        pytest.param("gpt2", "Hello world ", WORD, id="gpt2-trailing-space"),
    ],
)
def test_every_unit_text_is_found_in_the_input(
    stub: explain_pb2_grpc.ExplainServiceStub, model: str, text: str, granularity: int
) -> None:
    """The contract: a unit's text is "as it appears in the input" (specials excepted)."""
    e = explain(stub, model, pb.Input(text=text), granularity)
    for unit in e.units:
        if unit.char_end > unit.char_start:
            assert unit.text == text[unit.char_start : unit.char_end]
        assert unit.text in text, f"unit text {unit.text!r} is not in the input"


def test_attention_mask_zeros_are_not_units_but_are_in_all_tokens(
    stub: explain_pb2_grpc.ExplainServiceStub, bert_tokenizer: Any
) -> None:
    ids = bert_tokenizer("Great movie, bad ending.")["input_ids"]
    mask = [1] * len(ids)
    mask[2] = 0  # "movie"
    item = pb.Input(token_ids=pb.TokenIds(ids=ids, attention_mask=mask))
    tokens = explain(stub, "bert", item, pb.GRANULARITY_TOKEN)
    positions = [i for u in tokens.units for i in u.token_indices]
    assert positions == [1, 3, 4, 5, 6]
    assert [u.text for u in tokens.units] == ["great", ",", "bad", "ending", "."]
    everything = explain(stub, "bert", item, pb.GRANULARITY_ALL_TOKENS)
    assert [i for u in everything.units for i in u.token_indices] == list(range(len(ids)))
    # Replacing a position the model does not attend to changes nothing but float32 rounding:
    # the original and the perturbed row may run at other places of a batch (or in another
    # batch) whose matrix products block differently, which moves the last bits of the logit.
    # A few ulps of the logit itself bound that; a real dependence would be orders larger.
    (target,) = everything.targets
    logit = np.float32(everything.logits[target.index])
    assert abs(everything.scores.values[2]) <= 4 * np.spacing(abs(logit))
