"""Domain errors: what a bad request raises (class, message, field), before any explanation."""

from __future__ import annotations

import math

import pytest

from explainserve.errors import Cancelled, ExplainServeError, InvalidArgument, NotFound
from explainserve.explain.limits import Limits
from explainserve.explain.method import Method
from explainserve.explain.methods.gradient_shap import GradientShap
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.saliency import Saliency
from explainserve.explain.methods.smooth_grad import SmoothGrad
from explainserve.explain.methods.sobol import Sobol
from explainserve.explain.methods.square_grad import SquareGrad
from explainserve.explain.methods.var_grad import VarGrad
from explainserve.explain.params import ExplainParams
from explainserve.explain.service import Explainer
from explainserve.models.registry import Registry
from explainserve.vocabulary import InputSpec

TEXT = "The weather is nice today."


def explain_all(explainer: Explainer, params: ExplainParams) -> list:
    return list(explainer.explain(params))


def raises(
    explainer: Explainer,
    params: ExplainParams,
    kind: type[ExplainServeError],
    fragment: str,
    field: str | None,
) -> ExplainServeError:
    with pytest.raises(kind) as info:
        explain_all(explainer, params)
    assert fragment in info.value.message
    assert str(info.value) == info.value.message
    assert info.value.field == field
    return info.value


def test_unknown_model_lists_the_loaded_ones(explainer: Explainer) -> None:
    err = raises(
        explainer,
        ExplainParams("nope", [InputSpec(text=TEXT)], Occlusion()),
        NotFound,
        "no model named 'nope'",
        None,
    )
    assert "bert, gpt2, gpt2-zero" in err.message


def test_empty_registry_says_none(registry: Registry) -> None:
    err = raises(
        Explainer(Registry()),
        ExplainParams("bert", [InputSpec(text=TEXT)], Occlusion()),
        NotFound,
        "no model named 'bert'",
        None,
    )
    assert "(none)" in err.message


def test_unknown_label_lists_the_labels(explainer: Explainer) -> None:
    err = raises(
        explainer,
        ExplainParams("bert", [InputSpec(text=TEXT, targets=[0, "joyful"])], Occlusion()),
        NotFound,
        "no label 'joyful'",
        None,
    )
    assert "negative, neutral, positive" in err.message


@pytest.mark.parametrize(
    ("inputs", "fragment", "field"),
    [
        ([], "no inputs", "inputs"),
        ([InputSpec(text="")], "empty string", "inputs[0].text"),
        ([InputSpec(text=TEXT), InputSpec(text="  \n\t")], "empty string", "inputs[1].text"),
        ([InputSpec()], "neither text nor token_ids", "inputs[0]"),
        ([InputSpec(ids=[])], "token_ids is empty", "inputs[0].token_ids.ids"),
        ([InputSpec(text=TEXT, targets=[3])], "out of range", "inputs[0].targets[0]"),
        ([InputSpec(text=TEXT, targets=[0, -1])], "out of range", "inputs[0].targets[1]"),
        ([InputSpec(ids=[101, 30522, 102])], "outside the vocabulary", "inputs[0].token_ids"),
        ([InputSpec(ids=[101, -5, 102])], "outside the vocabulary", "inputs[0].token_ids"),
        (
            [InputSpec(ids=[101, 2204, 102], attention=[1, 1])],
            "attention_mask has 2 values for 3 ids",
            "inputs[0].token_ids.attention_mask",
        ),
        (
            [InputSpec(ids=[101, 2204, 102], attention=[1, 2, 1])],
            "must be 0 or 1",
            "inputs[0].token_ids.attention_mask",
        ),
        (
            [InputSpec(text=TEXT), InputSpec(text="word " * 200)],
            "more than the model's maximum of 128",
            "inputs[1]",
        ),
        ([InputSpec(ids=[101] + [2204] * 127 + [102])], "maximum of 128", "inputs[0]"),
    ],
)
def test_invalid_inputs(explainer: Explainer, inputs: list, fragment: str, field: str) -> None:
    raises(explainer, ExplainParams("bert", inputs, Occlusion()), InvalidArgument, fragment, field)


def test_longest_allowed_input_is_accepted(run) -> None:
    e = run.one("bert", InputSpec(ids=[101] + [2204] * 126 + [102]), Saliency())
    assert e.units.n_units == 126


