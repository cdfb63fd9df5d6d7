"""GetActivations' values against the models called directly.

A lone input runs unpadded, in the same shapes as the direct call, but not through the same call:
the server passes its own attention mask and position ids and stops at the split point, and
transformers may pick another attention kernel for that, so the values are equal to float32
rounding of the same arithmetic (`same_math`: rtol 1e-5, atol 1e-6, a few ulps through the two
layers; a wrong position or a missing layer is off by far more). A batch of inputs of different
lengths is padded (right for encoders, left for GPT-2) and its matrix products have other shapes
and summation orders, so it is compared to float32 rounding accumulated over the layers of these
deliberately wide-weighted tiny models (atol 1e-5, rtol 1e-4; the differences seen are about
1e-6)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from activation_refs import SERVED, TEXTS, gather, run_texts
from reference_models import Direct

from explainserve import _native
from explainserve.activations.params import ActivationParams
from explainserve.activations.service import Activator
from explainserve.models.registry import Registry
from explainserve.vocabulary import InputSpec, encode_text, make_units

HEAD_INPUT = {
    "bert": "classifier:input",
    "roberta": "classifier:input",
    "distilbert": "classifier:input",
    "gpt2": "score:input",
}
#: Split point -> index in `output_hidden_states` of the same tensor.
LAYERS = {
    "bert": {"bert.embeddings": 0, "bert.encoder.layer.0": 1, "bert.encoder.layer.1": 2},
    "roberta": {"roberta.encoder.layer.0": 1, "roberta.encoder.layer.1": 2},
    "distilbert": {"distilbert.transformer.layer.0": 1},
    "gpt2": {"transformer.h.0": 1},
}
#: Whose head reads the last token instead of the first.
READS_LAST = {"gpt2"}


def close(actual: Any, expected: Any) -> None:
    """Equal up to float32 rounding accumulated through the layers."""
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def same_math(actual: Any, expected: Any) -> None:
    """The same arithmetic in the same shapes by another call path (see the module docstring)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(SERVED))
def test_default_split_point_is_the_head_input_of_a_lone_input(
    activator: Activator, direct: dict[str, Direct], name: str
) -> None:
    for text in TEXTS:
        got = run_texts(activator, name, [text])
        assert list(got.values) == [HEAD_INPUT[name]]
        same_math(got.values[HEAD_INPUT[name]], [direct[name].head_input(text)])
        np.testing.assert_array_equal(got.offsets, [0, 1])


@pytest.mark.parametrize("name", list(SERVED))
def test_head_input_of_a_padded_batch(
    activator: Activator, direct: dict[str, Direct], name: str
) -> None:
    got = run_texts(activator, name, TEXTS)
    np.testing.assert_array_equal(got.offsets, np.arange(len(TEXTS) + 1))
    for i, text in enumerate(TEXTS):
        close(got.rows(HEAD_INPUT[name], i), [direct[name].head_input(text)])


def test_bert_head_input_is_the_pooler_output(
    activator: Activator, direct: dict[str, Direct]
) -> None:
    """BERT's classifier reads the pooler's output (after a dropout, the identity in eval)."""
    got = run_texts(activator, "bert", TEXTS[:3], split_points=["bert.pooler", "classifier:input"])
    np.testing.assert_array_equal(got.values["bert.pooler"], got.values["classifier:input"])
    for i, text in enumerate(TEXTS[:3]):
        ids = torch.as_tensor(direct["bert"].encode(text))[None]
        with torch.no_grad():
            pooled = direct["bert"].model.bert(input_ids=ids).pooler_output[0].numpy()
        close(got.rows("bert.pooler", i)[0], pooled)


@pytest.mark.parametrize("name", list(SERVED))
def test_named_layers_all_tokens_and_cls_token(
    activator: Activator, direct: dict[str, Direct], name: str
) -> None:
    layers = LAYERS[name]
    points = list(layers)
    every = run_texts(activator, name, TEXTS, split_points=points, granularity="all_tokens")
    cls = run_texts(activator, name, TEXTS, split_points=points)
    lone = run_texts(activator, name, [TEXTS[2]], split_points=points, granularity="all_tokens")
    for point, index in layers.items():
        same_math(lone.values[point], direct[name].hidden(TEXTS[2], index))
        for i, text in enumerate(TEXTS):
            hidden = direct[name].hidden(text, index)
            # Ragged: every token of every input, specials included, at its own offsets.
            assert every.offsets[i + 1] - every.offsets[i] == hidden.shape[0]
            close(every.rows(point, i), hidden)
            close(cls.rows(point, i), hidden[[-1 if name in READS_LAST else 0]])


