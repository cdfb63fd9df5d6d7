"""Reuse: causal LMs' rows run on a cached prefix, identical rows and inputs run once.

Each model is served twice from the same weights, with `WorkerOptions.reuse` on (the default)
and off (every row run in full, as before): the scores must agree to float rounding, and the
worker's counters must show the tokens and rows actually run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from lm_jobs import causal_job, explain, scale

from explainserve.explain import perturbation
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.sobol import Sobol
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.options import WorkerOptions
from explainserve.vocabulary import InputSpec

LMS = ["gpt2-lm", "llama-lm", "gpt2-zero"]
PROMPT = "Hello there, world of words. Cats sat on the mat"
CONTINUATION = " and then the dogs sat."
METHODS: dict[str, perturbation.PerturbationMethod] = {
    "occlusion": Occlusion(),
    "lime": Lime(n_perturbations=40),
    "kernel_shap": KernelShap(n_perturbations=40),
    "sobol": Sobol(n_points=4),
}
GRANULARITIES = ["all_tokens", "token", "word", "sentence"]


def _served(
    name: str, path: Path, reuse: bool, always_prefix: bool = False, **kwargs: object
) -> object:
    # A causal request submits its teacher-forced rows, then its method's rows, in two calls:
    # with no wait the worker could take the first alone, and a loaded machine (a fresh clone's
    # `make test` beside other work) once split them, so the counted tokens differed. 0.1 s
    # lets both submissions share the batch, so on an idle worker a request's batches are the
    # same on every run, which the counts and bit-for-bit comparisons below rely on.
    options = WorkerOptions(reuse=reuse, always_prefix=always_prefix, batch_wait_seconds=0.1)
    return load_model(ModelConfig(name, path, device="cpu", worker=options, **kwargs))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def registries(
    tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path, tiny_bert_dir: Path
) -> Iterator[dict[bool, Registry]]:
    """reuse on / off -> the tiny LMs (GPT-2 with the zero-embedding replacement too) and the
    tiny BERT classifier."""
    out = {}
    for reuse in (True, False):
        reg = Registry()
        reg.add(_served("gpt2-lm", tiny_gpt2_lm_dir, reuse))  # type: ignore[arg-type]
        reg.add(_served("llama-lm", tiny_llama_lm_dir, reuse))  # type: ignore[arg-type]
        reg.add(
            _served("gpt2-zero", tiny_gpt2_lm_dir, reuse, replacement_fallback="zero_embedding")  # type: ignore[arg-type]
        )
        reg.add(_served("bert", tiny_bert_dir, reuse))  # type: ignore[arg-type]
        out[reuse] = reg
    yield out
    for reg in out.values():
        reg.close()


@pytest.fixture(scope="module")
def always_prefix(tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path) -> Iterator[Registry]:
    """The tiny LMs of `registries` with reuse, every batch that can run on a cached prefix
    taking that path however little it saves (`WorkerOptions.always_prefix`): the default
    skips batches that would save under a quarter of their tokens (small random designs often
    do), or whose measured costs favour the full path."""
    reg = Registry()
    for name, path, kwargs in (
        ("gpt2-lm", tiny_gpt2_lm_dir, {}),
        ("llama-lm", tiny_llama_lm_dir, {}),
        ("gpt2-zero", tiny_gpt2_lm_dir, {"replacement_fallback": "zero_embedding"}),
    ):
        reg.add(_served(name, path, True, always_prefix=True, **kwargs))  # type: ignore[arg-type]
    yield reg
    reg.close()


@pytest.mark.parametrize("model", LMS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("isolate", [False, True])
def test_prefix_reuse_equals_full_recomputation(
    registries: dict[bool, Registry],
    always_prefix: Registry,
    model: str,
    granularity: str,
    method: str,
    isolate: bool,
) -> None:
    # Every batch takes the prefix path, however little it saves (`always_prefix`).
    inputs = [
        InputSpec(text=PROMPT, continuation_text=CONTINUATION),
        InputSpec(text="Dogs ran far", continuation_text=" away from home."),
    ]
    kw = {"granularity": granularity, "isolate": isolate, "seed": 3}
    stats = always_prefix.get(model).worker.stats
    before = (stats.real_tokens, stats.naive_tokens)
    fast = explain(always_prefix, model, inputs, METHODS[method], **kw)
    assert stats.real_tokens - before[0] < stats.naive_tokens - before[1]  # the prefix path ran
    full = explain(registries[False], model, inputs, METHODS[method], **kw)
    for a, b in zip(fast, full, strict=True):
        assert a.scores.shape == b.scores.shape
        # The rows' scores differ by float32 rounding of the same sums in another order (a
        # few ulps, ~1e-6 of their size); the estimators are linear in them (Sobol: ratios of
        # variances of them), with gains of a few units on these small designs.
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-4 * scale(b.scores))
        np.testing.assert_array_equal(a.valid, b.valid)


@pytest.mark.parametrize("model", LMS)
def test_rows_on_a_cached_prefix_equal_full_rows(
    registries: dict[bool, Registry], always_prefix: Registry, model: str
) -> None:
    """The worker alone: every perturbed row's scores, with and without the cached prefix, to
    float32 rounding; the rows share prefixes of every length with the reference."""
    # The prefix path always, not the measured costs' choice.
    served = {True: always_prefix.get(model), False: registries[False].get(model)}
    tok = served[True].tokenizer
    ids = np.asarray(tok(PROMPT + CONTINUATION)["input_ids"], dtype=np.int64)
    n = len(ids)
    p = n - 5
    rows = np.repeat(ids[None], n, axis=0)
    for r in range(n - 1):
        rows[r, r] = (ids[r] + 7) % len(tok)  # row r changes position r; the last is unchanged
    replaced = None
    if model == "gpt2-zero":
        replaced = np.zeros(rows.shape, dtype=bool)
        replaced[np.arange(n - 1), np.arange(n - 1)] = True
    outs = {}
    for reuse, m in served.items():
        job = causal_job(rows, ids, p, mode="log_softmax", replaced=replaced)
        before = (m.worker.stats.real_tokens, m.worker.stats.naive_tokens)
        m.worker.submit(job)
        outs[reuse] = job.future.result()
        run = m.worker.stats.real_tokens - before[0]
        naive = m.worker.stats.naive_tokens - before[1]
        # With reuse: the prefix once, then row r from position min(r, p - 1).
        expected = p - 1 + sum(n - min(r, p - 1) for r in range(n)) if reuse else n * n
        assert (run, naive) == (expected, n * n)
    # float32 logits of the same sums in another order: a few ulps of their magnitude.
    np.testing.assert_allclose(outs[True], outs[False], rtol=0, atol=1e-5 * scale(outs[False]))


@pytest.mark.parametrize("model", ["gpt2-lm", "llama-lm"])
def test_counters_report_tokens_run(always_prefix: Registry, model: str) -> None:
    """Occlusion alone on an idle worker: the prefix once, then each row from its first change
    (all in one batch); the naive count is every row in full (the prefix path always, not the
    measured costs' choice)."""
    served = always_prefix.get(model)
    stats = served.worker.stats
    before = (stats.rows, stats.real_tokens, stats.naive_tokens)
    (e,) = explain(
        always_prefix,
        model,
        [InputSpec(text=PROMPT, continuation_text=CONTINUATION)],
        Occlusion(),
        granularity="token",
    )
    n = len(e.token_ids)
    p = e.prompt_tokens
    t2u = e.units.token_to_unit
    masks = Occlusion().design(e.units.n_units, 0)[0]
    starts = []
    for mask in masks:
        hit = np.flatnonzero((t2u >= 0) & (mask[np.maximum(t2u, 0)] == 1))
        if len(hit):  # rows equal to the input (Occlusion's first) need no suffix
            starts.append(min(int(hit.min()), p - 1))
    rows = len(masks) + 1  # and the unperturbed teacher-forced row
    assert stats.rows - before[0] == rows
    assert stats.naive_tokens - before[2] == rows * n
    # One batch: the prefix pass runs the whole input (and scores the rows equal to it), then
    # each perturbed row from its first change.
    assert stats.real_tokens - before[1] == n + sum(n - s for s in starts)
    assert stats.real_tokens - before[1] < 0.75 * rows * n


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        ("bert", [InputSpec(text="good movie"), InputSpec(text="a rather good film all round")]),
        ("gpt2-lm", [InputSpec(text="Cats sat on the old mat", continuation_text=" again.")]),
    ],
)
@pytest.mark.parametrize("method", ["lime", "kernel_shap", "sobol"])
def test_duplicate_rows_run_once_with_the_same_results(
    registries: dict[bool, Registry], model: str, inputs: list[InputSpec], method: str
) -> None:
    """Few units, many draws: identical rows run once, and the estimators get the same
    matrices: for the classifier (no prefix reuse) bit for bit the results of running every
    row on an idle worker; for the LM, to the float rounding of its prefix reuse."""
    m = METHODS[method]
    counts = {}
    results = {}
    for reuse in (True, False):
        stats = registries[reuse].get(model).worker.stats
        before = stats.rows
        results[reuse] = explain(registries[reuse], model, inputs, m, granularity="word", seed=5)
        counts[reuse] = stats.rows - before
    planned = sum(e.forward_passes for e in results[False])
    assert counts[False] == planned
    distinct = 0
    for e in results[True]:
        masks = m.design(e.units.n_units, 5)[0]
        if model != "bert":  # the LM's teacher-forced continuation: a row of its own
            distinct += 1
        elif masks[0].any():  # the classifier's unperturbed row, added when not the design's
            masks = np.vstack([np.zeros_like(masks[:1]), masks])
        distinct += len(np.unique(masks, axis=0))
    assert counts[True] == distinct < planned
    for a, b in zip(results[True], results[False], strict=True):
        assert a.forward_passes == b.forward_passes  # the method's sequences, as defined
        if model == "bert":
            np.testing.assert_array_equal(a.scores, b.scores)
        else:
            np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-4 * scale(b.scores))


