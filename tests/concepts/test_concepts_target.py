"""Inputs -> concepts: Explain with a concept target explains a concept's activation C_k =
t(h(x))_k instead of a class score, with the same methods, units and estimators. Checked against
the Hugging Face model's own head input and the encoders' formulas (`concept_refs`), and by the
methods' invariants (KernelSHAP's efficiency, Integrated Gradients' completeness)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from concept_sets import HEAD_INPUT, encode_ref, random_set
from reference_models import Direct

from explainserve.concepts.params import ConceptParams, ConceptRef, ConceptTarget
from explainserve.concepts.registry import ConceptRegistry, bind
from explainserve.concepts.service import ConceptExplainer
from explainserve.errors import InvalidArgument, NotFound
from explainserve.explain.method import Method
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.saliency import Saliency
from explainserve.explain.methods.sobol import Sobol
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.service import Explainer
from explainserve.models.registry import Registry
from explainserve.vocabulary import InputSpec

TEXTS = ["The food was cold and the staff rude.", "Lovely!", "A short line, two clauses."]
#: float32 server against float64 reference, through the whole tiny model: a few 1e-6 relative.
TOL = {"rtol": 1e-4, "atol": 2e-5}


@pytest.fixture(scope="module")
def concepts(concept_models: Registry) -> ConceptRegistry:
    """One random set of each kind needed, per model: '<model>-<kind>'."""
    reg = ConceptRegistry()
    for model, (point, size) in HEAD_INPUT.items():
        for kind in ("linear", "relu", "topk", "nnls"):
            cs = random_set(kind, size, 6, seed=11, model=model, split_point=point)
            reg.add(bind(f"{model}-{kind}", cs, concept_models.get(model), "test"))
    return reg


@pytest.fixture(scope="module")
def explainer(concept_models: Registry, concepts: ConceptRegistry) -> Explainer:
    """Explain on the tiny models with the sets above."""
    return Explainer(concept_models, concepts=concepts)


def explain(
    explainer: Explainer,
    model: str,
    kind: str,
    texts: list[str],
    method: Method,
    explained: tuple[int | str, ...] = (),
    **kwargs: object,
) -> list[Explanation]:
    """Every input's explanation of the set's concepts `explained`, by input index."""
    params = ExplainParams(
        model=model,
        inputs=[InputSpec(text=t) for t in texts],
        method=method,
        concept_target=ConceptTarget(ConceptRef(name=f"{model}-{kind}"), explained),
        **kwargs,  # type: ignore[arg-type]
    )
    return sorted(explainer.explain(params), key=lambda e: e.input_index)


def concepts_of(direct: Direct, explainer: Explainer, name: str, ids: np.ndarray) -> np.ndarray:
    """`(rows, K)` the reference concept activations of rows of token ids (equal length)."""
    cs = explainer.concepts.get(name.split("-")[0], name, "x").concept_set
    rows = direct.head_inputs(direct.embed(ids))
    return encode_ref(cs, rows.astype(np.float64))


@pytest.mark.parametrize("model", ["bert", "roberta", "distilbert", "gpt2"])
@pytest.mark.parametrize("kind", ["relu", "topk", "nnls"])
def test_occlusion_of_a_concept_is_its_drop_when_each_unit_is_replaced(
    explainer: Explainer,
    concept_models: Registry,
    direct: dict[str, Direct],
    model: str,
    kind: str,
) -> None:
    served = concept_models.get(model)
    rid = served.replacement.token_id
    for e in explain(explainer, model, kind, TEXTS, Occlusion(), explained=(0, 3)):
        ids = e.token_ids
        rows = [ids] + [ids.copy() for _ in e.units.token_indices]
        for u, tokens in enumerate(e.units.token_indices):
            rows[1 + u][tokens] = rid
        c = concepts_of(direct[model], explainer, f"{model}-{kind}", np.stack(rows))
        assert e.target_indices == [0, 3]
        assert e.target_labels == ["c0", "c3"]
        np.testing.assert_allclose(e.scores, (c[0] - c[1:])[:, [0, 3]].T, **TOL)
        assert e.concept_activations is not None
        np.testing.assert_allclose(e.concept_activations, c[0], **TOL)
        np.testing.assert_allclose(e.logits, direct[model].text_logits(e.text), **TOL)


def test_the_default_concept_is_the_most_activated_one(
    explainer: Explainer, concept_models: Registry, concepts: ConceptRegistry
) -> None:
    got = explain(explainer, "distilbert", "relu", TEXTS, Occlusion())
    reference = ConceptExplainer(concept_models, concepts)
    params = ConceptParams(
        model="distilbert",
        inputs=[InputSpec(text=t) for t in TEXTS],
        concepts=ConceptRef(name="distilbert-relu"),
    )
    by_index = {e.input_index: e for e in reference.explain(params)}
    for e in got:
        assert e.concept_activations is not None
        assert e.target_indices == [int(np.argmax(e.concept_activations))]
        # ExplainConcepts' C of the same input.
        np.testing.assert_allclose(
            e.concept_activations, by_index[e.input_index].concepts[0], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_kernel_shap_values_of_a_concept_add_up_to_its_change(
    explainer: Explainer, concept_models: Registry, direct: dict[str, Direct], model: str
) -> None:
    """Efficiency: with the exact design (2^units <= n), the values add up to C_k(x) - C_k(x
    with every unit replaced)."""
    rid = concept_models.get(model).replacement.token_id
    for e in explain(explainer, model, "topk", TEXTS[1:], KernelShap(n_perturbations=1024), (2,)):
        ids = e.token_ids
        empty = ids.copy()
        for tokens in e.units.token_indices:
            empty[tokens] = rid
        c = concepts_of(direct[model], explainer, f"{model}-topk", np.stack([ids, empty]))
        np.testing.assert_allclose(e.scores.sum(), c[0, 2] - c[1, 2], **TOL)


def test_integrated_gradients_of_a_concept_are_complete(
    explainer: Explainer, direct: dict[str, Direct]
) -> None:
    """With the signed sum and token units, IG's scores add up to C_k(x) - C_k(baseline), the
    baseline zero at every unit's embedding (special tokens keep theirs). 256 Gauss-Legendre
    steps on the tiny model's smooth path: a quadrature error far below float32 rounding."""
    method = IntegratedGradients(n_steps=256)
    for e in explain(explainer, "bert", "linear", TEXTS, method, (1, 4), granularity="token"):
        x = direct["bert"].embed(e.token_ids)
        moved = np.zeros(len(e.token_ids), dtype=bool)
        for tokens in e.units.token_indices:
            moved[tokens] = True
        base = x.clone()
        base[0, torch.from_numpy(moved)] = 0.0
        cs = explainer.concepts.get("bert", "bert-linear", "x").concept_set
        c = encode_ref(cs, direct["bert"].head_inputs(torch.cat([x, base])).astype(np.float64))
        np.testing.assert_allclose(
            e.scores.sum(axis=1), (c[0] - c[1])[[1, 4]], rtol=1e-3, atol=1e-4
        )


