"""Targets: several per input (indices and label names) give one row each, equal to single-target
runs; the default target is the argmax of the direct model's logits; the returned logits are the
direct model's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from explainserve.explain.method import Method
from explainserve.explain.methods.gradient_shap import GradientShap
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.saliency import Saliency
from explainserve.explain.perturbation import PerturbationRun
from explainserve.explain.run import Item, Picked, RunContext
from explainserve.scheduling.jobs import ForwardJob, Job
from explainserve.vocabulary import InputSpec

TEXTS = [
    "The weather is nice today, isn't it?",
    "Crème brûlée is a French dessert; piñata is Spanish.",
    "Wait... what?! Really? Yes!",
    "Deep learning models need careful explanations.",
]
METHODS: dict[str, Method] = {
    "occlusion": Occlusion(),
    "kernel_shap": KernelShap(n_perturbations=48),
    "saliency": Saliency(),
    "integrated_gradients": IntegratedGradients(n_steps=4),
    "gradient_shap": GradientShap(n_samples=3),
}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_multi_target_rows_equal_single_target_runs(run, model: str, method: str) -> None:
    text = TEXTS[0]
    targets: list[int | str] = [2, "negative", 1, "positive"]
    multi = run.one(model, InputSpec(text=text, targets=targets), METHODS[method], seed=2)
    assert multi.target_indices == [2, 0, 1, 2]
    assert multi.target_labels == ["positive", "negative", "neutral", "positive"]
    assert multi.scores.shape == (4, multi.units.n_units)
    for row, target in enumerate(targets):
        single = run.one(model, InputSpec(text=text, targets=[target]), METHODS[method], seed=2)
        assert single.scores.shape == (1, multi.units.n_units)
        if method == "gradient_shap":
            # The same noisy baselines and path points serve every target of an input.
            np.testing.assert_allclose(multi.scores[row], single.scores[0], rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_allclose(multi.scores[row], single.scores[0], rtol=1e-5, atol=1e-6)
    # Repeating a target repeats its row.
    np.testing.assert_array_equal(multi.scores[0], multi.scores[3])


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_default_target_is_argmax_and_logits_are_the_models(run, direct, model: str) -> None:
    ref = direct[model]
    out = run.many(model, TEXTS, Occlusion())
    chosen = set()
    for text, e in zip(TEXTS, out, strict=True):
        logits = ref.logits(ids=ref.encode(text))[0].numpy()
        np.testing.assert_allclose(e.logits, logits, rtol=1e-5, atol=1e-5)
        assert e.logits.dtype == np.float32
        assert e.target_indices == [int(np.argmax(logits))]
        assert e.target_labels == [ref.labels[int(np.argmax(logits))]]
        chosen.add(e.target_indices[0])
    assert len(chosen) > 1  # the texts do not all predict the same class


def test_targets_differ_per_input(run) -> None:
    """Each input of one request gets its own targets."""
    specs = [InputSpec(text=TEXTS[0], targets=[0]), InputSpec(text=TEXTS[1], targets=[1, 2])]
    out = run.many("bert", specs, Occlusion())
    assert [e.target_indices for e in out] == [[0], [1, 2]]
    assert [e.scores.shape[0] for e in out] == [1, 2]


class _Forgetful(PerturbationRun):
    """A run that forgets the targets it picked (a method breaking its contract)."""

    @property
    def picked(self) -> Picked | None:
        return None


@dataclass(frozen=True)
class _NoPick(Occlusion):
    """Occlusion whose runs pick targets late but report none."""

    def start(self, item: Item, ctx: RunContext) -> PerturbationRun:
        return _Forgetful(item, self, ctx)


def test_a_run_that_picks_no_targets_is_an_error(run) -> None:
    """A method that picks its targets late must report them: a real error (not an assert,
    gone under `python -O`) says which method broke that."""
    with pytest.raises(RuntimeError, match="method occlusion picks its targets once the rows"):
        run.one("bert", TEXTS[0], _NoPick())


def test_unrecorded_logits_of_the_unperturbed_row_are_an_error(run, registry) -> None:
    """A worker path that ran row 0 without recording its logits leaves nothing to pick the
    targets from: a real error, not an assert."""
    worker = registry.get("bert").worker

    def forget(pieces: Sequence[tuple[Job[Any], int, int]]) -> None:
        for job, _, _ in pieces:
            if isinstance(job, ForwardJob):
                job.logits_row = False

    worker.fault_hook = forget
    try:
        with pytest.raises(RuntimeError, match="did not record the unperturbed row's logits"):
            run.one("bert", TEXTS[0], Occlusion())
    finally:
        worker.fault_hook = None
