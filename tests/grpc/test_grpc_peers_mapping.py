"""bench/peers.py's parameter mapping: the ExplainServe request it builds for each method runs
exactly as many model rows per text as Interpreto 0.5.2 does with the matched parameters (its
perturbators' mask shapes, plus the one pass that finds the predicted class), so the benchmark
compares the same work. The benchmark itself checks the same counts against Interpreto's model
at run time; this test needs no peers' venv."""

from __future__ import annotations

import pytest
from bench_scripts import load_bench

from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

peers = load_bench("peers")

#: Four words with the full stop (KernelSHAP's 2^4 coalitions are fewer than its 32 perturbations)
#: and fourteen.
TEXTS = ["Good food here.", "The staff went out of their way to help us with everything today."]


@pytest.mark.parametrize("quick", [True, False])
def test_cases_cover_every_method(quick: bool) -> None:
    methods = [c.method for c in peers.cases(quick)]
    assert methods == [
        "occlusion",
        "lime",
        "kernel_shap",
        "sobol",
        "saliency",
        "integrated_gradients",
        "smooth_grad",
    ]
    # Captum has every method but Sobol.
    assert [m for m in methods if peers.captum_call(peers.Case(m, 4)) is None] == ["sobol"]


@pytest.mark.parametrize("case", peers.cases(True), ids=lambda c: c.method)
def test_explainserve_runs_interpreto_rows(
    stub: explain_pb2_grpc.ExplainServiceStub, case: object
) -> None:
    request = pb.ExplainRequest(
        model="bert", inputs=[pb.Input(text=t) for t in TEXTS], **peers.explainserve_request(case)
    )
    reply = stub.Explain(request, timeout=60)
    words = [len(e.units) for e in reply.explanations]
    assert words == [4, 14]  # WORD granularity: the full stop is a word, as in Interpreto
    for explanation, n_words in zip(reply.explanations, words, strict=True):
        # Interpreto's pass for the predicted class: ExplainServe's unperturbed row, one of
        # the design's for Occlusion, LIME and KernelSHAP (whose first row is unperturbed).
        shared = case.method in ("occlusion", "lime", "kernel_shap")
        want = peers.rows_per_text(case, n_words) + (0 if shared else 1)
        assert explanation.counters.forward_passes == want


def test_matched_parameters() -> None:
    ig = peers.Case("integrated_gradients", 16)
    fields = peers.explainserve_request(ig)
    assert fields["integrated_gradients"].n_steps == 16
    assert fields["integrated_gradients"].rule == pb.INTEGRATION_RULE_RIEMANN_TRAPEZOID
    assert fields["integrated_gradients"].reduction == pb.GRADIENT_REDUCTION_MEAN_ABS
    assert fields["granularity"] == pb.GRANULARITY_WORD
    assert peers.interpreto_call(ig) == (
        "IntegratedGradients",
        {"n_perturbations": 16, "input_x_gradient": True},
    )
    sobol = peers.explainserve_request(peers.Case("sobol", 8))["sobol"]
    assert (sobol.n_points, sobol.order) == (8, pb.SOBOL_ORDER_FIRST)
    assert peers.interpreto_call(peers.Case("sobol", 8)) == (
        "Sobol",
        {"n_token_perturbations": 8},
    )
    # Interpreto's Sobol default is first order; its saliency default multiplies by the input.
    assert peers.interpreto_call(peers.Case("saliency"))[1] == {"input_x_gradient": False}
