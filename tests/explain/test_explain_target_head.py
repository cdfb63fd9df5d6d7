"""Causal LMs in logits mode: only the target tokens' rows of a plain LM head are computed
(`models.heads.KeptPositions`), and the scores equal those of the whole vocabulary's head.

Each tiny LM is served twice from the same weights, once as loaded (GPT-2 and Llama have a plain
head: the target rows are used) and once with `runner.target_head = None` (the whole head at
every kept position, as for any model whose logits are transformed after the head).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_jobs import explain, scale
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from explainserve.explain.method import Method
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.sobol import Sobol
from explainserve.models.heads import plain_head
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.models.runners import CausalLMRunner
from explainserve.scheduling.options import WorkerOptions
from explainserve.vocabulary import InputSpec

LMS = ["gpt2-lm", "llama-lm", "gpt2-zero"]
METHODS: dict[str, Method] = {
    "occlusion": Occlusion(),
    "lime": Lime(n_perturbations=40),
    "kernel_shap": KernelShap(n_perturbations=40),
    "sobol": Sobol(n_points=4),
}
GRANULARITIES = ["all_tokens", "token", "word", "sentence"]
INPUTS = [
    InputSpec(text="Hello there, world of words. Cats sat on the mat", continuation_text=" and."),
    InputSpec(text="Dogs ran far", continuation_text=" away from home."),
]


@pytest.fixture(scope="module")
def registries(tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path) -> Iterator[dict[bool, Registry]]:
    """target rows on / off -> the tiny LMs (GPT-2 with the zero-embedding replacement too)."""
    out = {}
    for target_rows in (True, False):
        reg = Registry()
        for name, path, fallback in [
            ("gpt2-lm", tiny_gpt2_lm_dir, "unk"),
            ("llama-lm", tiny_llama_lm_dir, "unk"),
            ("gpt2-zero", tiny_gpt2_lm_dir, "zero_embedding"),
        ]:
            # Batches never wait for company: a request's batches are the same on both sides.
            options = WorkerOptions(batch_wait_seconds=0.0)
            config = ModelConfig(name, path, device="cpu", worker=options)
            served = load_model(
                ModelConfig(**{**config.__dict__, "replacement_fallback": fallback})
            )
            runner = served.runner
            assert isinstance(runner, CausalLMRunner)
            assert runner.target_head is not None  # GPT-2 and Llama heads are plain
            if not target_rows:
                runner.target_head = None
            reg.add(served)
        out[target_rows] = reg
    yield out
    for reg in out.values():
        reg.close()


@pytest.mark.parametrize("model", LMS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("isolate", [False, True])
def test_target_rows_of_the_head_equal_the_whole_head(
    registries: dict[bool, Registry], model: str, granularity: str, method: str, isolate: bool
) -> None:
    kw = {"granularity": granularity, "isolate": isolate, "seed": 3, "mode": "logits"}
    fast = explain(registries[True], model, INPUTS, METHODS[method], **kw)
    full = explain(registries[False], model, INPUTS, METHODS[method], **kw)
    for a, b in zip(fast, full, strict=True):
        assert a.scores.shape == b.scores.shape
        np.testing.assert_array_equal(a.valid, b.valid)
        # Each logit is the same float32 dot product of length d (64 here) summed in another
        # order (an einsum over the target rows, not the head's matrix product): they differ
        # by a few ulps (~1e-7 relative); the estimators are linear in the rows' scores (Sobol:
        # ratios of their variances), with gains of a few units on these small designs.
        # Measured: at most 2e-6 on scores of size 2-5; 1e-5 of their size leaves a margin and
        # still fails any real error (a wrong row, position or bias is of the logits' size).
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5 * scale(b.scores))
        np.testing.assert_allclose(
            a.continuation_scores, b.continuation_scores, rtol=0, atol=1e-5 * scale(b.scores)
        )


@pytest.mark.parametrize("mode", ["logits", "softmax", "log_softmax"])
def test_the_whole_head_runs_only_where_the_mode_needs_the_vocabulary(
    registries: dict[bool, Registry], mode: str
) -> None:
    served = registries[True].get("llama-lm")
    head = served.model.get_output_embeddings()
    calls: list[tuple[int, ...]] = []
    handle = head.register_forward_hook(lambda _m, _i, out: calls.append(tuple(out.shape)))
    try:
        explain(registries[True], "llama-lm", INPUTS, Occlusion(), mode=mode)
    finally:
        handle.remove()
    vocab = head.weight.shape[0]
    if mode == "logits":
        assert calls == [], calls
    else:
        assert calls, calls
        assert {shape[-1] for shape in calls} == {vocab}


def _tiny_llama(**extra: object) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        **extra,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def test_only_plain_heads_are_cut_to_target_rows() -> None:
    plain = _tiny_llama()
    assert plain_head(plain) is plain.lm_head
    # A logit transform named in the config (here Cohere's scale) keeps the whole head.
    assert plain_head(_tiny_llama(logit_scale=0.5)) is None
    # So does a head that is not a plain Linear.
    odd = _tiny_llama()
    odd.lm_head = torch.nn.Sequential(odd.lm_head)
    assert plain_head(odd) is None
    # And an architecture not known to be plain: Gemma 2 softcaps its logits after the head.
    gemma = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
        )
    )
    assert plain_head(gemma) is None
