"""Explain for causal LMs against direct teacher-forced calls of the Hugging Face model.

The references load the same weights with AutoModelForCausalLM and call the model on unpadded
single rows (`model(input_ids=...)` / `model(inputs_embeds=...)`), never through the worker: a
bug in left padding, position ids, the positions read, the logits budget or the grouping of
continuation tokens shows up as a mismatch. Both a GPT-2 (learned positions, tied head) and a
Llama-style model (RoPE, grouped-query attention) are served.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from reference_models import Direct
from transformers import AutoTokenizer

from explainserve.errors import InvalidArgument
from explainserve.explain import causal
from explainserve.explain.limits import CausalLimits, Limits
from explainserve.explain.method import Method
from explainserve.explain.methods.input_x_gradient import InputXGradient
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.saliency import Saliency
from explainserve.explain.params import ExplainParams, Explanation, Generation
from explainserve.explain.service import Explainer
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.jobs import GenerateJob
from explainserve.scheduling.options import WorkerOptions
from explainserve.vocabulary import InputSpec

MODELS = ["gpt2-lm", "llama-lm"]
PROMPT = "Hello there, world"
CONTINUATION = " of words."


@pytest.fixture(scope="module")
def lm_registry(tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path) -> Iterator[Registry]:
    """Both tiny LMs (unk replacement), GPT-2 with the zero-embedding replacement too, and a
    GPT-2 whose logits budget holds 3 rows of a short continuation (many small batches)."""
    reg = Registry()
    reg.add(load_model(ModelConfig("gpt2-lm", tiny_gpt2_lm_dir, device="cpu")))
    reg.add(load_model(ModelConfig("llama-lm", tiny_llama_lm_dir, device="cpu")))
    reg.add(
        load_model(
            ModelConfig(
                "gpt2-zero", tiny_gpt2_lm_dir, device="cpu", replacement_fallback="zero_embedding"
            )
        )
    )
    vocab = int(AutoTokenizer.from_pretrained(tiny_gpt2_lm_dir).__len__())
    reg.add(
        load_model(
            ModelConfig(
                "gpt2-small-logits",
                tiny_gpt2_lm_dir,
                device="cpu",
                worker=WorkerOptions(logits_budget=3 * 6 * vocab),
            )
        )
    )
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def lm_explainer(lm_registry: Registry) -> Explainer:
    """An Explainer over the LMs with small continuation limits."""
    limits = Limits(causal=CausalLimits(max_new_tokens=16, max_continuation_tokens=12))
    return Explainer(lm_registry, limits)


@pytest.fixture(scope="module")
def direct_lm(tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path) -> dict[str, Direct]:
    """Served name -> the directly loaded model."""
    gpt2 = Direct(tiny_gpt2_lm_dir)
    return {
        "gpt2-lm": gpt2,
        "gpt2-zero": gpt2,
        "gpt2-small-logits": gpt2,
        "llama-lm": Direct(tiny_llama_lm_dir),
    }


def explain(
    explainer: Explainer, model: str, inputs: list[InputSpec], method: Method, **kwargs: object
) -> list[Explanation]:
    """Every input's explanation, by input index."""
    params = ExplainParams(model=model, inputs=inputs, method=method, **kwargs)  # type: ignore[arg-type]
    return sorted(explainer.explain(params), key=lambda e: e.input_index)


def one(explainer: Explainer, model: str, method: Method, **kwargs: object) -> Explanation:
    """The explanation of PROMPT + CONTINUATION."""
    spec = InputSpec(text=PROMPT, continuation_text=CONTINUATION)
    return explain(explainer, model, [spec], method, **kwargs)[0]


def group_rows(
    token_rows: NDArray[np.float64], e: Explanation, how: str = "mean"
) -> NDArray[np.float64]:
    """Reference grouping of `(continuation tokens, units)` rows into continuation units."""
    assert e.target_units is not None
    out = []
    for tokens in e.target_units.token_indices:
        rows = token_rows[[t - e.prompt_tokens for t in tokens]]
        out.append(rows.mean(0) if how == "mean" else rows.sum(0))
    return np.asarray(out)