@pytest.mark.parametrize(
    "method",
    [Lime(n_perturbations=64), Sobol(n_points=8), Saliency()],
    ids=["lime", "sobol", "saliency"],
)
def test_every_method_explains_concepts_as_it_explains_classes(
    explainer: Explainer, method: Method
) -> None:
    got = explain(explainer, "roberta", "relu", TEXTS, method, ("c5", 1), seed=3)
    for e in got:
        assert e.target_labels == ["c5", "c1"]
        assert e.scores.shape == (2, len(e.units.texts))
        assert np.isfinite(e.scores).all()
        assert np.abs(e.scores).max() > 0
    again = explain(explainer, "roberta", "relu", TEXTS, method, ("c5", 1), seed=3)
    for a, b in zip(got, again, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-7)


def test_concept_and_class_requests_at_once_each_get_their_own_outputs(
    explainer: Explainer,
) -> None:
    """Jobs explaining concepts and jobs explaining classes never share a batch (their rows are
    scored on different outputs); both give their results alone."""
    alone_concepts = explain(explainer, "bert", "relu", TEXTS * 3, Occlusion(), (1,))
    class_params = ExplainParams(
        model="bert", inputs=[InputSpec(text=t, targets=[1]) for t in TEXTS * 3], method=Occlusion()
    )
    alone_classes = sorted(explainer.explain(class_params), key=lambda e: e.input_index)
    results: dict[str, list[Explanation]] = {}
    gate = threading.Barrier(2)

    def concepts_run() -> None:
        gate.wait()
        results["concepts"] = explain(explainer, "bert", "relu", TEXTS * 3, Occlusion(), (1,))

    def classes_run() -> None:
        gate.wait()
        results["classes"] = sorted(explainer.explain(class_params), key=lambda e: e.input_index)

    threads = [threading.Thread(target=concepts_run), threading.Thread(target=classes_run)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for got, alone in ((results["concepts"], alone_concepts), (results["classes"], alone_classes)):
        for a, b in zip(got, alone, strict=True):
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-6)


