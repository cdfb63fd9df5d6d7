"""Concurrent clients share the models' workers; deadlines and cancellation stop the work."""

from __future__ import annotations

import time

import grpc
import numpy as np

from explainserve.explain.service import Explainer
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


def big(i: int) -> str:
    """102 tokens with [CLS] and [SEP]; "quick" is "slow" in the sentences of `i`'s set bits,
    so the inputs differ (identical inputs of a request run once) and keep their length."""
    return "".join(
        f"The {'slow' if i >> k & 1 else 'quick'} brown fox jumps over the lazy dog. "
        for k in range(10)
    )


# 40 inputs x (100 + 2) x 9 sequences: many seconds of work on a CPU if nothing stops it.
HEAVY = pb.ExplainRequest(
    model="bert",
    inputs=[pb.Input(text=big(i)) for i in range(40)],
    sobol=pb.Sobol(n_points=9),
    granularity=pb.GRANULARITY_TOKEN,
)
HEAVY_ROWS = 40 * (1 + (100 + 2) * 9)


def small_request(model: str, method: str) -> pb.ExplainRequest:
    methods = {
        "occlusion": {"occlusion": pb.Occlusion()},
        "lime": {"lime": pb.Lime(n_perturbations=24)},
        "kernel_shap": {"kernel_shap": pb.KernelShap(n_perturbations=20)},
        "sobol": {"sobol": pb.Sobol(n_points=3)},
        "saliency": {"saliency": pb.Saliency()},
        "input_x_gradient": {"input_x_gradient": pb.InputXGradient()},
        "integrated_gradients": {"integrated_gradients": pb.IntegratedGradients(n_steps=6)},
        "smooth_grad": {"smooth_grad": pb.SmoothGrad(n_samples=3)},
        "square_grad": {"square_grad": pb.SquareGrad(n_samples=3)},
        "var_grad": {"var_grad": pb.VarGrad(n_samples=3)},
        "gradient_shap": {"gradient_shap": pb.GradientShap(n_samples=3)},
    }
    texts = ["Unbelievably good film. I hated the ending!", "Hello there, world of words."]
    return pb.ExplainRequest(
        model=model,
        inputs=[pb.Input(text=t) for t in texts],
        granularity=pb.GRANULARITY_WORD,
        seed=5,
        **methods[method],
    )


METHODS = [
    "occlusion",
    "lime",
    "kernel_shap",
    "sobol",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smooth_grad",
    "square_grad",
    "var_grad",
    "gradient_shap",
]


def test_concurrent_requests_get_their_own_answers(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    """Every method, both models, all at once (twice): each request gets what it got alone.

    Rows of concurrent requests share batches padded to the longest row in them, so a row's
    float32 sums run over a different padded length than alone: results agree to float32
    rounding (the tolerance), not bit for bit. Everything discrete (units, targets, counts)
    is identical."""
    requests = [small_request(model, method) for model in ("bert", "gpt2") for method in METHODS]
    alone = [stub.Explain(r, timeout=60) for r in requests]
    for _round in range(2):
        futures = [stub.Explain.future(r, timeout=60) for r in requests]
        together = [f.result() for f in futures]
        for want, got in zip(alone, together, strict=True):
            assert got.model == want.model
            for g, w in zip(got.explanations, want.explanations, strict=True):
                assert [u.text for u in g.units] == [u.text for u in w.units]
                assert list(g.targets) == list(w.targets)
                # Batches are shared with the other requests, so only float32 rounding differs.
                np.testing.assert_allclose(g.scores.values, w.scores.values, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(g.logits, w.logits, rtol=1e-5, atol=1e-6)
                assert g.counters.forward_passes == w.counters.forward_passes


def test_isolated_requests_are_bit_exact_under_concurrency(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    """With `isolate_batches`, a request's rows never share a batch with another request's, so
    under concurrent traffic (the same requests, not isolated) it gets exactly, bit for bit,
    what it gets alone: every method, both models."""
    requests = [small_request(model, method) for model in ("bert", "gpt2") for method in METHODS]
    isolated = [pb.ExplainRequest(isolate_batches=True) for _ in requests]
    for request, copy in zip(requests, isolated, strict=True):
        copy.MergeFrom(request)
    alone = [stub.Explain(r, timeout=60) for r in isolated]
    mixed = [r for pair in zip(requests, isolated, strict=True) for r in pair]
    futures = [stub.Explain.future(r, timeout=60) for r in mixed]
    together = [f.result() for f in futures][1::2]
    for want, got in zip(alone, together, strict=True):
        for g, w in zip(got.explanations, want.explanations, strict=True):
            np.testing.assert_array_equal(g.scores.values, w.scores.values)
            np.testing.assert_array_equal(g.logits, w.logits)


def rows_run(explainer: Explainer) -> int:
    """Sequences the bert worker has run so far."""
    return explainer.registry.get("bert").worker.stats.rows


def test_deadline_stops_the_work(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer
) -> None:
    before = rows_run(explainer)
    call = stub.Explain.future(HEAVY, timeout=0.5)
    assert call.exception() is not None
    assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The next request queues behind whatever is left of the expired one.
    reply = stub.Explain(small_request("bert", "occlusion"), timeout=60)
    assert reply.explanations[0].scores.cols == 9
    assert rows_run(explainer) - before < HEAVY_ROWS // 2


def test_cancelled_stream_stops_the_work(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer
) -> None:
    before = rows_run(explainer)
    stream = stub.ExplainStream(pb.ExplainStreamRequest(request=HEAVY), timeout=60)
    first = next(stream)
    assert first.WhichOneof("event") == "progress"
    assert first.progress.forward_passes_total == HEAVY_ROWS
    stream.cancel()
    assert stream.code() == grpc.StatusCode.CANCELLED
    reply = stub.Explain(small_request("bert", "occlusion"), timeout=60)
    assert reply.explanations[0].scores.cols == 9
    assert rows_run(explainer) - before < HEAVY_ROWS // 2


def test_a_huge_request_does_not_starve_small_ones(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer
) -> None:
    """Small requests sent while a huge one runs finish long before it: batches interleave."""
    before = rows_run(explainer)
    heavy = stub.Explain.future(HEAVY, timeout=120)
    try:
        while rows_run(explainer) - before < 200:  # the huge request is running
            assert not heavy.done(), heavy.exception()
            time.sleep(0.005)
        for method in ("occlusion", "saliency"):
            reply = stub.Explain(small_request("bert", method), timeout=60)
            assert reply.explanations[0].scores.cols == 9
        assert not heavy.done()
        assert rows_run(explainer) - before < HEAVY_ROWS // 2
    finally:
        heavy.cancel()