def expected_valid(e: Explanation) -> NDArray[np.bool_]:
    """A unit is valid for a row when all its tokens come before the row's first token."""
    assert e.target_units is not None
    return np.asarray(
        [[max(u) < min(t) for u in e.units.token_indices] for t in e.target_units.token_indices]
    )


@pytest.mark.parametrize("model", [*MODELS, "gpt2-zero", "gpt2-small-logits"])
@pytest.mark.parametrize("mode", ["logits", "softmax", "log_softmax"])
def test_occlusion_matches_direct_teacher_forcing(
    lm_explainer: Explainer, direct_lm: dict[str, Direct], model: str, mode: str
) -> None:
    e = one(lm_explainer, model, Occlusion(), mode=mode)
    d = direct_lm[model]
    ids = e.token_ids
    p = e.prompt_tokens
    assert e.continuation == CONTINUATION
    assert e.text == PROMPT + CONTINUATION
    assert [e.text[s:t] for s, t in e.units.spans.tolist()] == e.units.texts
    assert e.units.texts == ["Hello", "there", ",", "world", "of", "words", "."]
    assert e.target_units is not None
    assert e.target_units.texts == ["of", "words", "."]
    assert e.continuation_ids is not None
    assert list(ids[p:]) == list(e.continuation_ids)
    base = d.scores(ids, p, mode)
    np.testing.assert_allclose(e.continuation_scores, base, rtol=1e-4, atol=1e-4)
    rows = []
    replacement = lm_explainer.registry.get(model).replacement
    for tokens in e.units.token_indices:
        if replacement.zero_embedding:
            x = d.embed(ids)[0]
            x[tokens] = 0.0
            rows.append(base - d.scores(ids, p, mode, embeds=x))
        else:
            perturbed = ids.copy()
            perturbed[tokens] = replacement.token_id
            rows.append(base - d.scores(perturbed, p, mode, targets=ids[p:]))
    token_rows = np.asarray(rows).T  # (continuation tokens, units)
    valid = expected_valid(e)
    assert e.valid is not None
    np.testing.assert_array_equal(e.valid, valid)
    want = np.where(valid, group_rows(token_rows, e), 0.0)
    np.testing.assert_allclose(e.scores, want, rtol=1e-4, atol=1e-4)


def test_small_logits_budget_cuts_batches(lm_explainer: Explainer) -> None:
    served = lm_explainer.registry.get("gpt2-small-logits")
    before = served.worker.stats.batches
    one(lm_explainer, "gpt2-small-logits", Occlusion())
    # 8 sequences (7 units + the unperturbed one) + 1 base forward, at most 3 rows a batch.
    assert served.worker.stats.batches - before >= 3