def test_isolated_concept_requests_are_bit_for_bit(explainer: Explainer) -> None:
    first = explain(explainer, "gpt2", "topk", TEXTS, Lime(n_perturbations=32), (0,), isolate=True)
    again = explain(explainer, "gpt2", "topk", TEXTS, Lime(n_perturbations=32), (0,), isolate=True)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_bad_concept_targets_are_refused_naming_the_field(explainer: Explainer) -> None:
    def refused(error: type[Exception], match: str, field: str | None, **kwargs: object) -> None:
        params = ExplainParams(
            model=str(kwargs.pop("model", "bert")),
            inputs=[InputSpec(text="x y z", targets=list(kwargs.pop("targets", [])))],  # type: ignore[call-overload]
            method=kwargs.pop("method", Occlusion()),  # type: ignore[arg-type]
            concept_target=ConceptTarget(
                ConceptRef(name=str(kwargs.pop("name", "bert-relu"))),
                tuple(kwargs.pop("explained", ())),  # type: ignore[call-overload]
            ),
            **kwargs,  # type: ignore[arg-type]
        )
        with pytest.raises(error, match=match) as info:
            list(explainer.explain(params))
        if field is not None:
            assert getattr(info.value, "field", None) == field

    refused(
        InvalidArgument,
        "out of range: concept set 'bert-relu' has 6 concepts",
        "concept_target.concepts_explained[1]",
        explained=(0, 6),
    )
    refused(
        InvalidArgument,
        "no concept labelled 'food'",
        "concept_target.concepts_explained[0]",
        explained=("food",),
    )
    refused(NotFound, "no concept set named 'other'", None, name="other")
    refused(
        InvalidArgument,
        "belongs to model 'gpt2'",
        "concept_target.concepts.name",
        name="gpt2-relu",
    )
    refused(InvalidArgument, "has class targets", "inputs[0].targets", targets=[1])
    refused(InvalidArgument, "leave inference_mode unset", "inference_mode", mode="softmax")
    refused(
        InvalidArgument,
        "no gradient: use a perturbation method",
        "concept_target.concepts",
        name="bert-nnls",
        method=Saliency(),
    )


def test_an_inline_set_is_a_concept_target_too(
    explainer: Explainer, direct: dict[str, Direct], concept_models: Registry
) -> None:
    cs = random_set("linear", 32, 1, seed=4, model="bert", split_point="")
    params = ExplainParams(
        model="bert",
        inputs=[InputSpec(text=t) for t in TEXTS],
        method=Occlusion(),
        concept_target=ConceptTarget(ConceptRef(inline=cs)),
    )
    rid = concept_models.get("bert").replacement.token_id
    bound = replace(cs, split_point="classifier:input")
    for e in sorted(explainer.explain(params), key=lambda e: e.input_index):
        rows = [e.token_ids] + [e.token_ids.copy() for _ in e.units.token_indices]
        for u, tokens in enumerate(e.units.token_indices):
            rows[1 + u][tokens] = rid
        c = encode_ref(bound, direct["bert"].head_inputs(direct["bert"].embed(np.stack(rows))))
        np.testing.assert_allclose(e.scores[0], c[0, 0] - c[1:, 0], **TOL)
