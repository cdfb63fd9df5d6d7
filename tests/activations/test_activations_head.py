"""PredictFromActivations: the classification head alone on (edited) activations at its input."""

from __future__ import annotations

import numpy as np
import pytest
from activation_refs import SERVED, TEXTS, run_texts
from reference_models import Direct

from explainserve.activations.params import HeadParams
from explainserve.activations.service import Activator
from explainserve.activations.tensors import decode, encode
from explainserve.models.registry import Registry

HEAD_INPUT = {
    "bert": "classifier:input",
    "roberta": "classifier:input",
    "distilbert": "classifier:input",
    "gpt2": "score:input",
}


@pytest.mark.parametrize("name", list(SERVED))
def test_captured_head_inputs_give_back_the_models_logits(activator: Activator, name: str) -> None:
    got = run_texts(activator, name, TEXTS, predictions=True)
    assert got.logits is not None
    rows = got.values[HEAD_INPUT[name]]
    out = activator.predict_from_activations(HeadParams(name, encode(rows, "float32")))
    assert out.logits.dtype == np.float32
    np.testing.assert_allclose(out.logits, got.logits, rtol=1e-5, atol=1e-6)
    assert out.predicted.tolist() == got.predicted


def test_bert_head_on_a_lone_input_is_bit_for_bit(activator: Activator) -> None:
    """BERT's head is one Linear on the pooled row: the same product as in the model."""
    got = run_texts(activator, "bert", [TEXTS[0]], predictions=True)
    out = activator.predict_from_activations(
        HeadParams("bert", encode(got.values["classifier:input"], "float32"))
    )
    np.testing.assert_array_equal(out.logits, got.logits)


@pytest.mark.parametrize("name", list(SERVED))
def test_edited_activations_give_the_heads_output_on_them(
    activator: Activator, direct: dict[str, Direct], name: str
) -> None:
    rows = run_texts(activator, name, TEXTS).values[HEAD_INPUT[name]]
    rng = np.random.default_rng(0)
    edited = (rows * 1.5 + rng.normal(0, 0.5, rows.shape)).astype(np.float32)
    edited[0] = 0.0  # a concept removed entirely
    out = activator.predict_from_activations(HeadParams(name, encode(edited, "float32")))
    np.testing.assert_allclose(out.logits, direct[name].head(edited), rtol=1e-5, atol=1e-6)
    original = activator.predict_from_activations(HeadParams(name, encode(rows, "float32")))
    assert not np.allclose(out.logits, original.logits)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_inputs_are_decoded(
    activator: Activator, direct: dict[str, Direct], dtype: str
) -> None:
    rows = run_texts(activator, "roberta", TEXTS).values["classifier:input"]
    tensor = encode(rows, dtype)
    out = activator.predict_from_activations(HeadParams("roberta", tensor))
    np.testing.assert_allclose(
        out.logits, direct["roberta"].head(decode(tensor, "t")), rtol=1e-5, atol=1e-6
    )


def test_head_rows_go_through_the_worker_in_batches(registry: Registry) -> None:
    served = registry.get("gpt2")
    activator = Activator(registry)
    before = served.worker.stats.batches
    rows = np.random.default_rng(1).normal(size=(1200, 32)).astype(np.float32)
    out = activator.predict_from_activations(HeadParams("gpt2", encode(rows, "float32")))
    assert out.logits.shape == (1200, 3)
    # 512 rows at most per batch.
    assert served.worker.stats.batches - before == 3
    weight = served.model.score.weight.detach().numpy()
    np.testing.assert_allclose(out.logits, rows @ weight.T, rtol=1e-5, atol=1e-5)
