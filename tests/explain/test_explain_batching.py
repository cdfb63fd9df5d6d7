"""Batching invariants: several inputs of different lengths in one request (their rows padded and
mixed in shared batches) give the scores of one-by-one requests, and they do share batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from explainserve.explain.method import Method
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.saliency import Saliency
from explainserve.explain.methods.smooth_grad import SmoothGrad
from explainserve.explain.params import ExplainParams
from explainserve.explain.service import Explainer
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.options import WorkerOptions
from explainserve.vocabulary import InputSpec

TEXTS = [
    "Good.",
    "The weather is nice today, isn't it?",
    "Dr. Smith arrived. He sat down! Did he eat?",
    "A short line.",
    "Gradients flow back through the transformer layers.",
]

METHODS: dict[str, Method] = {
    "occlusion": Occlusion(),
    "kernel_shap": KernelShap(n_perturbations=40),
    "lime": Lime(n_perturbations=30),
    "integrated_gradients": IntegratedGradients(n_steps=5),
    "smooth_grad": SmoothGrad(n_samples=3, noise_std=0.2),
    "saliency": Saliency(),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model", ["bert", "gpt2", "gpt2-zero"])
def test_request_of_many_equals_one_by_one(run, model: str, method: str) -> None:
    specs = [InputSpec(text=t, targets=[0, 2]) for t in TEXTS]
    together = run.many(model, specs, METHODS[method], granularity="word", seed=9)
    for spec, e in zip(specs, together, strict=True):
        alone = run.one(model, spec, METHODS[method], granularity="word", seed=9)
        assert e.units.token_indices == alone.units.token_indices
        np.testing.assert_array_equal(e.token_ids, alone.token_ids)
        np.testing.assert_allclose(e.logits, alone.logits, atol=1e-5)
        np.testing.assert_allclose(e.scores, alone.scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_dir", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_perturbations_of_several_inputs_share_batches(
    request: pytest.FixtureRequest, direct, model_dir: str
) -> None:
    """Every input's perturbations fit one batch alone, so unshared batches would number at least
    the inputs; shared, all inputs' rows (the unperturbed ones included) take far fewer. Rows of
    different lengths in one batch show up as padding."""
    path: Path = request.getfixturevalue(model_dir)
    texts = [*TEXTS, "Hello there, world of words.", "Another short line!", "It's a dog's life."]
    registry = Registry()
    registry.add(load_model(ModelConfig("m", path, device="cpu", worker=WorkerOptions())))
    try:
        worker = registry.get("m").worker
        budget = worker.options.token_budget
        out = sorted(
            Explainer(registry).explain(
                ExplainParams(
                    "m", [InputSpec(text=t) for t in texts], Occlusion(), granularity="token"
                )
            ),
            key=lambda e: e.input_index,
        )
        stats = worker.stats
        per_input = [int(np.ceil(e.forward_passes * len(e.token_ids) / budget)) for e in out]
        assert per_input == [1] * len(texts)
        assert stats.rows == sum(e.forward_passes for e in out)
        assert stats.batches < sum(per_input)
        assert stats.padded_tokens > stats.real_tokens
        # Shared batches, same numbers: compare with the direct model.
        ref = direct["bert" if model_dir == "tiny_bert_dir" else "gpt2"]
        for text, e in zip(texts, out, strict=True):
            np.testing.assert_allclose(e.logits, ref.logits(ids=ref.encode(text))[0], atol=1e-5)
    finally:
        registry.close()


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_progress_counts_every_forward_pass(explainer, method: str) -> None:
    seen: list[tuple[int, int]] = []
    params = ExplainParams(
        "bert", [InputSpec(text=t) for t in TEXTS], METHODS[method], granularity="token"
    )
    out = list(
        explainer.explain(params, on_progress=lambda done, total: seen.append((done, total)))
    )
    total = sum(e.forward_passes for e in out)
    assert seen
    assert {t for _, t in seen} == {total}
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == total
