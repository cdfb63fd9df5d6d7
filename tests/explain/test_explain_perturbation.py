"""Perturbation methods against references computed by direct model calls: Occlusion, LIME and
Sobol goldens, exact Shapley values by brute force, KernelSHAP efficiency, and the closed forms of
a linear model (Occlusion and Shapley values = its weights, LIME recovers their ranking, Sobol
their variance shares)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from explainserve import _native
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.sobol import Sobol
from explainserve.models.registry import Registry
from explainserve.vocabulary import InputSpec

MODES = ["logits", "softmax", "log_softmax"]
#: Texts with multi-token words, so word and token granularity differ.
TEXTS = {
    "bert": "Gradients flow back through the transformer layers.",
    "gpt2": "Hello there, world of words.",
    "gpt2-zero": "Hello there, world of words.",
}
ALL_TARGETS = [0, 1, 2]


def groups_of(direct: object, text: str, granularity: str) -> list[list[int]]:
    """Expected token positions of each unit, from the tokenizer alone."""
    enc = direct.tokenizer(text, return_special_tokens_mask=True)  # type: ignore[attr-defined]
    if granularity == "token":
        return [[i] for i, s in enumerate(enc["special_tokens_mask"]) if not s]
    words: dict[int, list[int]] = {}
    for pos, w in enumerate(enc.word_ids()):
        if w is not None:
            words.setdefault(w, []).append(pos)
    return [words[w] for w in sorted(words)]


def replaced_ids(
    ids: np.ndarray, masks: np.ndarray, groups: list[list[int]], rid: int
) -> np.ndarray:
    """Rows of `ids` with the tokens of every masked unit set to `rid`."""
    rows = np.tile(ids, (masks.shape[0], 1))
    for r, row in enumerate(masks):
        for u in np.flatnonzero(row):
            rows[r, groups[u]] = rid
    return rows


def zeroed_embeds(x: torch.Tensor, masks: np.ndarray, groups: list[list[int]]) -> torch.Tensor:
    """Rows of embeddings `x` `(1, n, h)` with the positions of every masked unit set to 0."""
    rows = x.repeat(masks.shape[0], 1, 1)
    for r, row in enumerate(masks):
        for u in np.flatnonzero(row):
            rows[r, groups[u]] = 0.0
    return rows


def masked_outputs(
    ref, model: str, text: str, groups: list[list[int]], masks: np.ndarray, target: int, mode: str
) -> np.ndarray:
    """f of `text` with, in row r, every unit u with masks[r, u] replaced the way `model` replaces
    (its [MASK] or unk token, or zero embeddings for "gpt2-zero"), by direct calls."""
    ids = ref.encode(text)
    masks = masks.astype(bool)
    if model == "gpt2-zero":
        return ref.f(target, mode, embeds=zeroed_embeds(ref.embed(ids), masks, groups))
    tok = ref.tokenizer
    rid = tok.mask_token_id if tok.mask_token_id is not None else tok.unk_token_id
    return ref.f(target, mode, ids=replaced_ids(ids, masks, groups, rid))


def test_replacement_choice(registry: Registry) -> None:
    """BERT replaces with [MASK]; GPT-2 has no mask token and falls back to the configured one."""
    bert = registry.get("bert")
    assert bert.replacement.kind == "mask_token"
    assert bert.replacement.token_id == bert.tokenizer.mask_token_id
    gpt2 = registry.get("gpt2")
    assert gpt2.tokenizer.mask_token_id is None
    assert gpt2.replacement.kind == "unk_token"
    assert gpt2.replacement.token_id == gpt2.tokenizer.unk_token_id
    assert registry.get("gpt2-zero").replacement.zero_embedding


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("granularity", ["token", "word"])
@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_occlusion_golden(run, direct, model: str, granularity: str, mode: str) -> None:
    ref = direct[model]
    text = TEXTS[model]
    ids = ref.encode(text)
    groups = groups_of(ref, text, granularity)

    e = run.one(
        model,
        InputSpec(text=text, targets=ALL_TARGETS),
        Occlusion(),
        granularity=granularity,
        mode=mode,
    )

    np.testing.assert_array_equal(e.token_ids, ids)
    assert e.units.token_indices == groups
    if granularity == "word":
        assert any(len(g) > 1 for g in groups)
    assert e.scores.shape == (3, len(groups))
    assert e.scores.dtype == np.float32
    assert e.forward_passes == len(groups) + 1  # the unperturbed input (it predicts), each unit
    for t in ALL_TARGETS:
        replaced = masked_outputs(ref, model, text, groups, np.eye(len(groups)), t, mode)
        expected = ref.f(t, mode, ids=ids) - replaced
        assert np.abs(expected).max() > 1e-3  # the model reacts: the comparison means something
        np.testing.assert_allclose(e.scores[t], expected, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("granularity", ["token", "word"])
def test_occlusion_zero_embedding_golden(run, direct, granularity: str, mode: str) -> None:
    """GPT-2 with the zero_embedding fallback: a replaced unit's word embeddings are zeros."""
    ref = direct["gpt2-zero"]
    text = TEXTS["gpt2-zero"]
    ids = ref.encode(text)
    groups = groups_of(ref, text, granularity)

    e = run.one(
        "gpt2-zero",
        InputSpec(text=text, targets=ALL_TARGETS),
        Occlusion(),
        granularity=granularity,
        mode=mode,
    )

    assert e.units.token_indices == groups
    rows = zeroed_embeds(ref.embed(ids), np.eye(len(groups), dtype=bool), groups)
    for t in ALL_TARGETS:
        expected = ref.f(t, mode, ids=ids) - ref.f(t, mode, embeds=rows)
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(e.scores[t], expected, rtol=1e-4, atol=2e-6)
    # Zeroing is not the same as the unk token: the two fallbacks give different scores.
    unk = run.one(
        "gpt2",
        InputSpec(text=text, targets=ALL_TARGETS),
        Occlusion(),
        granularity=granularity,
        mode=mode,
    )
    assert not np.allclose(unk.scores, e.scores, atol=1e-4)


