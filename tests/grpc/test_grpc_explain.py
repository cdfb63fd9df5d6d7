"""Explain over gRPC gives exactly what the domain `Explainer` gives, and the right targets.

The domain calls run on the very explainer the server wraps (same models, same worker), one at a
time, so the batches, and with them the float32 results, are the same bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from explainserve.explain import params as dom
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.service import Explainer
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc
from explainserve.vocabulary import InputSpec

TEXT = "Unbelievably good film. I hated the ending!"
LABELS = ["negative", "neutral", "positive"]


def scores_of(explanation: pb.Explanation) -> np.ndarray:
    """The targets x units float32 matrix of an explanation."""
    rows, cols = explanation.scores.rows, explanation.scores.cols
    values = np.asarray(explanation.scores.values, dtype=np.float32)
    assert values.shape == (rows * cols,)
    return values.reshape(rows, cols)


def domain_explain(explainer: Explainer, params: dom.ExplainParams) -> list[dom.Explanation]:
    """The domain explanations of `params`, in input order."""
    return sorted(explainer.explain(params), key=lambda e: e.input_index)


def assert_same(grpc_e: pb.Explanation, dom_e: dom.Explanation, *, exact: bool = True) -> None:
    """Field by field; scores and logits as exact float32 (or to float32 rounding)."""
    assert grpc_e.input_index == dom_e.input_index
    assert [u.text for u in grpc_e.units] == dom_e.units.texts
    assert [[u.char_start, u.char_end] for u in grpc_e.units] == dom_e.units.spans.tolist()
    assert [list(u.token_indices) for u in grpc_e.units] == dom_e.units.token_indices
    assert [t.index for t in grpc_e.targets] == dom_e.target_indices
    assert [t.label for t in grpc_e.targets] == dom_e.target_labels
    assert dom_e.scores.dtype == np.float32
    logits = np.asarray(grpc_e.logits, dtype=np.float32)
    if exact:
        np.testing.assert_array_equal(scores_of(grpc_e), dom_e.scores, strict=True)
        np.testing.assert_array_equal(logits, dom_e.logits, strict=True)
    else:
        np.testing.assert_allclose(scores_of(grpc_e), dom_e.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(logits, dom_e.logits, rtol=1e-4, atol=1e-5)
    assert list(grpc_e.token_ids) == dom_e.token_ids.tolist()
    assert grpc_e.counters.forward_passes == dom_e.forward_passes


@pytest.mark.parametrize("text", [TEXT, "Terrible acting.", "Fine."])
@pytest.mark.parametrize(
    ("granularity", "proto_granularity"),
    [("word", pb.GRANULARITY_WORD), ("token", pb.GRANULARITY_TOKEN)],
)
def test_occlusion_equals_the_domain_result_for_text(
    stub: explain_pb2_grpc.ExplainServiceStub,
    explainer: Explainer,
    granularity: str,
    proto_granularity: int,
    text: str,
) -> None:
    reply = stub.Explain(
        pb.ExplainRequest(
            model="bert",
            inputs=[pb.Input(text=text)],
            occlusion=pb.Occlusion(),
            granularity=proto_granularity,
            inference_mode=pb.INFERENCE_MODE_SOFTMAX,
        ),
        timeout=30,
    )
    (want,) = domain_explain(
        explainer,
        dom.ExplainParams(
            model="bert",
            inputs=[InputSpec(text=text)],
            method=Occlusion(),
            granularity=granularity,  # type: ignore[arg-type]
            mode="softmax",
        ),
    )
    (got,) = reply.explanations
    assert_same(got, want)


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_several_inputs_come_back_in_request_order_equal_to_the_domain_result(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer, model: str
) -> None:
    """Inputs of one request share the worker's batches, and how they are cut depends on timing,
    so here float32 values may differ in the last bits (different padded widths); everything
    else is exact."""
    texts = [TEXT, "Terrible acting.", "Fine.", "The quick brown fox jumps over the lazy dog."]
    reply = stub.Explain(
        pb.ExplainRequest(
            model=model,
            inputs=[pb.Input(text=t) for t in texts],
            occlusion=pb.Occlusion(),
            granularity=pb.GRANULARITY_WORD,
        ),
        timeout=30,
    )
    expected = domain_explain(
        explainer,
        dom.ExplainParams(
            model=model, inputs=[InputSpec(text=t) for t in texts], method=Occlusion()
        ),
    )
    assert [e.input_index for e in reply.explanations] == [0, 1, 2, 3]
    for got, want in zip(reply.explanations, expected, strict=True):
        assert_same(got, want, exact=False)


@pytest.mark.parametrize(
    ("model", "tokenizer_fixture"), [("bert", "bert_tokenizer"), ("gpt2", "bpe_tokenizer")]
)
def test_occlusion_equals_the_domain_result_for_token_ids(
    stub: explain_pb2_grpc.ExplainServiceStub,
    explainer: Explainer,
    request: pytest.FixtureRequest,
    model: str,
    tokenizer_fixture: str,
) -> None:
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    text = "Hello there, world of words."
    ids = tokenizer(text)["input_ids"]
    reply = stub.Explain(
        pb.ExplainRequest(
            model=model,
            inputs=[pb.Input(token_ids=pb.TokenIds(ids=ids))],
            occlusion=pb.Occlusion(),
            granularity=pb.GRANULARITY_TOKEN,
        ),
        timeout=30,
    )
    (want,) = domain_explain(
        explainer,
        dom.ExplainParams(
            model=model,
            inputs=[InputSpec(ids=ids)],
            method=Occlusion(),
            granularity="token",
        ),
    )
    (got,) = reply.explanations
    assert_same(got, want)
    assert list(got.token_ids) == ids
    # The same ids given as text: the same forward passes, so the same scores.
    (as_text,) = stub.Explain(
        pb.ExplainRequest(
            model=model,
            inputs=[pb.Input(text=text)],
            occlusion=pb.Occlusion(),
            granularity=pb.GRANULARITY_TOKEN,
        ),
        timeout=30,
    ).explanations
    np.testing.assert_array_equal(scores_of(got), scores_of(as_text))
    assert [list(u.token_indices) for u in got.units] == [
        list(u.token_indices) for u in as_text.units
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "café déjà vu 😀 and 日本語のテキスト",
            ["café", "déjà", "vu", "😀", "and", "日本語のテキスト"],
        ),
        (
            "It's a dog's life, isn't it?",
            ["It", "'s", "a", "dog", "'s", "life", ",", "isn", "'t", "it", "?"],
        ),
    ],
)
def test_occlusion_equals_the_domain_result_on_the_decoder_classifier(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer, text: str, words: list[str]
) -> None:
    reply = stub.Explain(
        pb.ExplainRequest(
            model="gpt2",
            inputs=[pb.Input(text=text, targets=[pb.Target(index=1)])],
            occlusion=pb.Occlusion(),
            granularity=pb.GRANULARITY_WORD,
            inference_mode=pb.INFERENCE_MODE_LOG_SOFTMAX,
        ),
        timeout=30,
    )
    (want,) = domain_explain(
        explainer,
        dom.ExplainParams(
            model="gpt2",
            inputs=[InputSpec(text=text, targets=[1])],
            method=Occlusion(),
            granularity="word",
            mode="log_softmax",
        ),
    )
    (got,) = reply.explanations
    assert_same(got, want)
    assert [u.text for u in got.units] == words
    for unit in got.units:
        # Spans count Unicode code points, as Python strings do.
        assert unit.text == text[unit.char_start : unit.char_end]


def test_occlusion_scores_are_the_drop_of_the_target_logit(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer, bert_tokenizer: Any
) -> None:
    """Score of token j = f(x)[t] - f(x with token j replaced by [MASK])[t], checked against
    transformers directly."""
    (e,) = stub.Explain(
        pb.ExplainRequest(
            model="bert",
            inputs=[pb.Input(text=TEXT, targets=[pb.Target(index=2)])],
            occlusion=pb.Occlusion(),
            granularity=pb.GRANULARITY_TOKEN,
        ),
        timeout=30,
    ).explanations
    ids = torch.tensor(bert_tokenizer(TEXT)["input_ids"])
    positions = [u.token_indices[0] for u in e.units]
    batch = ids.repeat(len(positions) + 1, 1)
    for row, position in enumerate(positions, start=1):
        batch[row, position] = bert_tokenizer.mask_token_id
    with torch.inference_mode():
        logits = explainer.registry.get("bert").model(input_ids=batch).logits[:, 2].double()
    expected = (logits[0] - logits[1:]).numpy()
    np.testing.assert_allclose(scores_of(e)[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e.logits[2], logits[0].item(), rtol=1e-5, atol=1e-5)


def test_two_targets_give_two_rows_each_equal_to_its_single_target_run(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    def explain(*targets: pb.Target) -> pb.Explanation:
        reply = stub.Explain(
            pb.ExplainRequest(
                model="bert",
                inputs=[pb.Input(text=TEXT, targets=list(targets))],
                occlusion=pb.Occlusion(),
            ),
            timeout=30,
        )
        return reply.explanations[0]

    both = explain(pb.Target(index=0), pb.Target(label="positive"))
    assert [(t.index, t.label) for t in both.targets] == [(0, "negative"), (2, "positive")]
    scores = scores_of(both)
    assert scores.shape == (2, len(both.units))
    assert not np.array_equal(scores[0], scores[1])
    np.testing.assert_array_equal(scores[0], scores_of(explain(pb.Target(index=0)))[0])
    np.testing.assert_array_equal(scores[1], scores_of(explain(pb.Target(label="positive")))[0])
    np.testing.assert_array_equal(scores[1], scores_of(explain(pb.Target(index=2)))[0])


def test_label_targets_resolve_to_their_indices(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    targets = [pb.Target(label=name) for name in ("neutral", "positive", "negative", "neutral")]
    (e,) = stub.Explain(
        pb.ExplainRequest(
            model="gpt2",
            inputs=[pb.Input(text="Hello, world!", targets=targets)],
            saliency=pb.Saliency(),
        ),
        timeout=30,
    ).explanations
    assert [(t.index, t.label) for t in e.targets] == [
        (1, "neutral"),
        (2, "positive"),
        (0, "negative"),
        (1, "neutral"),
    ]
    scores = scores_of(e)
    assert scores.shape == (4, len(e.units))
    np.testing.assert_allclose(scores[0], scores[3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_default_target_is_the_argmax_of_the_returned_logits(
    stub: explain_pb2_grpc.ExplainServiceStub, model: str
) -> None:
    texts = [
        TEXT,
        "Terrible acting.",
        "The weather is nice today, isn't it?",
        "Numbers: 0 1 2 3.",
        "Wait... what?! Really? Yes!",
        "Deep learning models need careful explanations.",
    ]
    reply = stub.Explain(
        pb.ExplainRequest(
            model=model, inputs=[pb.Input(text=t) for t in texts], occlusion=pb.Occlusion()
        ),
        timeout=30,
    )
    assert len(reply.explanations) == len(texts)
    for e in reply.explanations:
        predicted = int(np.argmax(np.asarray(e.logits)))
        assert [(t.index, t.label) for t in e.targets] == [(predicted, LABELS[predicted])]
        assert scores_of(e).shape == (1, len(e.units))


def lime_scores(stub: explain_pb2_grpc.ExplainServiceStub, seed: int) -> bytes:
    (e,) = stub.Explain(
        pb.ExplainRequest(
            model="bert",
            inputs=[pb.Input(text=TEXT)],
            lime=pb.Lime(n_perturbations=32),
            seed=seed,
        ),
        timeout=30,
    ).explanations
    return scores_of(e).tobytes()


def test_lime_is_reproducible_by_seed(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    first = lime_scores(stub, seed=1234)
    assert lime_scores(stub, seed=1234) == first
    assert lime_scores(stub, seed=1235) != first
    # The whole uint64 range is a valid seed.
    top = lime_scores(stub, seed=2**64 - 1)
    assert lime_scores(stub, seed=2**64 - 1) == top
    assert top != first
