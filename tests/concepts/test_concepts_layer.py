"""ExplainConcepts at a split point with a token dimension: rows read from a layer (tokens, or
words and sentences aggregated), encoded, decoded and put back in place of their tokens, the
rest of the model differentiated to C. Checked against a reference that does the same with a
forward hook on the Hugging Face model itself, input by input, unpadded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from concept_sets import decode_ref, encode_ref, random_set
from reference_models import Direct, mode_ref

from explainserve.concepts.params import ConceptExplanation, ConceptParams, ConceptRef
from explainserve.concepts.registry import bind
from explainserve.concepts.service import ConceptExplainer
from explainserve.concepts.sets import ConceptSet
from explainserve.errors import InvalidArgument
from explainserve.models.registry import Registry
from explainserve.vocabulary import InputSpec

TEXTS = [
    "The food was cold. The staff were rude!",
    "Lovely!",
    "A short line, with a comma.",
]
#: A layer of each tiny model (BERT and RoBERTa right-padded, GPT-2 left-padded).
LAYERS = {
    "bert": "bert.encoder.layer.0",
    "roberta": "roberta.encoder.layer.1",
    "gpt2": "transformer.h.0",
}
#: float32 through a transformer layer and the rest of the model, server against reference.
TOL = {"rtol": 1e-4, "atol": 2e-5}


def layer_set(
    explainer: ConceptExplainer, registry: Registry, model: str, kind: str = "relu"
) -> tuple[str, ConceptSet]:
    """A random set at `LAYERS[model]`, served; its name and the set."""
    name = f"{model}-layer-{kind}"
    if name not in [b.name for b in explainer.concepts.of_model(model)]:
        cs = random_set(kind, 32, 7, seed=21, model=model, split_point=LAYERS[model])
        explainer.concepts.add(bind(name, cs, registry.get(model), "test"))
    return name, explainer.concepts.get(model, name, "x").concept_set


def run(
    explainer: ConceptExplainer, model: str, name: str, texts: list[str], **kwargs: Any
) -> list[ConceptExplanation]:
    """Every input's explanation, by input index."""
    targets = kwargs.pop("targets", [0, 2])
    params = ConceptParams(
        model=model,
        inputs=[InputSpec(text=t, targets=list(targets)) for t in texts],
        concepts=ConceptRef(name=name),
        normalization=kwargs.pop("normalization", False),
        **kwargs,
    )
    return sorted(explainer.explain(params), key=lambda e: e.input_index)


def reference(
    direct: Direct,
    cs: ConceptSet,
    point: str,
    ids: np.ndarray,
    groups: list[list[int]],
    targets: list[int],
    aggregation: str,
) -> dict[str, np.ndarray]:
    """The same computation on one unpadded input with a hook on module `point`: rows (one per
    group of token positions), C, the reconstruction put back, the gradient of each target."""
    model = direct.model
    module = model.get_submodule(point)
    t = torch.as_tensor(ids)[None]
    seen: list[torch.Tensor] = []

    def keep(_m: Any, _i: Any, out: Any) -> None:
        seen.append((out[0] if isinstance(out, tuple) else out).detach())

    handle = module.register_forward_hook(keep)
    try:
        with torch.no_grad():
            logits = model(input_ids=t, attention_mask=torch.ones_like(t)).logits.double()
    finally:
        handle.remove()
    layer = seen[0][0].double().numpy()  # (n, d)

    def agg(rows: np.ndarray) -> np.ndarray:
        if aggregation == "sum":
            return rows.sum(axis=0)
        return rows.mean(axis=0)

    rows = np.stack([agg(layer[g]) for g in groups])
    concepts = encode_ref(cs, rows)

    def run_with(values: torch.Tensor) -> torch.Tensor:
        def edit(_m: Any, _i: Any, out: Any) -> Any:
            h = (out[0] if isinstance(out, tuple) else out).clone()
            for r, g in enumerate(groups):
                share = values[r] / len(g) if aggregation == "sum" else values[r]
                h[0, g] = share.to(h.dtype)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = module.register_forward_hook(edit)
        try:
            return model(input_ids=t, attention_mask=torch.ones_like(t)).logits.double()
        finally:
            handle.remove()

    leaf = torch.from_numpy(concepts).float().requires_grad_(True)
    dictionary = torch.from_numpy(cs.decoder_weight)
    bias_d = torch.from_numpy(cs.decoder_bias) if cs.decoder_bias is not None else 0
    with torch.enable_grad():
        recon = mode_ref(run_with(leaf @ dictionary + bias_d), "logits")[0]
        grads = [
            torch.autograd.grad(recon[k], leaf, retain_graph=True)[0].double() for k in targets
        ]
    with torch.no_grad():
        off = run_with(torch.zeros_like(leaf) @ dictionary + bias_d)[0]
    gradient = torch.stack(grads).numpy()  # (T, rows, K)
    return {
        "concepts": concepts,
        "raw": concepts[None] * gradient,
        "residual": (logits[0] - recon.detach())[targets].numpy(),
        "bias": off[targets].numpy(),
        "outputs": logits[0][targets].numpy(),
        "error": np.linalg.norm(rows - decode_ref(cs, concepts)) / np.linalg.norm(rows),
    }