def test_a_sub_module_with_another_width(activator: Activator, direct: dict[str, Direct]) -> None:
    point = "bert.encoder.layer.1.intermediate"
    got = run_texts(activator, "bert", TEXTS, split_points=[point], granularity="all_tokens")
    assert got.values[point].shape == (int(got.offsets[-1]), 64)
    for i, text in enumerate(TEXTS):
        close(got.rows(point, i), direct["bert"].module_output(text, point))


@pytest.mark.parametrize("granularity", ["word", "sentence"])
@pytest.mark.parametrize("aggregation", ["mean", "max", "min", "sum", "signed_max"])
@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_word_and_sentence_rows_are_the_native_aggregation_of_the_hidden_states(
    activator: Activator,
    direct: dict[str, Direct],
    name: str,
    granularity: str,
    aggregation: str,
) -> None:
    point, index = list(LAYERS[name].items())[-1]
    got = run_texts(
        activator,
        name,
        TEXTS,
        split_points=[point],
        granularity=granularity,
        aggregation=aggregation,
    )
    tokenizer = direct[name].tokenizer
    units_of = {u.input_index: u for chunk in got.chunks for u in chunk.units}
    for i, text in enumerate(TEXTS):
        units = make_units(encode_text(tokenizer, text, 10**6, "t"), granularity, tokenizer)  # type: ignore[arg-type]
        hidden = direct[name].hidden(text, index)
        expected = _native.aggregate(
            np.ascontiguousarray(hidden.T), units.token_to_unit, units.n_units, aggregation
        ).T
        assert got.offsets[i + 1] - got.offsets[i] == units.n_units
        close(got.rows(point, i), expected)
        assert units_of[i].units.texts == units.texts
        assert units_of[i].text == text
    if granularity == "sentence":
        assert units_of[2].units.texts == ["Dr. Smith arrived.", "He sat down!", "Did he eat?"]


def test_word_rows_of_a_lone_input(activator: Activator, direct: dict[str, Direct]) -> None:
    text = TEXTS[5]
    got = run_texts(
        activator, "bert", [text], split_points=["bert.encoder.layer.1"], granularity="word"
    )
    tokenizer = direct["bert"].tokenizer
    units = make_units(encode_text(tokenizer, text, 10**6, "t"), "word", tokenizer)
    expected = _native.aggregate(
        np.ascontiguousarray(direct["bert"].hidden(text, 2).T),
        units.token_to_unit,
        units.n_units,
        "mean",
    ).T
    same_math(got.values["bert.encoder.layer.1"], expected)


def test_token_rows_leave_out_the_special_tokens(
    activator: Activator, direct: dict[str, Direct]
) -> None:
    got = run_texts(
        activator, "bert", TEXTS, split_points=["bert.encoder.layer.1"], granularity="token"
    )
    for i, text in enumerate(TEXTS):
        hidden = direct["bert"].hidden(text, 2)
        assert got.offsets[i + 1] - got.offsets[i] == hidden.shape[0] - 2  # [CLS] and [SEP]
        close(got.rows("bert.encoder.layer.1", i), hidden[1:-1])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_reduced_precision_is_the_float32_values_rounded(
    activator: Activator, name: str, dtype: str
) -> None:
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    point = list(LAYERS[name])[-1]
    for text in TEXTS[:3]:  # lone inputs: the float32 values are the same in both requests
        full = run_texts(activator, name, [text], split_points=[point], granularity="all_tokens")
        half = run_texts(
            activator, name, [text], split_points=[point], granularity="all_tokens", dtype=dtype
        )
        (chunk,) = half.chunks
        ((_, tensor),) = chunk.activations
        assert tensor.dtype == dtype
        assert len(tensor.data) == 2 * full.values[point].size
        rounded = torch.from_numpy(full.values[point]).to(torch_dtype).float().numpy()
        np.testing.assert_array_equal(half.values[point], rounded)
        assert not np.array_equal(half.values[point], full.values[point])


