"""Gradient methods against torch.autograd on the directly loaded model: per-token gradients with
respect to the word embeddings, reduced over the hidden dimension and aggregated to units in
numpy; IntegratedGradients completeness; closed forms on the linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainserve.explain.method import methods
from explainserve.explain.methods.gradient_shap import GradientShap
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.saliency import Saliency
from explainserve.vocabulary import InputSpec

TEXTS = {
    "bert": "Gradients flow back through the transformer layers.",
    "gpt2": "Hello there, world of words.",
}
MODELS = list(TEXTS)
DEFAULT_REDUCTION = {
    "saliency": "l2_norm",
    "input_x_gradient": "signed_sum",
    "integrated_gradients": "signed_sum",
    "smooth_grad": "l2_norm",
    "square_grad": "l2_norm",
    "var_grad": "l2_norm",
    "gradient_shap": "signed_sum",
}


def reduce_ref(per_dim: torch.Tensor, reduction: str) -> np.ndarray:
    """`(n, h)` -> `(n,)` in float64."""
    v = per_dim.double().numpy()
    if reduction == "signed_sum":
        return v.sum(-1)
    if reduction == "l2_norm":
        return np.sqrt((v * v).sum(-1))
    assert reduction == "mean_abs"
    return np.abs(v).mean(-1)


def aggregate_ref(tokens: np.ndarray, groups: list[list[int]], how: str) -> np.ndarray:
    """Per-unit aggregation of per-token scores."""
    out = []
    for g in groups:
        v = tokens[g]
        if how == "sum":
            out.append(v.sum())
        elif how == "mean":
            out.append(v.mean())
        elif how == "max":
            out.append(v.max())
        elif how == "min":
            out.append(v.min())
        else:
            out.append(v[int(np.argmax(np.abs(v)))])
    return np.asarray(out)


def rule_ref(rule: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights on [0, 1] of each integration rule."""
    k = np.arange(m)
    if rule == "riemann_left":
        return k / m, np.full(m, 1 / m)
    if rule == "riemann_right":
        return (k + 1) / m, np.full(m, 1 / m)
    if rule == "riemann_middle":
        return (k + 0.5) / m, np.full(m, 1 / m)
    if rule == "riemann_trapezoid":
        w = np.full(m, 1 / (m - 1))
        w[0] = w[-1] = 0.5 / (m - 1)
        return k / (m - 1), w
    nodes, weights = np.polynomial.legendre.leggauss(m)
    return (nodes + 1) / 2, weights / 2


def token_groups(ref, text: str, granularity: str) -> list[list[int]]:
    enc = ref.tokenizer(text, return_special_tokens_mask=True)
    if granularity == "all_tokens":
        return [[i] for i in range(len(enc["input_ids"]))]
    if granularity == "token":
        return [[i] for i, s in enumerate(enc["special_tokens_mask"]) if not s]
    words: dict[int, list[int]] = {}
    for pos, w in enumerate(enc.word_ids()):
        if w is not None:
            words.setdefault(w, []).append(pos)
    return [words[w] for w in sorted(words)]


def moved_mask(groups: list[list[int]], n: int) -> torch.Tensor:
    """`(n, 1)`: True at positions that belong to a unit."""
    moved = torch.zeros((n, 1), dtype=torch.bool)
    for g in groups:
        moved[g] = True
    return moved


def ig_ref(ref, x: torch.Tensor, baseline: torch.Tensor, target: int, mode: str, rule: str, m: int):
    """`(n, h)` (x - b) * integral of the gradient along the straight path, by direct grads."""
    alphas, weights = rule_ref(rule, m)
    a = torch.from_numpy(alphas).float().view(-1, 1, 1)
    points = baseline + a * (x - baseline)
    grads, _ = ref.grad(points, target, mode)
    avg = (grads * torch.from_numpy(weights).view(-1, 1, 1)).sum(0)
    return (x - baseline).double() * avg


def close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale * 0.1)