@pytest.mark.parametrize("model", MODELS)
def test_input_x_gradient_matches_autograd(
    lm_explainer: Explainer, direct_lm: dict[str, Direct], model: str
) -> None:
    e = one(
        lm_explainer,
        model,
        InputXGradient(),
        granularity="token",
        mode="log_softmax",
    )
    d = direct_lm[model]
    ids = e.token_ids
    p = e.prompt_tokens
    x = d.embed(ids)[0]
    rows = []
    for j in range(len(ids) - p):
        xe = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = d.model(inputs_embeds=xe[None]).logits[0, p - 1 + j]
            score = torch.log_softmax(logits, -1)[int(ids[p + j])]
            (g,) = torch.autograd.grad(score, xe)
        per_token = (g * x).sum(-1).double().numpy()
        rows.append([per_token[u].mean() for u in e.units.token_indices])
    want = np.where(expected_valid(e), np.asarray(rows), 0.0)
    np.testing.assert_allclose(e.scores, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_integrated_gradients_completeness_per_target_token(
    lm_explainer: Explainer, direct_lm: dict[str, Direct], model: str
) -> None:
    e = one(
        lm_explainer,
        model,
        # From the replacement token's embedding: Llama's RMSNorm makes the path from the zero
        # embedding steep near 0, which a quadrature integrates poorly.
        IntegratedGradients(n_steps=96, baseline="replacement", rule="gauss_legendre"),
        granularity="token",
        aggregation="sum",
    )
    d = direct_lm[model]
    ids = e.token_ids
    p = e.prompt_tokens
    x = d.embed(ids)[0]
    baseline = x.clone()
    moved = [t for tokens in e.units.token_indices for t in tokens]
    unk = lm_explainer.registry.get(model).replacement.token_id
    baseline[moved] = d.embed(np.asarray([unk]))[0, 0]
    gap = d.scores(ids, p, "logits") - d.scores(ids, p, "logits", embeds=baseline)
    # Gauss-Legendre on 96 points leaves < 4e-6 of gaps up to 3.4 on both models (measured;
    # 48 points left 4e-4 on the Llama), about the float32 gradients' rounding: 1e-4 is 25x
    # that, and fails a midpoint or trapezoid rule (2e-3 and 5e-3 at 96 points).
    np.testing.assert_allclose(e.scores.sum(1), gap, rtol=0, atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_kernel_shap_efficiency_per_target_row(
    lm_explainer: Explainer, direct_lm: dict[str, Direct], model: str
) -> None:
    # 4 word units, 16 <= 64 coalitions: the exact design, where the units at or after a row's
    # token (null players) get exactly 0, so zeroing them keeps the row's efficiency.
    spec = InputSpec(text="Hello there", continuation_text=" world.")
    (e,) = explain(lm_explainer, model, [spec], KernelShap(n_perturbations=64))
    assert e.units.texts == ["Hello", "there", "world", "."]
    assert e.forward_passes == 16 + 1
    d = direct_lm[model]
    ids = e.token_ids
    p = e.prompt_tokens
    replaced = ids.copy()
    for tokens in e.units.token_indices:
        replaced[tokens] = lm_explainer.registry.get(model).replacement.token_id
    gap = d.scores(ids, p, "logits") - d.scores(replaced, p, "logits", targets=ids[p:])
    np.testing.assert_allclose(e.scores.sum(1), gap, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_generated_continuation_is_greedy_and_explained_like_a_given_one(
    lm_explainer: Explainer, direct_lm: dict[str, Direct], model: str
) -> None:
    gen = Generation(max_new_tokens=6)
    (e,) = explain(lm_explainer, model, [InputSpec(text=PROMPT)], Occlusion(), generation=gen)
    assert e.generated
    assert e.continuation_ids is not None
    prompt_ids = e.token_ids[: e.prompt_tokens]
    assert list(e.continuation_ids) == direct_lm[model].greedy(prompt_ids, 6)
    given = InputSpec(text=PROMPT, continuation_ids=[int(i) for i in e.continuation_ids])
    (g,) = explain(lm_explainer, model, [given], Occlusion())
    assert not g.generated
    np.testing.assert_array_equal(g.token_ids, e.token_ids)
    np.testing.assert_allclose(g.scores, e.scores, rtol=1e-6, atol=1e-6)


def test_sampling_is_seeded(lm_explainer: Explainer) -> None:
    gen = Generation(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9)
    spec = [InputSpec(text=PROMPT)]

    def sample(seed: int) -> list[int]:
        (e,) = explain(lm_explainer, "llama-lm", spec, Occlusion(), generation=gen, seed=seed)
        assert e.continuation_ids is not None
        return [int(i) for i in e.continuation_ids]

    first = sample(3)
    assert sample(3) == first
    assert any(sample(seed) != first for seed in (4, 5, 6))


def test_text_and_ids_continuations_agree(lm_explainer: Explainer) -> None:
    tokenizer = lm_explainer.registry.get("gpt2-lm").tokenizer
    ids = tokenizer(CONTINUATION, add_special_tokens=False)["input_ids"]
    as_text = InputSpec(text=PROMPT, continuation_text=CONTINUATION)
    as_ids = InputSpec(text=PROMPT, continuation_ids=ids)
    a, b = explain(lm_explainer, "gpt2-lm", [as_text, as_ids], Occlusion())
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    assert a.continuation == b.continuation == CONTINUATION
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", [Occlusion(), Saliency()], ids=str)
def test_batch_of_different_lengths_equals_one_by_one(
    lm_explainer: Explainer, model: str, method: Method
) -> None:
    specs = [
        InputSpec(text="Hello", continuation_text=" there, world of words."),
        InputSpec(text="The quick brown fox jumps over the lazy dog.", continuation_text=" Yes!"),
        InputSpec(text="Deep learning models", continuation_text=" need careful explanations."),
    ]
    together = explain(lm_explainer, model, specs, method)
    for spec, e in zip(specs, together, strict=True):
        (alone,) = explain(lm_explainer, model, [spec], method)
        np.testing.assert_allclose(e.scores, alone.scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            e.continuation_scores, alone.continuation_scores, rtol=1e-4, atol=1e-5
        )


def test_prompt_units_only(lm_explainer: Explainer) -> None:
    full = one(lm_explainer, "gpt2-lm", Occlusion())
    e = one(lm_explainer, "gpt2-lm", Occlusion(), target_context=False)
    assert e.units.texts == ["Hello", "there", ",", "world"]
    assert e.valid is not None
    assert e.valid.all()
    assert e.scores.shape == (3, 4)
    # Occlusion of a prompt unit does not depend on which other units exist. Up to float32
    # rounding: the two requests run different row sets, so their batches (padding, packed
    # suffixes, prefix or full path by measured cost) differ; differences of log-probabilities
    # of magnitude ~10 carry a few ulps (1.2e-7 relative) each, 1.4e-6 was seen.
    np.testing.assert_allclose(e.scores, full.scores[:, :4], rtol=1e-5, atol=1e-5)


def test_token_granularity_validity_is_triangular(lm_explainer: Explainer) -> None:
    e = one(lm_explainer, "llama-lm", Occlusion(), granularity="token")
    assert e.target_units is not None
    assert e.valid is not None
    n_prompt = len(e.units.texts) - e.target_units.n_units
    t = e.target_units.n_units
    want = np.ones((t, n_prompt + t), dtype=bool)
    want[:, n_prompt:] = np.tril(np.ones((t, t), dtype=bool), k=-1)
    np.testing.assert_array_equal(e.valid, want)
    assert np.all(e.scores[~e.valid] == 0.0)


def test_progress_counts_generation(lm_explainer: Explainer) -> None:
    seen: list[tuple[int, int]] = []
    params = ExplainParams(
        model="gpt2-lm",
        inputs=[InputSpec(text=PROMPT)],
        method=Occlusion(),
        generation=Generation(max_new_tokens=5),
    )
    list(lm_explainer.explain(params, on_progress=lambda d, t: seen.append((d, t))))
    assert seen[0][1] >= 6  # 5 tokens + 1 base forward planned before generating
    assert seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize(
    ("spec", "kwargs", "field"),
    [
        (InputSpec(text=PROMPT, continuation_text=""), {}, "inputs[0].continuation.text"),
        (InputSpec(text=PROMPT, continuation_ids=[]), {}, "inputs[0].continuation.token_ids.ids"),
        (
            InputSpec(text=PROMPT, continuation_text=" of words" * 10),
            {},
            "inputs[0].continuation",
        ),
        (InputSpec(text=PROMPT, continuation_ids=[10**6]), {}, "inputs[0].continuation.token_ids"),
        (InputSpec(text=PROMPT, targets=[0]), {}, "inputs[0].targets"),
        (
            InputSpec(text=PROMPT),
            {"generation": Generation(max_new_tokens=0)},
            "generation.max_new_tokens",
        ),
        (
            InputSpec(text=PROMPT),
            {"generation": Generation(max_new_tokens=17)},
            "generation.max_new_tokens",
        ),
        (
            InputSpec(text=PROMPT),
            {"generation": Generation(4, do_sample=True, temperature=0.0)},
            "generation.temperature",
        ),
        (
            InputSpec(text=PROMPT),
            {"generation": Generation(4, do_sample=True, temperature=float("nan"))},
            "generation.temperature",
        ),
        (InputSpec(text=PROMPT), {"generation": Generation(4, top_p=0.0)}, "generation.top_p"),
        (InputSpec(text=PROMPT), {"generation": Generation(4, top_p=1.5)}, "generation.top_p"),
    ],
)
def test_bad_requests(
    lm_explainer: Explainer, spec: InputSpec, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        explain(lm_explainer, "gpt2-lm", [spec], Occlusion(), **kwargs)
    assert info.value.field == field


def test_prompt_and_continuation_longer_than_the_model(lm_explainer: Explainer) -> None:
    tokenizer = lm_explainer.registry.get("gpt2-lm").tokenizer
    word = tokenizer(" world", add_special_tokens=False)["input_ids"][0]
    prompt = [tokenizer.bos_token_id] + [word] * 124  # 125 of the model's 128 positions
    spec = InputSpec(ids=prompt, continuation_text=CONTINUATION)
    with pytest.raises(InvalidArgument, match="maximum of 128") as info:
        explain(lm_explainer, "gpt2-lm", [spec], Occlusion())
    assert info.value.field == "inputs[0].continuation"
    spec = InputSpec(ids=prompt)
    with pytest.raises(InvalidArgument, match="maximum of 128") as info:
        explain(lm_explainer, "gpt2-lm", [spec], Occlusion(), generation=Generation(8))
    assert info.value.field == "generation.max_new_tokens"


def test_classifier_rejects_continuations(tiny_gpt2_dir: Path) -> None:
    reg = Registry()
    reg.add(load_model(ModelConfig("cls", tiny_gpt2_dir, device="cpu")))
    try:
        explainer = Explainer(reg)
        spec = InputSpec(text=PROMPT, continuation_text=" world")
        with pytest.raises(InvalidArgument) as info:
            explain(explainer, "cls", [spec], Occlusion())
        assert info.value.field == "inputs[0].continuation"
        with pytest.raises(InvalidArgument) as info:
            explain(
                explainer, "cls", [InputSpec(text=PROMPT)], Occlusion(), generation=Generation()
            )
        assert info.value.field == "generation"
    finally:
        reg.close()


def test_task_is_detected(lm_registry: Registry) -> None:
    served = lm_registry.get("llama-lm")
    assert served.task == "causal-lm"
    assert served.labels == []
    assert served.replacement.kind == "unk_token"


def test_gradient_rows_share_points_and_keep_only_sums(lm_registry: Registry) -> None:
    from explainserve.explain import causal
    from explainserve.explain.run import Item, Progress, RunContext
    from explainserve.vocabulary import encode_text

    served = lm_registry.get("gpt2-lm")
    tok = served.tokenizer
    prompt = causal.strip_end_of_sequence(tok, encode_text(tok, PROMPT, 128, "p"))
    spec = InputSpec(text=PROMPT, continuation_text=CONTINUATION)
    cont = causal.encode_continuation(tok, spec, 0, CausalLimits())
    full = causal.join(prompt, cont)
    layout = causal.causal_units(prompt, cont, full, "word", tok, True)
    p, t = prompt.n_tokens, cont.n_tokens
    item = Item(0, full, layout.inputs, cont.ids, np.arange(p - 1, p - 1 + t))
    method = IntegratedGradients(n_steps=5)
    run = method.start(item, RunContext(served, "logits", "mean", 0, Progress(0), None))
    (job,) = run.jobs
    assert job.n_rows == 5 * t
    assert job.embeds.shape[0] == 5  # the points, shared by the t targets
    served.worker.submit_all([job])
    scores = run.finish()
    assert scores.shape == (t, layout.inputs.n_units)
    grads, rows = job.future.result()
    assert grads.numel() == 0  # summed per target as batches finished, never kept
    assert rows.shape == (5 * t,)


def test_sentences_of_a_continuation_that_starts_with_a_lone_space(
    lm_explainer: Explainer,
) -> None:
    # The BPE has no "ĠH": " He" starts with a whitespace-only token, which joins the sentence.
    tokenizer = lm_explainer.registry.get("llama-lm").tokenizer
    ids = tokenizer(" He sat down!", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "Ġ"
    specs = [
        InputSpec(text="Dr. Smith arrived.", continuation_text=" He sat down!"),
        InputSpec(text="Dr. Smith arrived.", continuation_ids=ids),
    ]
    for e in explain(lm_explainer, "llama-lm", specs, Occlusion(), granularity="sentence"):
        assert e.units.texts == ["Dr. Smith arrived.", "He sat down!"]
        assert e.target_units is not None
        assert e.target_units.texts == ["He sat down!"]
        assert e.target_units.token_indices == [list(range(e.prompt_tokens, len(e.token_ids)))]
        assert e.valid is not None
        assert e.valid.tolist() == [[True, False]]


def test_cancellation_stops_generation(lm_explainer: Explainer) -> None:
    from explainserve.errors import Cancelled

    served = lm_explainer.registry.get("gpt2-lm")
    steps: list[int] = []
    params = ExplainParams(
        model="gpt2-lm",
        inputs=[InputSpec(text=PROMPT)],
        method=Occlusion(),
        generation=Generation(max_new_tokens=16),
    )
    before = served.worker.stats.batches
    with pytest.raises(Cancelled):
        list(
            lm_explainer.explain(
                params,
                on_progress=lambda done, _total: steps.append(done),
                is_cancelled=lambda: len(steps) >= 3,
            )
        )
    assert len(steps) == 3  # three tokens generated, then the generation stopped
    assert served.worker.stats.batches == before + 1  # no explanation forward ran


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("sample", [False, True])
def test_prompts_generated_together_equal_one_by_one(
    lm_explainer: Explainer, direct_lm: dict[str, Direct], model: str, sample: bool
) -> None:
    prompts = ["Hello", "The quick brown fox jumps over", "Deep learning models need"]
    gen = Generation(max_new_tokens=6, do_sample=sample, temperature=2.0)
    served = lm_explainer.registry.get(model)
    before = served.worker.stats.batches
    specs = [InputSpec(text=p) for p in prompts]
    together = explain(lm_explainer, model, specs, Occlusion(), generation=gen, seed=7)
    assert served.worker.stats.batches - before <= 3  # one generation batch + the explanations
    for spec, e in zip(specs, together, strict=True):
        (alone,) = explain(lm_explainer, model, [spec], Occlusion(), generation=gen, seed=7)
        assert e.continuation_ids is not None
        assert alone.continuation_ids is not None
        assert list(e.continuation_ids) == list(alone.continuation_ids)
        if not sample:
            prompt_ids = e.token_ids[: e.prompt_tokens]
            assert list(e.continuation_ids) == direct_lm[model].greedy(prompt_ids, 6)


@pytest.mark.parametrize("model", MODELS)
def test_generation_survives_out_of_memory_and_leaves_the_queue_empty(
    lm_explainer: Explainer, model: str
) -> None:
    """A generation batch that runs out of memory is split and retried like any other (the
    prompts then generate apart, with the same continuations), and the queue's row count
    comes back to zero (generation and explanation rows are accounted for alike)."""
    prompts = ["Hello", "The quick brown fox jumps over", "Deep learning models need"]
    gen = Generation(max_new_tokens=5)
    specs = [InputSpec(text=p) for p in prompts]
    served = lm_explainer.registry.get(model)
    worker = served.worker
    clean = explain(lm_explainer, model, specs, Occlusion(), generation=gen)
    generation_batches: list[int] = []

    def oom_on_joint_generation(pieces: list[tuple[GenerateJob, int, int]]) -> None:
        if isinstance(pieces[0][0], GenerateJob):
            generation_batches.append(len(pieces))
            if len(pieces) > 1:
                raise torch.OutOfMemoryError("injected")

    splits = worker.stats.oom_splits
    worker.fault_hook = oom_on_joint_generation  # type: ignore[assignment]
    try:
        faulty = explain(lm_explainer, model, specs, Occlusion(), generation=gen)
    finally:
        worker.fault_hook = None
        worker.reset_memory_caps()
    assert generation_batches[0] == len(prompts)
    assert max(generation_batches[1:]) == 1  # then one prompt at a time
    assert worker.stats.oom_splits > splits
    for a, b in zip(clean, faulty, strict=True):
        assert a.continuation_ids is not None
        assert b.continuation_ids is not None
        assert list(a.continuation_ids) == list(b.continuation_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    assert worker.queued_rows == 0


def test_encoding_a_continuation_that_is_not_there_is_an_error(tiny_gpt2_lm_dir: Path) -> None:
    """The request paths encode given continuations only; a caller that asks for a missing one
    gets a real error, not an assert (gone under `python -O`)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_lm_dir)
    with pytest.raises(ValueError, match="input 3 has no continuation to encode"):
        causal.encode_continuation(tokenizer, InputSpec(text=PROMPT), 3, CausalLimits())
