"""ExplainConcepts in the domain: the concept activations and their contributions against an
independent float64 reference (the Hugging Face model's own head, numpy encoders), the additive
decomposition (contributions + residual + bias = the output for linear heads), Interpreto's
options, targets, batching, and bad requests."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from concept_sets import HEAD_INPUT, KINDS, expected, random_set
from reference_models import Direct

from explainserve.concepts.params import ConceptExplanation, ConceptParams, ConceptRef
from explainserve.concepts.registry import bind
from explainserve.concepts.service import ConceptExplainer
from explainserve.concepts.sets import ConceptSetError
from explainserve.errors import InvalidArgument, NotFound
from explainserve.models.registry import Registry
from explainserve.vocabulary import InputSpec

TEXTS = [
    "The food was cold and the staff rude.",
    "Lovely!",
    "A short line.",
    "It's a dog's life, isn't it? Deep learning models need careful explanations.",
]
#: Heads that are one linear map of their input (g∘t⁻¹ is then linear in C in logits mode):
#: BERT's, DistilBERT's and GPT-2's. RoBERTa's has a tanh layer.
LINEAR_HEADS = ("bert", "distilbert", "gpt2")
#: float32 (server) against float64 (reference): ~1e-6 relative on values of order 1, summed
#: over up to 32 features and 12 concepts.
TOL = {"rtol": 1e-4, "atol": 2e-5}


def serve_set(
    explainer: ConceptExplainer,
    registry: Registry,
    model: str,
    kind: str,
    k: int = 12,
    seed: int = 0,
) -> str:
    """Binds a random set of `kind` for `model`; returns its name."""
    point, size = HEAD_INPUT[model]
    name = f"{model}-{kind}-{k}-{seed}"
    if name not in [b.name for b in explainer.concepts.of_model(model)]:
        cs = random_set(kind, size, k, seed, model=model, split_point=point)
        explainer.concepts.add(bind(name, cs, registry.get(model), "test"))
    return name


def run(
    explainer: ConceptExplainer, model: str, name: str, texts: list[str], **kwargs: object
) -> list[ConceptExplanation]:
    """Every input's explanation, by input index."""
    targets = kwargs.pop("targets", [])
    params = ConceptParams(
        model=model,
        inputs=[InputSpec(text=t, targets=list(targets)) for t in texts],  # type: ignore[call-overload]
        concepts=ConceptRef(name=name),
        **kwargs,  # type: ignore[arg-type]
    )
    out = sorted(explainer.explain(params), key=lambda e: e.input_index)
    assert [e.input_index for e in out] == list(range(len(texts)))
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model", ["bert", "roberta", "distilbert", "gpt2"])
def test_raw_contributions_equal_the_reference(
    concept_explainer: ConceptExplainer,
    concept_models: Registry,
    direct: dict[str, Direct],
    model: str,
    kind: str,
) -> None:
    name = serve_set(concept_explainer, concept_models, model, kind)
    cs = concept_explainer.concepts.get(model, name, "x").concept_set
    got = run(concept_explainer, model, name, TEXTS, targets=[0, 2], normalization=False)
    for text, e in zip(TEXTS, got, strict=True):
        ref = expected(direct[model], cs, text, [0, 2])
        assert e.target_indices == [0, 2]
        assert e.target_labels == ["negative", "positive"]
        np.testing.assert_allclose(e.concepts[0], ref.concepts, **TOL)
        np.testing.assert_allclose(e.contributions[:, 0], ref.raw, **TOL)
        np.testing.assert_allclose(e.outputs, ref.outputs, **TOL)
        np.testing.assert_allclose(e.residual, ref.residual, **TOL)
        np.testing.assert_allclose(e.bias, ref.bias, **TOL)
        np.testing.assert_allclose(e.concept_sum, ref.raw.sum(axis=1), **TOL)
        np.testing.assert_allclose(e.logits, ref.logits, **TOL)
    if kind in ("relu", "topk", "jumprelu"):
        # The random sets cut: some concepts of some inputs are off.
        assert any((e.concepts == 0).any() for e in got)