@pytest.mark.parametrize("aggregation", ["sum", "mean", "max", "min", "signed_max"])
@pytest.mark.parametrize("kind", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("model", MODELS)
def test_plain_gradient_golden(run, direct, model: str, kind: str, aggregation: str) -> None:
    ref = direct[model]
    text = TEXTS[model]
    ids = ref.encode(text)
    groups = token_groups(ref, text, "word")
    x = ref.embed(ids)

    e = run.one(
        model,
        InputSpec(text=text, targets=[0, 2]),
        methods()[kind](),
        granularity="word",
        aggregation=aggregation,
    )

    assert e.units.token_indices == groups
    assert e.forward_passes == 2 + 1
    for row, t in enumerate([0, 2]):
        g, _ = ref.grad(x, t)
        per_dim = g[0] if kind == "saliency" else g[0] * x[0].double()
        tokens = reduce_ref(per_dim, DEFAULT_REDUCTION[kind])
        close(e.scores[row], aggregate_ref(tokens, groups, aggregation))


@pytest.mark.parametrize("reduction", ["signed_sum", "l2_norm", "mean_abs"])
@pytest.mark.parametrize("kind", ["saliency", "input_x_gradient"])
@pytest.mark.parametrize("mode", ["softmax", "log_softmax"])
def test_gradient_reductions_and_modes(run, direct, mode: str, kind: str, reduction: str) -> None:
    ref = direct["bert"]
    text = TEXTS["bert"]
    ids = ref.encode(text)
    groups = token_groups(ref, text, "token")
    x = ref.embed(ids)

    e = run.one(
        "bert",
        InputSpec(text=text, targets=[1]),
        methods()[kind](reduction=reduction),
        granularity="token",
        mode=mode,
        aggregation="mean",
    )

    g, _ = ref.grad(x, 1, mode)
    per_dim = g[0] if kind == "saliency" else g[0] * x[0].double()
    close(e.scores[0], aggregate_ref(reduce_ref(per_dim, reduction), groups, "mean"))


@pytest.mark.parametrize("kind", ["smooth_grad", "square_grad", "var_grad"])
@pytest.mark.parametrize("model", MODELS)
def test_noise_free_smoothing_is_deterministic(run, direct, model: str, kind: str) -> None:
    """With noise_std = 0 every sample is the input: SmoothGrad = saliency, SquareGrad = the
    squared gradient, VarGrad = 0."""
    ref = direct[model]
    text = TEXTS[model]
    ids = ref.encode(text)
    groups = token_groups(ref, text, "word")
    x = ref.embed(ids)

    e = run.one(
        model,
        InputSpec(text=text, targets=[0]),
        methods()[kind](noise_std=0.0, n_samples=3),
        granularity="word",
        aggregation="sum",
    )

    assert e.forward_passes == 3 + 1
    g, _ = ref.grad(x, 0)
    per_dim = {"smooth_grad": g[0], "square_grad": g[0] * g[0], "var_grad": 0 * g[0]}[kind]
    expected = aggregate_ref(reduce_ref(per_dim, "l2_norm"), groups, "sum")
    if kind == "var_grad":
        np.testing.assert_allclose(e.scores[0], expected, atol=1e-6)
    else:
        close(e.scores[0], expected)


@pytest.mark.parametrize(
    "rule",
    ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre"],
)
@pytest.mark.parametrize("model", MODELS)
def test_integrated_gradients_golden(run, direct, model: str, rule: str) -> None:
    ref = direct[model]
    text = TEXTS[model]
    ids = ref.encode(text)
    groups = token_groups(ref, text, "word")
    x = ref.embed(ids)[0]
    baseline = torch.where(moved_mask(groups, len(ids)), torch.zeros(()), x)

    e = run.one(
        model,
        InputSpec(text=text, targets=[2]),
        IntegratedGradients(n_steps=6, rule=rule),  # type: ignore[arg-type]
        granularity="word",
        aggregation="sum",
    )

    assert e.forward_passes == 6 + 1
    per_dim = ig_ref(ref, x, baseline, 2, "logits", rule, 6)
    close(e.scores[0], aggregate_ref(reduce_ref(per_dim, "signed_sum"), groups, "sum"))


def test_integrated_gradients_replacement_baseline(run, direct) -> None:
    """baseline="replacement": the [MASK] embedding at unit positions, specials unchanged."""
    ref = direct["bert"]
    text = TEXTS["bert"]
    ids = ref.encode(text)
    groups = token_groups(ref, text, "token")
    x = ref.embed(ids)[0]
    mask_embedding = ref.embed(np.asarray([ref.tokenizer.mask_token_id]))[0, 0]
    baseline = torch.where(moved_mask(groups, len(ids)), mask_embedding, x)

    e = run.one(
        "bert",
        InputSpec(text=text, targets=[0]),
        IntegratedGradients(n_steps=5, baseline="replacement"),
        granularity="token",
        aggregation="sum",
        mode="softmax",
    )

    per_dim = ig_ref(ref, x, baseline, 0, "softmax", "gauss_legendre", 5)
    close(e.scores[0], aggregate_ref(reduce_ref(per_dim, "signed_sum"), groups, "sum"))


@pytest.mark.parametrize("mode", ["logits", "softmax"])
@pytest.mark.parametrize("granularity", ["all_tokens", "token"])
@pytest.mark.parametrize("model", MODELS)
def test_integrated_gradients_completeness(
    run, direct, model: str, granularity: str, mode: str
) -> None:
    """sum of unit scores = f(x) - f(baseline) within 1% at 64 Gauss-Legendre steps; the baseline
    is zero at unit positions and the original embedding at special tokens."""
    ref = direct[model]
    text = TEXTS[model]
    ids = ref.encode(text)
    groups = token_groups(ref, text, granularity)
    x = ref.embed(ids)[0]
    baseline = torch.where(moved_mask(groups, len(ids)), torch.zeros(()), x)
    targets = [0, 1, 2]

    e = run.one(
        model,
        InputSpec(text=text, targets=targets),
        IntegratedGradients(n_steps=64, rule="gauss_legendre"),
        granularity=granularity,
        aggregation="sum",
        mode=mode,
    )

    assert e.units.token_indices == groups
    for row, t in enumerate(targets):
        gap = ref.f(t, mode, embeds=x[None])[0] - ref.f(t, mode, embeds=baseline[None])[0]
        assert abs(gap) > 1e-3
        total = float(e.scores[row].sum(dtype=np.float64))
        assert total == pytest.approx(gap, rel=0.01), (t, total, gap)


@pytest.mark.parametrize("kind", ["smooth_grad", "square_grad", "var_grad", "gradient_shap"])
def test_noisy_methods_shape_and_effect(run, direct, kind: str) -> None:
    """With noise the scores are finite, one row per target and unit, and differ from the
    noise-free ones."""
    text = TEXTS["bert"]
    n_units = len(token_groups(direct["bert"], text, "word"))

    def explain(noise: float):
        return run.one(
            "bert",
            InputSpec(text=text, targets=[0, 1]),
            methods()[kind](noise_std=noise, n_samples=4),
            granularity="word",
            seed=5,
        )

    noisy, clean = explain(0.5), explain(0.0)
    assert noisy.scores.shape == (2, n_units)
    assert noisy.forward_passes == 2 * 4 + 1
    assert np.isfinite(noisy.scores).all()
    assert not np.allclose(noisy.scores, clean.scores, atol=1e-5)
    if kind == "var_grad":
        assert (noisy.scores > 0).all()


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("input_x_gradient", {}),
        ("integrated_gradients", {"n_steps": 3, "rule": "riemann_left"}),
        ("integrated_gradients", {"n_steps": 4, "rule": "gauss_legendre"}),
        ("gradient_shap", {"noise_std": 0.0, "n_samples": 5}),
    ],
)
@pytest.mark.parametrize("target", [0, 1])
def test_linear_model_signed_methods_equal_weights(
    linear, kind: str, extra: dict, target: int
) -> None:
    """For logits = sum of W[id], the gradient at every position is the target's one-hot, so
    gradient x (input - zero baseline) summed over the hidden dimension is W[id, target]; exact
    for any path point (GradientShap without noise) and any integration rule."""
    tok = linear.served.tokenizer
    ids = np.asarray(tok(linear.text)["input_ids"])
    e = linear.run.one(
        "linear",
        InputSpec(text=linear.text, targets=[target]),
        methods()[kind](**extra),
        granularity="word",
        seed=4,
    )
    np.testing.assert_allclose(e.scores[0], linear.weights(ids[1:-1], target), atol=1e-5)


