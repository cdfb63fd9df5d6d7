"""Every method x granularity x inference mode over gRPC, one short input each.

Each combination checks the shape of the answer (targets x units), that every value is finite,
that units point at their own text, that the units partition the tokens as the granularity says,
the number of forward passes the method is defined to need, and the model's logits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from explainserve.explain.service import Explainer
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

# Two sentences; "Unbelievably" is five WordPiece tokens, so words and tokens differ.
TEXT = "Unbelievably good film. I hated the ending!"
# The MiniLM WordPiece tokens of TEXT (uncased), [CLS] and [SEP] included.
TOKENS = [
    "[CLS]",
    "un",
    "##bel",
    "##ie",
    "##va",
    "##bly",
    "good",
    "film",
    ".",
    "i",
    "hated",
    "the",
    "ending",
    "!",
    "[SEP]",
]
WORDS = ["Unbelievably", "good", "film", ".", "I", "hated", "the", "ending", "!"]
SENTENCES = ["Unbelievably good film.", "I hated the ending!"]

N_SAMPLES = 4
METHODS: dict[str, Any] = {
    "occlusion": pb.Occlusion(),
    "lime": pb.Lime(n_perturbations=16),
    "kernel_shap": pb.KernelShap(n_perturbations=16),
    "sobol": pb.Sobol(n_points=4),
    "saliency": pb.Saliency(),
    "input_x_gradient": pb.InputXGradient(),
    "integrated_gradients": pb.IntegratedGradients(n_steps=4),
    "smooth_grad": pb.SmoothGrad(n_samples=N_SAMPLES),
    "square_grad": pb.SquareGrad(n_samples=N_SAMPLES),
    "var_grad": pb.VarGrad(n_samples=N_SAMPLES),
    "gradient_shap": pb.GradientShap(n_samples=N_SAMPLES),
}
# Gradient methods whose default reduction is the L2 norm: their scores are magnitudes.
NON_NEGATIVE = {"saliency", "smooth_grad", "square_grad", "var_grad"}
GRANULARITIES = {
    "all_tokens": pb.GRANULARITY_ALL_TOKENS,
    "token": pb.GRANULARITY_TOKEN,
    "word": pb.GRANULARITY_WORD,
    "sentence": pb.GRANULARITY_SENTENCE,
}
MODES = {
    "logits": pb.INFERENCE_MODE_LOGITS,
    "softmax": pb.INFERENCE_MODE_SOFTMAX,
    "log_softmax": pb.INFERENCE_MODE_LOG_SOFTMAX,
}


def expected_forward_passes(method: str, n_units: int) -> int:
    """Sequences each method sends through the model: perturbation methods' rows carry the
    unperturbed input that predicts the target (Sobol's design adds it), gradient methods take
    one forward more, before their rows."""
    rows = {
        "occlusion": n_units + 1,
        "lime": 16,
        # Exact enumeration of the coalitions when they fit in the budget.
        "kernel_shap": 2**n_units if 2**n_units <= 16 else 16,
        "sobol": (n_units + 2) * 4,
        "saliency": 1,
        "input_x_gradient": 1,
        "integrated_gradients": 4,
    }.get(method, N_SAMPLES)
    return rows if method in ("occlusion", "lime", "kernel_shap") else rows + 1


@pytest.fixture(scope="module")
def reference_logits(explainer: Explainer, bert_tokenizer: Any) -> np.ndarray:
    """The tiny BERT's logits for TEXT, straight from transformers."""
    model = explainer.registry.get("bert").model
    enc = bert_tokenizer(TEXT, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits[0].double().numpy()


def check_units(explanation: pb.Explanation, text: str, granularity: str) -> None:
    """Unit text matches its span; the units partition the tokens as `granularity` says."""
    units = list(explanation.units)
    for unit in units:
        assert unit.char_start <= unit.char_end <= len(text)
        if unit.char_end > unit.char_start:
            assert unit.text == text[unit.char_start : unit.char_end]
        assert list(unit.token_indices) == sorted(unit.token_indices)
    positions = [i for unit in units for i in unit.token_indices]
    assert len(positions) == len(set(positions)), "a token belongs to two units"
    n_tokens = len(TOKENS)
    texts = [u.text for u in units]
    if granularity == "all_tokens":
        assert sorted(positions) == list(range(n_tokens))
        assert all(len(u.token_indices) == 1 for u in units)
        # Special tokens have no characters: an empty text at the empty span where they sit
        # ([CLS] before the text, [SEP] right after its last token).
        assert texts[0] == texts[-1] == ""
        assert (units[0].char_start, units[0].char_end) == (0, 0)
        assert (units[-1].char_start, units[-1].char_end) == (len(text), len(text))
        assert [u.token_indices[0] for u in units] == list(range(n_tokens))
    else:
        # Special tokens are never units; every other token is in exactly one.
        assert sorted(positions) == list(range(1, n_tokens - 1))
        for unit in units:
            assert list(unit.token_indices) == list(
                range(unit.token_indices[0], unit.token_indices[-1] + 1)
            ), "a unit's tokens are contiguous"
    if granularity == "token":
        assert all(len(u.token_indices) == 1 for u in units)
        assert texts[:5] == ["Un", "bel", "ie", "va", "bly"]
        assert len(units) == n_tokens - 2
    elif granularity == "word":
        assert texts == WORDS
        assert list(units[0].token_indices) == [1, 2, 3, 4, 5]
    elif granularity == "sentence":
        assert texts == SENTENCES
        assert [list(u.token_indices) for u in units] == [list(range(1, 9)), list(range(9, 14))]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("granularity", list(GRANULARITIES))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_granularity_and_mode(
    stub: explain_pb2_grpc.ExplainServiceStub,
    bert_tokenizer: Any,
    reference_logits: np.ndarray,
    method: str,
    granularity: str,
    mode: str,
) -> None:
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=TEXT)],
        granularity=GRANULARITIES[granularity],
        inference_mode=MODES[mode],
        seed=7,
        **{method: METHODS[method]},
    )
    reply = stub.Explain(request, timeout=60)

    assert reply.model == "bert"
    (explanation,) = reply.explanations
    assert explanation.input_index == 0
    assert list(explanation.token_ids) == bert_tokenizer(TEXT)["input_ids"]
    check_units(explanation, TEXT, granularity)
    n_units = len(explanation.units)

    # The default target is the predicted class.
    logits = np.asarray(explanation.logits, dtype=np.float64)
    assert logits.shape == (3,)
    np.testing.assert_allclose(logits, reference_logits, rtol=1e-5, atol=1e-5)
    predicted = int(np.argmax(logits))
    assert [(t.index, t.label) for t in explanation.targets] == [
        (predicted, ["negative", "neutral", "positive"][predicted])
    ]

    scores = explanation.scores
    assert (scores.rows, scores.cols) == (1, n_units)
    assert len(scores.values) == n_units
    assert all(math.isfinite(v) for v in scores.values)
    assert any(v != 0.0 for v in scores.values), "every score is zero"
    if method in NON_NEGATIVE:
        assert min(scores.values) >= 0.0
    if method == "occlusion" and mode == "softmax":
        # A difference of two probabilities.
        assert all(-1.0 <= v <= 1.0 for v in scores.values)

    assert explanation.counters.forward_passes == expected_forward_passes(method, n_units)
    assert explanation.counters.elapsed_ms > 0.0


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_the_decoder_classifier(
    stub: explain_pb2_grpc.ExplainServiceStub, bpe_tokenizer: Any, method: str
) -> None:
    text = "Hello there, world of words."
    reply = stub.Explain(
        pb.ExplainRequest(
            model="gpt2",
            inputs=[pb.Input(text=text)],
            granularity=pb.GRANULARITY_WORD,
            seed=7,
            **{method: METHODS[method]},
        ),
        timeout=60,
    )
    (explanation,) = reply.explanations
    assert list(explanation.token_ids) == bpe_tokenizer(text)["input_ids"]
    texts = [u.text for u in explanation.units]
    assert texts == ["Hello", "there", ",", "world", "of", "words", "."]
    for unit in explanation.units:
        assert unit.text == text[unit.char_start : unit.char_end]
    assert (explanation.scores.rows, explanation.scores.cols) == (1, len(texts))
    assert all(math.isfinite(v) for v in explanation.scores.values)
    assert any(v != 0.0 for v in explanation.scores.values)
    assert len(explanation.logits) == 3
    assert explanation.counters.forward_passes == expected_forward_passes(method, len(texts))