def brute_force_shapley(values: dict[tuple[int, ...], float], g: int) -> np.ndarray:
    """Shapley values from v(kept set) over every coalition."""
    phi = np.zeros(g)
    for i in range(g):
        others = [j for j in range(g) if j != i]
        for size in range(g):
            weight = math.factorial(size) * math.factorial(g - size - 1) / math.factorial(g)
            for s in itertools.combinations(others, size):
                with_i = tuple(sorted((*s, i)))
                phi[i] += weight * (values[with_i] - values[s])
    return phi


def coalition_values(
    ref, model: str, text: str, groups: list[list[int]], target: int, mode: str
) -> dict[tuple[int, ...], float]:
    """v(S) = f(x with every unit outside S replaced), by direct calls, for every S."""
    g = len(groups)
    kept_sets = [s for size in range(g + 1) for s in itertools.combinations(range(g), size)]
    masks = np.ones((len(kept_sets), g), dtype=bool)
    for r, s in enumerate(kept_sets):
        masks[r, list(s)] = False
    out = masked_outputs(ref, model, text, groups, masks, target, mode)
    return {s: float(v) for s, v in zip(kept_sets, out, strict=True)}


@pytest.mark.parametrize(
    ("model", "mode"),
    [("bert", "logits"), ("bert", "softmax"), ("gpt2", "logits"), ("gpt2-zero", "log_softmax")],
)
def test_kernel_shap_exact_equals_brute_force_shapley(run, direct, model: str, mode: str) -> None:
    ref = direct[model]
    text = TEXTS[model]
    groups = groups_of(ref, text, "word")
    g = len(groups)
    assert 5 <= g <= 8

    e = run.one(
        model,
        InputSpec(text=text, targets=ALL_TARGETS),
        KernelShap(n_perturbations=2**g + 7),
        granularity="word",
        mode=mode,
    )

    assert e.forward_passes == 2**g  # the full enumeration (the empty coalition predicts)
    for t in ALL_TARGETS:
        expected = brute_force_shapley(coalition_values(ref, model, text, groups, t, mode), g)
        np.testing.assert_allclose(e.scores[t], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_perturbations", [16, 65, 200])
@pytest.mark.parametrize("model", ["bert", "gpt2", "gpt2-zero"])
def test_kernel_shap_sampled_efficiency(run, direct, model: str, n_perturbations: int) -> None:
    """Sum of the scores = f(x) - f(every unit replaced), exactly, for sampled designs too."""
    ref = direct[model]
    text = "The weather is nice today, isn't it?"
    groups = groups_of(ref, text, "token")
    g = len(groups)
    assert 2**g > n_perturbations  # sampled, not enumerated
    ids = ref.encode(text)

    e = run.one(
        model,
        InputSpec(text=text, targets=ALL_TARGETS),
        KernelShap(n_perturbations=n_perturbations),
        granularity="token",
        seed=3,
    )

    assert e.forward_passes == n_perturbations  # the first coalition, empty, predicts
    for t in ALL_TARGETS:
        f_empty = masked_outputs(ref, model, text, groups, np.ones((1, g)), t, "logits")[0]
        gap = ref.f(t, ids=ids)[0] - f_empty
        assert abs(gap) > 1e-2
        assert e.scores[t].sum(dtype=np.float64) == pytest.approx(gap, abs=1e-4)


def linear_unit_weights(linear, target: int) -> np.ndarray:
    ids = linear.served.tokenizer(linear.text)["input_ids"]
    return linear.weights(np.asarray(ids[1:-1]), target)


@pytest.mark.parametrize("target", [0, 1])
def test_occlusion_on_linear_model_equals_weights(linear, target: int) -> None:
    e = linear.run.one("linear", InputSpec(text=linear.text, targets=[target]), Occlusion())
    assert e.units.texts == linear.text.split()
    np.testing.assert_allclose(e.scores[0], linear_unit_weights(linear, target), atol=1e-5)


def test_kernel_shap_on_linear_model_equals_weights(linear) -> None:
    """An additive model's Shapley values are its weights, exact design or sampled."""
    w = linear_unit_weights(linear, 0)
    for n in (256, 40):
        e = linear.run.one(
            "linear", InputSpec(text=linear.text, targets=[0]), KernelShap(n), seed=1
        )
        np.testing.assert_allclose(e.scores[0], w, atol=1e-4)


@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize("distance", ["cosine", "hamming", "euclidean"])
def test_lime_recovers_linear_ranking(linear, distance: str, target: int) -> None:
    w = linear_unit_weights(linear, target)
    e = linear.run.one(
        "linear",
        InputSpec(text=linear.text, targets=[target]),
        Lime(n_perturbations=2000, distance=distance),  # type: ignore[arg-type]
        seed=11,
    )
    scores = e.scores[0]
    np.testing.assert_array_equal(np.argsort(scores), np.argsort(w))
    # A linear model is fitted exactly up to the ridge's small shrinkage.
    np.testing.assert_allclose(scores, w, rtol=0.05, atol=0.02)


def lime_ref(masks: np.ndarray, y: np.ndarray, distance: str, alpha: float) -> np.ndarray:
    """Weighted ridge of y on the kept vectors with an unpenalised intercept (docs/native.md)."""
    z = 1.0 - masks.astype(np.float64)
    g = z.shape[1]
    kept = z.sum(1)
    d = {
        "cosine": 1.0 - np.sqrt(kept / g),
        "hamming": (g - kept) / g,
        "euclidean": np.sqrt(g - kept),
    }[distance]
    w = np.exp(-(d**2) / (0.75 * np.sqrt(g)) ** 2)
    zc = z - w @ z / w.sum()
    yc = y - w @ y / w.sum()
    gram = zc.T @ (w[:, None] * zc) + alpha * np.eye(g)
    return np.linalg.solve(gram, zc.T @ (w * yc))


@pytest.mark.parametrize(
    ("model", "distance", "mode"),
    [
        ("bert", "cosine", "logits"),
        ("bert", "hamming", "softmax"),
        ("gpt2", "euclidean", "log_softmax"),
        ("gpt2-zero", "cosine", "logits"),
    ],
)
def test_lime_golden(run, direct, model: str, distance: str, mode: str) -> None:
    """LIME = the documented weighted ridge on the documented design (row 0 unperturbed, then
    Bernoulli rows from the native generator), with outputs from direct model calls."""
    ref = direct[model]
    text = TEXTS[model]
    groups = groups_of(ref, text, "word")
    method = Lime(n_perturbations=60, perturb_probability=0.4, distance=distance, alpha=0.5)  # type: ignore[arg-type]
    e = run.one(
        model,
        InputSpec(text=text, targets=ALL_TARGETS),
        method,
        granularity="word",
        mode=mode,
        seed=17,
    )
    masks = np.vstack(
        [np.zeros((1, len(groups)), np.uint8), _native.bernoulli_masks(59, len(groups), 0.4, 17)]
    )
    for t in ALL_TARGETS:
        y = masked_outputs(ref, model, text, groups, masks, t, mode)
        np.testing.assert_allclose(
            e.scores[t], lime_ref(masks, y, distance, 0.5), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("order", ["first", "total"])
@pytest.mark.parametrize("model", ["bert", "gpt2", "gpt2-zero"])
def test_sobol_golden(run, direct, model: str, order: str) -> None:
    """Jansen estimators (docs/native.md) on the native [A; B; C_1..C_g] design, with outputs
    from direct model calls."""
    ref = direct[model]
    text = TEXTS[model]
    groups = groups_of(ref, text, "word")
    g, k = len(groups), 16
    e = run.one(
        model,
        InputSpec(text=text, targets=ALL_TARGETS),
        Sobol(n_points=k, order=order),  # type: ignore[arg-type]
        granularity="word",
        mode="softmax",
        seed=5,
    )
    assert e.forward_passes == (g + 2) * k + 1  # the design, and the unperturbed row added
    masks = _native.sobol_masks(g, k, "sobol", 5)
    for t in ALL_TARGETS:
        f = masked_outputs(ref, model, text, groups, masks, t, "softmax")
        a, b, c = f[:k], f[k : 2 * k], f[2 * k :].reshape(g, k)
        v = np.concatenate([a, b]).var()
        if order == "first":
            expected = (v - ((b - c) ** 2).mean(1) / 2) / v
        else:
            expected = ((a - c) ** 2).mean(1) / 2 / v
        np.testing.assert_allclose(e.scores[t], expected, rtol=1e-4, atol=1e-5)


def test_sobol_on_linear_model_ranks_by_squared_weight(linear) -> None:
    """For an additive model with independent fair coins, the total index of a unit is its share
    of the variance, w_i^2 / sum(w^2)."""
    w = linear_unit_weights(linear, 0)
    e = linear.run.one("linear", InputSpec(text=linear.text, targets=[0]), Sobol(n_points=1024))
    share = w**2 / (w**2).sum()
    np.testing.assert_array_equal(np.argsort(e.scores[0]), np.argsort(share))
    np.testing.assert_allclose(e.scores[0], share, atol=0.03)
