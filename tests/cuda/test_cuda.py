"""CUDA-only paths: bfloat16 against float32, and a real out-of-memory error in the worker.

Marked `cuda` and skipped without a CUDA device (CI has none): run them on a GPU machine with
`pytest -m cuda tests/cuda` (bench/gpu.sh does, before the benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from explainserve.explain.method import Method
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.service import Explainer
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.options import WorkerOptions
from explainserve.vocabulary import InputSpec

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TEXT = "The quick brown fox jumps over the lazy dog. Gradients flow back through the layers."


def _registry(*served: ServedModel) -> Registry:
    reg = Registry()
    for m in served:
        reg.add(m)
    return reg


def _explain(reg: Registry, model: str, spec: InputSpec, method: Method) -> Explanation:
    params = ExplainParams(model=model, inputs=[spec], method=method, granularity="token")
    (e,) = Explainer(reg).explain(params)
    return e


def _scale(x: NDArray[np.floating]) -> float:
    return max(1.0, float(np.abs(x).max()))


@pytest.fixture(scope="module")
def by_dtype(
    tiny_bert_dir: Path, tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path
) -> Iterator[Registry]:
    """The tiny classifier and LMs on CUDA, each in float32 and bfloat16 (NAME-DTYPE)."""
    served = [
        load_model(ModelConfig(f"{name}-{dtype}", path, device="cuda", dtype=dtype))
        for name, path in (
            ("bert", tiny_bert_dir),
            ("gpt2", tiny_gpt2_lm_dir),
            ("llama", tiny_llama_lm_dir),
        )
        for dtype in ("float32", "bfloat16")
    ]
    reg = _registry(*served)
    yield reg
    reg.close()


@pytest.mark.parametrize("model", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("method", ["occlusion", "lime"])
def test_bfloat16_is_close_to_float32(by_dtype: Registry, model: str, method: str) -> None:
    spec = (
        InputSpec(text=TEXT)
        if model == "bert"
        else InputSpec(text=TEXT, continuation_text=" and so on.")
    )
    m: Method = Occlusion() if method == "occlusion" else Lime(n_perturbations=128)
    full = _explain(by_dtype, f"{model}-float32", spec, m).scores
    half = _explain(by_dtype, f"{model}-bfloat16", spec, m).scores
    assert half.shape == full.shape
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation); through two
    # layers and a head the logits move by about 1% of their size, and the scores (differences
    # of logits, or a regression on them) by a few percent of the largest score.
    np.testing.assert_allclose(half, full, rtol=0, atol=0.1 * _scale(full))
    assert np.corrcoef(half.ravel(), full.ravel())[0, 1] > 0.95


def test_real_out_of_memory_halves_the_batch_and_the_request_succeeds(tiny_bert_dir: Path) -> None:
    """Measure what one batch of the request needs, take all but 70% of that from the device,
    run the request again: the batch runs out of memory, is split, and the scores come back."""
    served = load_model(
        ModelConfig(
            "bert-oom",
            tiny_bert_dir,
            device="cuda",
            worker=WorkerOptions(token_budget=1 << 17, max_batch_rows=4096, batch_wait_seconds=0.0),
        )
    )
    reg = _registry(served)
    spec = InputSpec(text=" ".join([TEXT] * 4))
    method = Lime(n_perturbations=4096)
    hog = None
    try:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        reference = _explain(reg, "bert-oom", spec, method).scores
        need = torch.cuda.max_memory_allocated() - base
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        hog = torch.empty(int(free - 0.7 * need), dtype=torch.uint8, device="cuda")
        splits = served.worker.stats.oom_splits
        again = _explain(reg, "bert-oom", spec, method).scores
        assert served.worker.stats.oom_splits > splits
        # Smaller batches: the same rows padded the same way, float32 rounding of other kernels.
        np.testing.assert_allclose(again, reference, rtol=0, atol=1e-4 * _scale(reference))
    finally:
        del hog
        torch.cuda.empty_cache()
        reg.close()