def test_identical_inputs_run_once(registries: dict[bool, Registry]) -> None:
    """The same input three times in a request: its rows (the unperturbed one that predicts its
    target included) go through the model once; all three get the same scores and logits, those
    it gets alone up to the float rounding of sharing batches with another input."""
    stats = registries[True].get("bert").worker.stats
    spec = InputSpec(text="a rather good movie")
    alone = explain(registries[True], "bert", [spec], Occlusion())[0]
    before = stats.rows
    out = explain(
        registries[True], "bert", [spec, InputSpec(text="not this one"), spec, spec], Occlusion()
    )
    assert stats.rows - before == alone.forward_passes + out[1].forward_passes
    for i in (0, 2, 3):
        np.testing.assert_array_equal(out[i].scores, out[0].scores)
        np.testing.assert_array_equal(out[i].logits, out[0].logits)
        assert out[i].target_indices == out[0].target_indices
        assert out[i].forward_passes == alone.forward_passes
    # Padded with the other input in its batches: float32 rounding of the same sums.
    np.testing.assert_allclose(out[0].scores, alone.scores, rtol=0, atol=1e-5 * scale(alone.scores))


@pytest.mark.parametrize("width", [1, 3, 6, 40])
def test_distinct_rows_maps_every_row_to_an_equal_one(width: int) -> None:
    rng = np.random.default_rng(width)
    ids = rng.integers(0, 3, size=(400, width)).astype(np.int64)
    replaced = rng.random(ids.shape) < 0.2
    keep, inverse = perturbation.distinct_rows(ids, replaced)
    np.testing.assert_array_equal(ids[keep][inverse], ids)
    np.testing.assert_array_equal(replaced[keep][inverse], replaced)
    assert len(keep) == len(np.unique(np.hstack([ids, replaced]), axis=0))
    assert list(keep) == sorted(keep)  # first-occurrence order
    assert keep[0] == 0