def test_linear_model_saliency_is_one(linear) -> None:
    e = linear.run.one("linear", linear.text, Saliency(), granularity="word")
    np.testing.assert_allclose(e.scores, np.ones_like(e.scores), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("model", MODELS)
def test_noise_free_gradient_shap_is_a_point_of_the_path(
    run, direct, model: str, seed: int
) -> None:
    """Without noise, one GradientShap sample is grad(b + a (x - b)) * (x - b) for a random a in
    [0, 1]: some a on the path reproduces every token's score."""
    ref = direct[model]
    text = TEXTS[model]
    ids = ref.encode(text)
    groups = token_groups(ref, text, "token")
    x = ref.embed(ids)[0]
    baseline = torch.where(moved_mask(groups, len(ids)), torch.zeros(()), x)
    e = run.one(
        model,
        InputSpec(text=text, targets=[1]),
        GradientShap(noise_std=0.0, n_samples=1),
        granularity="token",
        aggregation="sum",
        seed=seed,
    )

    def path_scores(alphas: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(alphas).float().view(-1, 1, 1)
        grads, _ = ref.grad(baseline + a * (x - baseline), 1)
        per_dim = grads * (x - baseline).double()
        content = [g[0] for g in groups]
        return per_dim.sum(-1).numpy()[:, content]

    def misfit(alphas: np.ndarray) -> np.ndarray:
        return np.abs(path_scores(alphas) - e.scores[0]).max(axis=1)

    grid = np.linspace(0.0, 1.0, 201)
    best = grid[int(np.argmin(misfit(grid)))]
    fine = np.linspace(max(0.0, best - 0.005), min(1.0, best + 0.005), 201)
    scale = float(np.abs(e.scores).max())
    assert misfit(fine).min() < 1e-3 * scale
    # Most of the path does not fit: the match singles out one point.
    assert np.median(misfit(grid)) > 1e-2 * scale
