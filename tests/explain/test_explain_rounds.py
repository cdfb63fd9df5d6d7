"""A classifier's perturbation request queues once: each input's job carries its unperturbed row
(which picks the target when the request names none) with its perturbations, scored on every
class; the targets' scores are taken afterwards. Rounds are counted at the worker (its
`submit_all` calls and their jobs), never timed; the targets and scores are those of the
two-round flow (a forward pass that picks the targets, then the perturbation job given them),
bit for bit, and the logits up to float32 rounding (row 0 now shares its job's batch)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from explainserve.explain.common import finished, start_runs
from explainserve.explain.method import Method
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.sobol import Sobol
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.run import Item, Progress, RunContext, TargetChoice
from explainserve.explain.service import Explainer
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.jobs import ForwardJob, Job, RequestTag
from explainserve.scheduling.worker import Worker
from explainserve.vocabulary import Granularity, InferenceMode, InputSpec, make_units

TEXT = "The weather is nice today, isn't it?"
OTHER = "A dull, slow and far too long film."

PERTURBATION: dict[str, Method] = {
    "occlusion": Occlusion(),
    "lime": Lime(n_perturbations=24),
    "kernel_shap": KernelShap(n_perturbations=24),
    "sobol": Sobol(n_points=4),
}


class Rounds:
    """Records the worker's submissions while active: per `submit_all` call, its jobs' kinds
    and rows."""

    def __init__(self, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[tuple[str, int]]] = []
        real = worker.submit_all

        def submit_all(jobs: Iterable[Job[Any]]) -> None:
            jobs = list(jobs)
            self.calls.append([(job.kind, job.n_rows) for job in jobs])
            real(jobs)

        monkeypatch.setattr(worker, "submit_all", submit_all)


@pytest.fixture
def rounds(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> dict[str, Rounds]:
    return {name: Rounds(registry.get(name).worker, monkeypatch) for name in ("bert", "gpt2")}


def explain(
    explainer: Explainer,
    model: str,
    specs: list[InputSpec],
    method: Method,
    granularity: Granularity = "word",
    mode: InferenceMode = "logits",
) -> list[Explanation]:
    params = ExplainParams(
        model, specs, method, granularity=granularity, mode=mode, seed=7, isolate=True
    )
    return sorted(explainer.explain(params), key=lambda e: e.input_index)


def two_rounds(
    model: ServedModel,
    specs: list[InputSpec],
    method: Method,
    granularity: Granularity = "word",
    mode: InferenceMode = "logits",
) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """The reference: the flow before (the raw logits of each unperturbed input, its targets
    picked from them, then the perturbation jobs given the targets). Per input: targets, logits,
    scores."""
    tag = RequestTag(None, isolated=True)
    encoded = [model.encode(spec, i) for i, spec in enumerate(specs)]
    classes = np.arange(len(model.labels), dtype=np.int64)
    base = [
        ForwardJob(ids=e.ids[None, :], attention=e.attention, targets=classes, is_cancelled=tag)
        for e in encoded
    ]
    model.worker.submit_all(base)
    logits = [job.future.result()[0] for job in base]
    items = []
    for i, (spec, e) in enumerate(zip(specs, encoded, strict=True)):
        given = [t if isinstance(t, int) else model.label_index(t) for t in spec.targets]
        choice = TargetChoice(np.asarray(given, dtype=np.int64) if given else None)
        units = make_units(e, granularity, model.tokenizer)
        items.append(Item(i, e, units, choice.pick(logits[i])))
    ctx = RunContext(model, mode, "mean", 7, Progress(0), tag)
    runs = start_runs(model, items, method, ctx)
    scores = dict(finished(runs))
    return [(items[i].targets.tolist(), logits[i], scores[i]) for i in range(len(specs))]


def rows_of(method: Method, n_units: int) -> tuple[int, int]:
    """One input's rows, as counted and as run (identical rows run once): the method's, and the
    unperturbed row when its design does not start with it (Sobol's)."""
    assert isinstance(method, Occlusion | Lime | KernelShap | Sobol)
    masks = method.design(n_units, 7)[0]
    if masks[0].any():
        masks = np.vstack([np.zeros_like(masks[:1]), masks])
    assert len(masks) == method.n_rows(n_units, 1) + int(isinstance(method, Sobol))
    return len(masks), len(np.unique(masks, axis=0))


@pytest.mark.parametrize("granularity", ["all_tokens", "token", "word", "sentence"])
@pytest.mark.parametrize("method", list(PERTURBATION))
def test_each_perturbation_method_queues_once(
    explainer: Explainer, rounds: dict[str, Rounds], method: str, granularity: Granularity
) -> None:
    m = PERTURBATION[method]
    (e,) = explain(explainer, "bert", [InputSpec(text=TEXT)], m, granularity)
    counted, run = rows_of(m, e.units.n_units)
    assert rounds["bert"].calls == [[("forward", run)]]  # one submission, one job
    assert e.forward_passes == counted


@pytest.mark.parametrize("model", ["bert", "gpt2", "gpt2-zero"])
@pytest.mark.parametrize("mode", ["logits", "softmax", "log_softmax"])
@pytest.mark.parametrize("method", list(PERTURBATION))
def test_picked_and_explicit_targets_score_as_in_two_rounds(
    explainer: Explainer, registry: Registry, model: str, mode: InferenceMode, method: str
) -> None:
    """No target (the predicted class is picked from the unperturbed row), explicit targets
    (several, repeated, by label): the same targets and scores as the two-round flow, bit for
    bit."""
    served = registry.get(model)
    label = served.labels[2]
    specs = [
        InputSpec(text=TEXT),
        InputSpec(text=OTHER, targets=[2, 0, 2]),
        InputSpec(text=TEXT, targets=[label]),
    ]
    m = PERTURBATION[method]
    got = explain(explainer, model, specs, m, "token", mode)
    want = two_rounds(served, specs, m, "token", mode)
    for e, (targets, logits, scores) in zip(got, want, strict=True):
        assert e.target_indices == targets
        # Row 0 now runs in its job's batch, not in a batch of its own: float32 rounding.
        np.testing.assert_allclose(e.logits, logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(e.scores, scores.astype(np.float32))
    assert got[0].target_indices == [int(np.argmax(want[0][1]))]
    assert got[2].target_indices == [2]


def test_a_multi_input_request_queues_once(explainer: Explainer, rounds: dict[str, Rounds]) -> None:
    """Three inputs (targets picked, explicit, by label; two of them identical), one
    submission: one job per distinct input, with every row the explanations count."""
    label = explainer.registry.get("gpt2").labels[1]
    specs = [
        InputSpec(text=TEXT),
        InputSpec(text=OTHER, targets=[1, 0]),
        InputSpec(text=TEXT, targets=[label]),
        InputSpec(text=OTHER, targets=[1, 0]),  # identical to input 1: it shares its run
    ]
    out = explain(explainer, "gpt2", specs, Occlusion(), "token")
    (call,) = rounds["gpt2"].calls
    assert call == [("forward", out[i].forward_passes) for i in (0, 1, 2)]
    assert [e.forward_passes for e in out] == [e.units.n_units + 1 for e in out]
    assert out[2].target_indices == [1]
    assert out[1].target_indices == out[3].target_indices == [1, 0]
    np.testing.assert_array_equal(out[3].scores, out[1].scores)


def test_gradient_methods_still_predict_first(
    explainer: Explainer, rounds: dict[str, Rounds]
) -> None:
    """A gradient method needs its target before its backward passes: two rounds, and its
    counter says so (the forward that predicts, then its rows)."""
    (e,) = explain(explainer, "bert", [InputSpec(text=TEXT)], IntegratedGradients(n_steps=4))
    assert rounds["bert"].calls == [[("forward", 1)], [("gradient", 4)]]
    assert e.forward_passes == 4 + 1