@pytest.mark.parametrize("model", list(LAYERS))
@pytest.mark.parametrize(
    ("granularity", "aggregation"),
    [
        ("token", "mean"),
        ("word", "mean"),
        ("word", "sum"),
        ("sentence", "mean"),
        ("cls_token", "mean"),
    ],
)
def test_rows_at_a_layer_equal_the_reference(
    concept_explainer: ConceptExplainer,
    concept_models: Registry,
    direct: dict[str, Direct],
    model: str,
    granularity: str,
    aggregation: str,
) -> None:
    name, cs = layer_set(concept_explainer, concept_models, model)
    served = concept_models.get(model)
    got = run(
        concept_explainer,
        model,
        name,
        TEXTS,
        granularity=granularity,
        aggregation=aggregation,
    )
    for e in got:
        if granularity == "cls_token":
            assert e.units is None
            head = len(e.token_ids) - 1 if served.runner.padding_side == "left" else 0
            groups = [[head]]
        else:
            assert e.units is not None
            groups = [list(g) for g in e.units.token_indices]
        ref = reference(direct[model], cs, LAYERS[model], e.token_ids, groups, [0, 2], aggregation)
        assert e.concepts.shape == (len(groups), 7)
        np.testing.assert_allclose(e.concepts, ref["concepts"], **TOL)
        np.testing.assert_allclose(e.contributions, ref["raw"], **TOL)
        np.testing.assert_allclose(e.residual, ref["residual"], **TOL)
        np.testing.assert_allclose(e.bias, ref["bias"], **TOL)
        np.testing.assert_allclose(e.outputs, ref["outputs"], **TOL)
        np.testing.assert_allclose(e.reconstruction_error, ref["error"], rtol=1e-4)
        np.testing.assert_allclose(e.concept_sum, ref["raw"].sum(axis=(1, 2)), **TOL)
        assert e.forward_passes == 3


def test_the_default_rows_are_the_sets_fit_granularity_and_words_are_units(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name, _ = layer_set(concept_explainer, concept_models, "bert", "topk")
    default = run(concept_explainer, "bert", name, TEXTS[:1])[0]  # the set says cls_token
    assert default.concepts.shape[0] == 1
    words = run(concept_explainer, "bert", name, TEXTS[:1], granularity="word")[0]
    assert words.units is not None
    assert words.units.texts == [
        "The",
        "food",
        "was",
        "cold",
        ".",
        "The",
        "staff",
        "were",
        "rude",
        "!",
    ]
    # Normalized over the input's rows and concepts, per target.
    normalized = run(
        concept_explainer, "bert", name, TEXTS[:1], granularity="word", normalization=True
    )[0]
    np.testing.assert_allclose(np.abs(normalized.contributions).sum(axis=(1, 2)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_inputs_of_different_lengths_in_one_request_equal_their_results_alone(
    concept_explainer: ConceptExplainer, concept_models: Registry, model: str
) -> None:
    """Padded to the batch's longest input (on the right for BERT, the left for GPT-2): each
    input's rows and the edit land on its own positions."""
    name, _ = layer_set(concept_explainer, concept_models, model)
    together = run(concept_explainer, model, name, TEXTS, granularity="token")
    for text, e in zip(TEXTS, together, strict=True):
        (alone,) = run(concept_explainer, model, name, [text], granularity="token")
        np.testing.assert_allclose(e.contributions, alone.contributions, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(e.residual, alone.residual, rtol=1e-4, atol=1e-6)


def test_layer_sets_refuse_what_does_not_apply(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name, _ = layer_set(concept_explainer, concept_models, "bert")
    head = random_set("relu", 32, 3, model="bert")
    concept_explainer.concepts.add(bind("bert-head-x", head, concept_models.get("bert"), "t"))
    with pytest.raises(InvalidArgument, match="only granularity cls_token applies") as info:
        run(concept_explainer, "bert", "bert-head-x", TEXTS, granularity="word")
    assert info.value.field == "granularity"
    tokenizer = concept_models.get("bert").tokenizer
    only_specials = InputSpec(ids=[tokenizer.cls_token_id, tokenizer.sep_token_id])
    params = ConceptParams(
        model="bert", inputs=[only_specials], concepts=ConceptRef(name=name), granularity="token"
    )
    with pytest.raises(InvalidArgument, match="input 0 has no token rows"):
        list(concept_explainer.explain(params))