@pytest.mark.parametrize("name", list(SERVED))
def test_predictions_are_the_models_logits(
    activator: Activator, direct: dict[str, Direct], name: str
) -> None:
    got = run_texts(activator, name, TEXTS, predictions=True)
    assert got.logits is not None
    expected = np.stack([direct[name].text_logits(t) for t in TEXTS])
    close(got.logits, expected)
    assert got.predicted == got.logits.argmax(axis=1).tolist()
    lone = run_texts(activator, name, [TEXTS[1]], predictions=True)
    same_math(lone.logits, [direct[name].text_logits(TEXTS[1])])
    # Without predictions, no logits.
    assert run_texts(activator, name, TEXTS[:2]).logits is None


def test_several_split_points_in_request_order(
    activator: Activator, direct: dict[str, Direct]
) -> None:
    points = ["bert.encoder.layer.1", "bert.embeddings", "classifier:input", "bert.pooler"]
    got = run_texts(activator, "bert", TEXTS, split_points=points)
    for chunk in got.chunks:
        assert [name for name, _ in chunk.activations] == points
    for i, text in enumerate(TEXTS):
        close(got.rows("bert.encoder.layer.1", i), direct["bert"].hidden(text, 2)[:1])
        close(got.rows("bert.embeddings", i), direct["bert"].hidden(text, 0)[:1])
        close(got.rows("classifier:input", i), [direct["bert"].head_input(text)])


def test_token_id_inputs_give_the_same_rows_as_their_text(activator: Activator) -> None:
    served = activator.registry.get("bert")
    ids = [served.tokenizer(t)["input_ids"] for t in TEXTS[:3]]
    by_ids = gather(
        list(
            activator.get_activations(
                ActivationParams(
                    model="bert",
                    inputs=[InputSpec(ids=i) for i in ids],
                    split_points=["bert.encoder.layer.0"],
                    granularity="word",
                )
            )
        )
    )
    by_text = run_texts(
        activator, "bert", TEXTS[:3], split_points=["bert.encoder.layer.0"], granularity="word"
    )
    np.testing.assert_array_equal(by_ids.offsets, by_text.offsets)
    close(by_ids.values["bert.encoder.layer.0"], by_text.values["bert.encoder.layer.0"])


class CallCounter:
    """Counts forward calls of some modules of a served model while in a `with` block."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        self.model = model
        self.names = names
        self.calls: Counter[str] = Counter()

    def __enter__(self) -> Counter[str]:
        self.handles = [
            self.model.get_submodule(name).register_forward_hook(
                lambda *_args, name=name: self.calls.update([name])
            )
            for name in self.names
        ]
        return self.calls

    def __exit__(self, *_exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def test_forward_stops_once_every_split_point_is_captured(
    registry: Registry, activator: Activator
) -> None:
    served = registry.get("bert")
    later = ["bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler", "classifier"]
    with CallCounter(served.model, later) as calls:
        run_texts(activator, "bert", TEXTS, split_points=["bert.encoder.layer.0"])
    assert calls["bert.encoder.layer.0"] >= 1
    assert calls["bert.encoder.layer.1"] == 0
    assert calls["bert.pooler"] == 0
    with CallCounter(served.model, later) as calls:
        run_texts(activator, "bert", TEXTS)  # the head's input: the head itself never runs
    assert calls["bert.pooler"] >= 1
    assert calls["classifier"] == 0
    with CallCounter(served.model, later) as calls:
        run_texts(activator, "bert", TEXTS, split_points=["bert.encoder.layer.0"], predictions=True)
    assert calls["bert.encoder.layer.1"] >= 1
    assert calls["classifier"] >= 1


def test_forward_stops_for_a_decoder_too(registry: Registry, activator: Activator) -> None:
    served = registry.get("gpt2")
    with CallCounter(served.model, ["transformer.h.0", "transformer.h.1", "score"]) as calls:
        run_texts(activator, "gpt2", TEXTS, split_points=["transformer.h.0"])
    assert calls["transformer.h.0"] >= 1
    assert calls["transformer.h.1"] == 0
    assert calls["score"] == 0


@pytest.mark.parametrize("granularity", ["all_tokens", "token", "word"])
def test_rows_without_units_are_the_same_rows(activator: Activator, granularity: str) -> None:
    fields: dict[str, Any] = {"split_points": ["bert.encoder.layer.1"], "granularity": granularity}
    described = run_texts(activator, "bert", TEXTS, **fields)
    bare = run_texts(activator, "bert", TEXTS, units=False, **fields)
    assert all(chunk.units for chunk in described.chunks)
    assert not any(chunk.units for chunk in bare.chunks)
    np.testing.assert_array_equal(bare.offsets, described.offsets)
    close(bare.values["bert.encoder.layer.1"], described.values["bert.encoder.layer.1"])
