"""bench/mixed.py's pure parts: the huge and small requests it sends for each `--huge-method` and
`--small-method` (read back by the server's own conversion, so the rows they bring are the
server's count), and which batches its observer charges to the huge request when they are
gradient batches (no model, no server: jobs built by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_scripts import load_bench

from explainserve.explain.limits import Limits
from explainserve.grpc.convert import method_from_proto
from explainserve.scheduling.jobs import ForwardJob, GradientJob

mixed = load_bench("mixed")


def test_huge_request_rows_are_coalitions_or_steps() -> None:
    shap = method_from_proto(mixed.huge_request("kernel_shap", 512, "interactive"))
    assert shap.name == "kernel_shap"
    assert shap.n_perturbations == 512
    ig_request = mixed.huge_request("integrated_gradients", 200, "batch")
    assert ig_request.priority == mixed.pb.PRIORITY_BATCH
    assert [i.text for i in ig_request.inputs] == [mixed.LONG_TEXT]
    ig = method_from_proto(ig_request)
    assert ig.name == "integrated_gradients"
    assert ig.n_steps == 200
    # One gradient row per step (one target): --huge-rows is the request's sequence count.
    assert ig.rows_per_target() == 200
    with pytest.raises(ValueError, match="unknown huge method"):
        mixed.huge_request("lime", 8, "interactive")


def test_small_request_methods() -> None:
    occlusion = mixed.small_request("occlusion", 7)
    assert method_from_proto(occlusion).name == "occlusion"
    assert occlusion.inputs[0].text == mixed.SMALL_TEXTS[1]
    saliency = method_from_proto(mixed.small_request("saliency", 0))
    assert saliency.name == "saliency"
    assert saliency.rows_per_target() == 1
    with pytest.raises(ValueError, match="unknown small method"):
        mixed.small_request("lime", 0)


def test_defaults_fit_the_server_limits() -> None:
    """Every default and probe of the huge request, and the most `--huge-seconds` gives, is
    within what one input may send through the model (one target: rows = steps)."""
    limit = Limits().max_rows_per_input
    assert limit >= mixed.MAX_HUGE_ROWS
    for method in mixed.HUGE_METHODS.values():
        assert max(method.cpu_rows, method.quick_rows, method.probe_rows) <= mixed.MAX_HUGE_ROWS
    assert mixed.HUGE_METHODS["kernel_shap"].cpu_rows == 512  # RESULTS.md's figures'
    assert mixed.HUGE_METHODS["integrated_gradients"].kind == "gradient"


def _gradient_job(rows: int) -> GradientJob:
    return GradientJob(
        embeds=torch.zeros((rows, 5, 4)),
        attention=np.ones(5, dtype=np.int64),
        targets=np.zeros(rows, dtype=np.int64),
    )


def _forward_job(rows: int) -> ForwardJob:
    return ForwardJob(
        ids=np.zeros((rows, 5), dtype=np.int64),
        attention=np.ones((rows, 5), dtype=np.int64),
        targets=np.zeros(rows, dtype=np.int64),
    )


def test_gradient_batches_charged_to_the_huge_request() -> None:
    """A batch holding rows of the 200-step IG job counts as the huge request's, whatever else
    it holds; a batch of small requests' rows (one-row saliency, a dozen-row occlusion) as
    theirs; only while recording, and its padded tokens always."""
    seen = mixed.HugeBatches(200 // 2)
    huge, saliency, occlusion = _gradient_job(200), _gradient_job(1), _forward_job(12)
    seen.hook([(huge, 0, 1)])
    seen.batch("gradient", 1, 130, 129, 256, 0.25)  # not recording: tokens only
    seen.recording = True
    seen.hook([(huge, 1, 2), (saliency, 0, 1)])
    seen.batch("gradient", 2, 260, 140, 256, 0.5)
    seen.hook([(saliency, 0, 1)])
    seen.batch("gradient", 1, 10, 10, 256, 0.125)
    seen.hook([(occlusion, 0, 12)])
    seen.batch("forward", 12, 120, 120, 1024, 0.0625)
    assert seen.huge_tokens == 130 + 260
    assert seen.take() == ([0.5], [0.125, 0.0625])
    assert seen.take() == ([], [])