@pytest.mark.parametrize("model", LINEAR_HEADS)
@pytest.mark.parametrize("kind", KINDS)
def test_contributions_residual_and_bias_add_up_to_the_output(
    concept_explainer: ConceptExplainer, concept_models: Registry, model: str, kind: str
) -> None:
    name = serve_set(concept_explainer, concept_models, model, kind)
    for e in run(concept_explainer, model, name, TEXTS, targets=[0, 1, 2], normalization=False):
        total = e.contributions[:, 0].sum(axis=1) + e.residual + e.bias
        np.testing.assert_allclose(total, e.outputs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e.gap, 0.0, atol=1e-5)
        # The residual is the reconstruction's: not 0 for a random dictionary.
        assert np.abs(e.residual).max() > 1e-3


def test_a_nonlinear_head_reports_what_the_concepts_do_not_add_up_to(
    concept_explainer: ConceptExplainer, concept_models: Registry, direct: dict[str, Direct]
) -> None:
    """RoBERTa's head (dense, tanh, projection): the first-order sum misses part of the
    output; `gap` is that part, the same as the reference's g(ĥ) - g(t⁻¹(0)) - Σ C·∇."""
    name = serve_set(concept_explainer, concept_models, "roberta", "linear")
    cs = concept_explainer.concepts.get("roberta", name, "x").concept_set
    got = run(concept_explainer, "roberta", name, TEXTS, targets=[0, 1, 2], normalization=False)
    for text, e in zip(TEXTS, got, strict=True):
        ref = expected(direct["roberta"], cs, text, [0, 1, 2])
        ref_gap = ref.outputs - ref.residual - ref.bias - ref.raw.sum(axis=1)
        np.testing.assert_allclose(e.gap, ref_gap, **TOL)
    assert max(np.abs(e.gap).max() for e in run(concept_explainer, "roberta", name, TEXTS)) > 1e-4