@pytest.mark.parametrize(
    ("method", "field"),
    [
        (Lime(perturb_probability=math.nan), "lime.perturb_probability"),
        (Lime(perturb_probability=0.0), "lime.perturb_probability"),
        (Lime(perturb_probability=1.0), "lime.perturb_probability"),
        (Lime(alpha=-1.0), "lime.alpha"),
        (Lime(alpha=math.inf), "lime.alpha"),
        (Lime(kernel_width=0.0), "lime.kernel_width"),
        (Lime(kernel_width=math.nan), "lime.kernel_width"),
        (Lime(n_perturbations=1), "lime.n_perturbations"),
        (KernelShap(n_perturbations=1), "kernel_shap.n_perturbations"),
        (Sobol(n_points=0), "sobol.n_points"),
        (IntegratedGradients(n_steps=0), "integrated_gradients.n_steps"),
        (SmoothGrad(noise_std=-1.0), "smooth_grad.noise_std"),
        (VarGrad(noise_std=math.nan), "var_grad.noise_std"),
        (GradientShap(noise_std=math.inf), "gradient_shap.noise_std"),
        (SquareGrad(n_samples=0), "square_grad.n_samples"),
    ],
)
def test_invalid_method_parameters(explainer: Explainer, method: Method, field: str) -> None:
    raises(
        explainer, ExplainParams("bert", [InputSpec(text=TEXT)], method), InvalidArgument, "", field
    )


@pytest.mark.parametrize(
    ("method", "granularity", "needed", "passes"),
    [
        # Perturbation methods: the unperturbed row that predicts is one of their rows (Sobol's
        # is added); gradient methods take one forward more, before their rows, to pick it.
        (Occlusion(), "token", 7, 7),  # 6 units + the unperturbed input
        (Lime(n_perturbations=50), "word", 50, 50),
        (KernelShap(n_perturbations=1000), "token", 64, 64),  # 2^6 coalitions, enumerated
        (Sobol(n_points=4), "token", 32, 33),  # (6 + 2) x 4
        (IntegratedGradients(n_steps=20), "word", 20, 21),
        (SmoothGrad(n_samples=30), "word", 30, 31),
    ],
)
def test_too_many_forward_passes(
    registry: Registry, method: Method, granularity: str, needed: int, passes: int
) -> None:
    """Limits.max_rows_per_input is enforced with the number the request would need; exactly at
    the limit it runs."""
    params = ExplainParams("bert", [InputSpec(text=TEXT)], method, granularity=granularity)  # type: ignore[arg-type]
    raises(
        Explainer(registry, Limits(max_rows_per_input=needed - 1)),
        params,
        InvalidArgument,
        f"would need {needed} forward passes, the limit is {needed - 1}",
        "inputs[0]",
    )
    (e,) = explain_all(Explainer(registry, Limits(max_rows_per_input=needed)), params)
    assert e.forward_passes == passes


def test_too_many_inputs_and_targets(registry: Registry) -> None:
    small = Explainer(registry, Limits(max_inputs=2, max_targets=2))
    raises(
        small,
        ExplainParams("bert", [InputSpec(text=TEXT)] * 3, Occlusion()),
        InvalidArgument,
        "the limit is 2",
        "inputs",
    )
    raises(
        small,
        ExplainParams("bert", [InputSpec(text=TEXT, targets=[0, 1, 2])], Occlusion()),
        InvalidArgument,
        "3 targets, the limit is 2",
        "inputs[0].targets",
    )


def test_no_units_to_explain(explainer: Explainer) -> None:
    """Only special tokens: nothing to explain at token granularity."""
    raises(
        explainer,
        ExplainParams("bert", [InputSpec(ids=[101, 102])], Occlusion(), granularity="token"),
        InvalidArgument,
        "has no token units",
        "inputs[0]",
    )


def test_a_bad_request_does_not_harm_the_next(run, explainer: Explainer) -> None:
    with pytest.raises(InvalidArgument):
        explain_all(
            explainer, ExplainParams("bert", [InputSpec(text=TEXT, targets=[9])], Occlusion())
        )
    e = run.one("bert", InputSpec(text=TEXT, targets=[1]), Occlusion())
    assert e.target_indices == [1]


def test_cancelled_request_raises_cancelled(explainer: Explainer) -> None:
    params = ExplainParams("bert", [InputSpec(text=TEXT)], Occlusion())
    with pytest.raises(Cancelled):
        list(explainer.explain(params, is_cancelled=lambda: True))
