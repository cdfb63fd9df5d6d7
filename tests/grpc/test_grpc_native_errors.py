"""Errors of the native core reach the client as INVALID_ARGUMENT or RESOURCE_EXHAUSTED with the
core's message, never as INTERNAL, and the server keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from numpy.typing import NDArray

from explainserve import _native
from explainserve.explain.service import Explainer, Limits
from explainserve.grpc.server import ServerOptions, start
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: One word: one unit at word granularity.
TEXT = "good"


@pytest.fixture(scope="module")
def roomy(live_server: Any) -> Iterator[explain_pb2_grpc.ExplainServiceStub]:
    """A server on the shared models whose row limit lets requests reach the core's own bounds
    (an operator may raise it: the default, 50,000 rows, stops these requests earlier)."""
    explainer = Explainer(live_server.explainer.registry, Limits(max_rows_per_input=1_000_000))
    running = start(ServerOptions(port=0), explainer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        running.stop(grace=None)


def test_a_parameter_outside_the_cores_domain_is_invalid_argument(
    roomy: explain_pb2_grpc.ExplainServiceStub, assert_serving: Callable[[], None]
) -> None:
    # The Sobol sequence has 65536 points: the core refuses more (InvalidParameterError).
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=TEXT)],
        granularity=pb.GRANULARITY_WORD,
        sobol=pb.Sobol(n_points=65537, sampler=pb.SOBOL_SAMPLER_SOBOL),
    )
    with pytest.raises(grpc.RpcError) as info:
        roomy.Explain(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "invalid parameter: the sobol sampler supports at most 65536 points, got 65537"
    )
    assert_serving()


def test_an_output_too_large_for_the_core_is_resource_exhausted(
    roomy: explain_pb2_grpc.ExplainServiceStub,
    assert_serving: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No request field can ask for more than the 2^32 rows a uint32 holds, which the kernel
    # would often grant lazily (overcommit) and then fail to back: the fault is injected by
    # asking the real core for an occlusion of 2^62 units, which it refuses at once
    # (TooLargeError).
    real = _native.occlusion_masks

    def huge(n_units: int) -> NDArray[np.uint8]:
        return real(2**62)

    monkeypatch.setattr(_native, "occlusion_masks", huge)
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text="not good at all")],
        granularity=pb.GRANULARITY_WORD,
        occlusion=pb.Occlusion(),
    )
    with pytest.raises(grpc.RpcError) as info:
        roomy.Explain(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        f"too large to allocate: a mask of {2**62 + 1} rows by {2**62} units"
    )
    monkeypatch.undo()
    assert_serving()