def test_normalized_contributions_have_unit_absolute_sum_per_target(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name = serve_set(concept_explainer, concept_models, "bert", "relu")
    raw = run(concept_explainer, "bert", name, TEXTS, targets=[0, 2], normalization=False)
    normalized = run(concept_explainer, "bert", name, TEXTS, targets=[0, 2])
    for r, n in zip(raw, normalized, strict=True):
        np.testing.assert_allclose(np.abs(n.contributions).sum(axis=(1, 2)), 1.0, rtol=1e-6)
        scale = np.abs(r.contributions).sum(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(n.contributions, r.contributions / scale, rtol=1e-6)
        # What adds up is unchanged by the option.
        np.testing.assert_array_equal(n.concept_sum, r.concept_sum)


def test_gradients_alone_are_the_dictionary_through_a_linear_head(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    """`concepts_x_gradients=False`: ∂(g∘t⁻¹)/∂C = D · W[t] for BERT's linear head."""
    name = serve_set(concept_explainer, concept_models, "bert", "linear")
    cs = concept_explainer.concepts.get("bert", name, "x").concept_set
    weight = concept_models.get("bert").model.classifier.weight.detach().numpy()
    closed = cs.decoder_weight @ weight.T  # (K, C)
    got = run(
        concept_explainer,
        "bert",
        name,
        TEXTS,
        targets=[2, 0],
        concepts_x_gradients=False,
        normalization=False,
    )
    for e in got:
        np.testing.assert_allclose(e.contributions[:, 0], closed[:, [2, 0]].T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["softmax", "log_softmax"])
def test_inference_modes_explain_that_function_of_the_logits(
    concept_explainer: ConceptExplainer,
    concept_models: Registry,
    direct: dict[str, Direct],
    mode: str,
) -> None:
    name = serve_set(concept_explainer, concept_models, "distilbert", "topk")
    cs = concept_explainer.concepts.get("distilbert", name, "x").concept_set
    got = run(
        concept_explainer, "distilbert", name, TEXTS, targets=[1], mode=mode, normalization=False
    )
    for text, e in zip(TEXTS, got, strict=True):
        ref = expected(direct["distilbert"], cs, text, [1], mode)
        np.testing.assert_allclose(e.outputs, ref.outputs, **TOL)
        np.testing.assert_allclose(e.contributions[:, 0], ref.raw, **TOL)
        np.testing.assert_allclose(e.residual, ref.residual, **TOL)
        # Its logits are the model's whatever the mode.
        np.testing.assert_allclose(e.logits, ref.logits, **TOL)


def test_the_default_target_is_the_predicted_class_and_labels_name_classes(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name = serve_set(concept_explainer, concept_models, "gpt2", "linear")
    default = run(concept_explainer, "gpt2", name, TEXTS)
    for e in default:
        assert e.target_indices == [int(np.argmax(e.logits))]
    labelled = run(concept_explainer, "gpt2", name, TEXTS, targets=["positive", 0])
    assert all(e.target_indices == [2, 0] for e in labelled)


def test_inputs_of_a_request_share_batches_and_equal_their_results_alone(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name = serve_set(concept_explainer, concept_models, "bert", "jumprelu")
    worker = concept_models.get("bert").worker
    alone = [run(concept_explainer, "bert", name, [t], targets=[0, 2])[0] for t in TEXTS]
    before = worker.stats.batches
    together = run(concept_explainer, "bert", name, TEXTS * 5, targets=[0, 2])
    assert worker.stats.batches - before == 1  # 20 short inputs: one batch of the pass
    for i, e in enumerate(together):
        a = alone[i % len(TEXTS)]
        # Padded to the batch's longest row: equal up to float32 rounding.
        np.testing.assert_allclose(e.concepts, a.concepts, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(e.contributions, a.contributions, rtol=1e-4, atol=1e-6)


def test_isolated_requests_are_bit_for_bit_their_results_alone(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name = serve_set(concept_explainer, concept_models, "roberta", "topk")
    first = run(concept_explainer, "roberta", name, TEXTS, isolate=True)
    again = run(concept_explainer, "roberta", name, TEXTS, isolate=True)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.concepts, b.concepts)
        np.testing.assert_array_equal(a.contributions, b.contributions)


def test_the_transformer_runs_without_gradients_and_the_head_on_rows_alone(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    """At the head's input, g is the head alone: the encoder runs with gradients off (no graph
    through it, so no backward pass can reach it), once per batch, and the head runs on the
    rows only (never inside the model's forward)."""
    name = serve_set(concept_explainer, concept_models, "bert", "relu")
    model = concept_models.get("bert").model
    encoder: list[bool] = []
    head: list[tuple[int, ...]] = []
    hooks = [
        model.bert.encoder.register_forward_hook(
            lambda *_: encoder.append(torch.is_grad_enabled())
        ),
        model.classifier.register_forward_hook(lambda _m, i, _o: head.append(tuple(i[0].shape))),
    ]
    try:
        run(concept_explainer, "bert", name, TEXTS, targets=[0, 1])
    finally:
        for h in hooks:
            h.remove()
    assert encoder == [False]
    # The head on the batch's rows, on their reconstructions, and once on t⁻¹(0).
    assert sorted(head) == sorted([(4, 32), (4, 32), (1, 32)])


def test_unknown_sets_and_other_models_sets_are_refused(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name = serve_set(concept_explainer, concept_models, "bert", "linear")
    with pytest.raises(NotFound, match="no concept set named 'nope'"):
        run(concept_explainer, "bert", "nope", TEXTS)
    with pytest.raises(InvalidArgument, match="belongs to model 'bert', not 'gpt2'") as info:
        run(concept_explainer, "gpt2", name, TEXTS)
    assert info.value.field == "concepts.name"


def test_bad_targets_and_inputs_are_refused(
    concept_explainer: ConceptExplainer, concept_models: Registry
) -> None:
    name = serve_set(concept_explainer, concept_models, "bert", "linear")
    with pytest.raises(InvalidArgument, match="out of range") as info:
        run(concept_explainer, "bert", name, TEXTS, targets=[3])
    assert info.value.field == "inputs[0].targets[0]"
    with pytest.raises(InvalidArgument, match="twice"):
        run(concept_explainer, "bert", name, TEXTS, targets=[1, 1])
    with pytest.raises(NotFound, match="no label 'joy'"):
        run(concept_explainer, "bert", name, TEXTS, targets=["joy"])
    with pytest.raises(InvalidArgument, match="no inputs"):
        run(concept_explainer, "bert", name, [])


def test_inline_sets_are_bound_to_the_request_and_checked(
    concept_explainer: ConceptExplainer, concept_models: Registry, direct: dict[str, Direct]
) -> None:
    cs = random_set("linear", 32, 2, seed=5, model="ignored", split_point="")
    params = ConceptParams(
        model="distilbert",
        inputs=[InputSpec(text=t) for t in TEXTS],
        concepts=ConceptRef(inline=cs),
        normalization=False,
    )
    got = sorted(concept_explainer.explain(params), key=lambda e: e.input_index)
    bound = replace(cs, split_point="classifier:input")
    for text, e in zip(TEXTS, got, strict=True):
        ref = expected(direct["distilbert"], bound, text, e.target_indices)
        np.testing.assert_allclose(e.contributions[:, 0], ref.raw, **TOL)

    def refused(inline: object, match: str, field: str) -> None:
        with pytest.raises(InvalidArgument, match=match) as info:
            list(concept_explainer.explain(replace(params, concepts=ConceptRef(inline=inline))))  # type: ignore[arg-type]
        assert info.value.field == field

    refused(
        replace(cs, decoder_weight=np.ones((2, 31), np.float32)),
        r"decoder.bias has shape \[32\], expected \[31\]",
        "concepts.inline",
    )
    nan = cs.decoder_weight.copy()
    nan[1, 3] = np.nan
    refused(replace(cs, decoder_weight=nan), "NaN or infinite", "concepts.inline")
    refused(
        random_set("linear", 32, 4100, model="x", split_point=""),
        "the limit is 262144",
        "concepts.inline",
    )
    refused(
        replace(cs, split_point="pre_classifier"),
        "one per input: concept sets are served at the classification head's input",
        "concepts.inline",
    )


def test_binding_checks_split_point_size_labels_and_probe(concept_models: Registry) -> None:
    bert = concept_models.get("bert")
    cs = random_set("linear", 32, 3, model="bert")
    with pytest.raises(ConceptSetError, match="has no split point 'nope'"):
        bind("s", replace(cs, split_point="nope"), bert, "f.safetensors")
    with pytest.raises(ConceptSetError, match="33 features; split point 'classifier:input'"):
        bind("s", random_set("relu", 33, 3), bert, "f.safetensors")
    labels = replace(cs, model=replace(cs.model, labels=("a", "b", "c")))
    with pytest.raises(ConceptSetError, match=r"fitted for labels \['a', 'b', 'c'\]"):
        bind("s", labels, bert, "f.safetensors")
    # The probe row: the served model's own is accepted; DistilBERT's (another model with a head
    # input of the same size) is refused, with how far it is.
    from explainserve.concepts.registry import probe_row
    from explainserve.concepts.sets import PROBE_TEXT

    own = probe_row(bert, PROBE_TEXT)
    bind("s", replace(cs, model=replace(cs.model, probe=own)), bert, "f.safetensors")
    nudged = own + 0.01 * np.abs(own).mean()
    bind("s", replace(cs, model=replace(cs.model, probe=nudged.astype(np.float32))), bert, "f")
    other = probe_row(concept_models.get("distilbert"), PROBE_TEXT)
    with pytest.raises(ConceptSetError, match="fitted on another model: its probe row differs"):
        bind("s", replace(cs, model=replace(cs.model, probe=other)), bert, "f.safetensors")


def test_a_gradient_of_the_nnls_encoding_is_not_claimed(concept_models: Registry) -> None:
    """NNLS codes come from an active set: the codec says it has no gradient (the inputs ->
    concepts gradient methods refuse it), while the decoder's gradient is what ExplainConcepts
    uses, so ExplainConcepts serves NNLS sets."""
    bound = bind("s", random_set("nnls", 32, 4, model="bert"), concept_models.get("bert"), "f")
    assert not bound.codec.differentiable
    x = torch.randn(3, 32)
    c = bound.codec.encode(x)
    assert (c >= 0).all()
