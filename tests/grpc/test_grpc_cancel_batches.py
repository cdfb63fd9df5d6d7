"""Cancellation and deadlines take effect within one batch, for every RPC: the worker's fault
hook holds the request's first batch until the client has cancelled (or its deadline passed) and
the server has seen it, then counts the request's batches that still run. Counting batches, not
seconds, keeps the test exact on a loaded machine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import pytest

from explainserve.explain.service import Explainer
from explainserve.scheduling.jobs import Job
from explainserve.scheduling.worker import Worker
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

BIG = "The quick brown fox jumps over the lazy dog. " * 10


@dataclass
class Gate:
    """Holds the first batch of the next request that reaches the worker until `release`, and
    waits there until the server sees that request as cancelled; then counts its batches."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    key: Callable[[], bool] | None = None
    seen_cancelled: bool = False
    after: int = 0

    def __call__(self, pieces: Sequence[tuple[Job, int, int]]) -> None:
        mine = [job for job, _, _ in pieces if job.is_cancelled is not None]
        if self.key is None and mine:
            self.key = mine[0].is_cancelled
            self.entered.set()
            assert self.release.wait(30)
            deadline = time.monotonic() + 20
            while not self.key() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.seen_cancelled = self.key()
            return
        if any(job.is_cancelled is self.key for job, _, _ in pieces):
            self.after += 1


@pytest.fixture
def gate(explainer: Explainer) -> Iterator[Gate]:
    w: Worker = explainer.registry.get("bert").worker
    g = Gate()
    w.fault_hook = g
    yield g
    g.release.set()
    w.fault_hook = None


def settle(stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer) -> None:
    """Lets the worker finish or drop what is queued: a small request behind it gets its answer."""
    w = explainer.registry.get("bert").worker
    deadline = time.monotonic() + 30
    while w.queued_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    stub.Explain(
        pb.ExplainRequest(model="bert", inputs=[pb.Input(text="Fine.")], occlusion=pb.Occlusion()),
        timeout=30,
    )


HEAVY = pb.ExplainRequest(
    model="bert",
    inputs=[pb.Input(text=BIG)] * 20,
    sobol=pb.Sobol(n_points=9),
    granularity=pb.GRANULARITY_TOKEN,
)
ACTIVATIONS = pb.GetActivationsRequest(
    model="bert",
    inputs=[pb.Input(text=f"{BIG} {i}") for i in range(300)],
    split_points=["bert.encoder.layer.1"],
    granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
)


def start_call(
    stub: explain_pb2_grpc.ExplainServiceStub, rpc: str, timeout: float
) -> tuple[grpc.Future, Callable[[], grpc.StatusCode]]:
    """Starts `rpc` on a heavy request; returns the call (to cancel) and a function that waits
    for its end and gives its status code."""
    if rpc == "Explain":
        future = stub.Explain.future(HEAVY, timeout=timeout)
        return future, future.code
    if rpc == "ExplainStream":
        stream = stub.ExplainStream(pb.ExplainStreamRequest(request=HEAVY), timeout=timeout)
    else:
        stream = stub.GetActivations(ACTIVATIONS, timeout=timeout)

    def code() -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        return err.value.code()  # type: ignore[no-any-return]

    return stream, code


@pytest.mark.parametrize("rpc", ["Explain", "ExplainStream", "GetActivations"])
@pytest.mark.parametrize("ending", ["cancel", "deadline"])
def test_no_batch_runs_after_a_cancel_or_deadline(
    stub: explain_pb2_grpc.ExplainServiceStub,
    explainer: Explainer,
    gate: Gate,
    rpc: str,
    ending: str,
) -> None:
    """The first batch is held until the server sees the call end; then none of its other
    batches runs (they are dropped before the worker's next batch)."""
    call, code = start_call(stub, rpc, timeout=60 if ending == "cancel" else 10)
    assert gate.entered.wait(30)
    if ending == "cancel":
        call.cancel()
        assert code() == grpc.StatusCode.CANCELLED
    else:
        assert code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gate.release.set()
    settle(stub, explainer)
    assert gate.seen_cancelled
    assert gate.after == 0


def test_a_stream_whose_client_stopped_reading_holds_no_batch(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer
) -> None:
    """The client reads one chunk of 5,000 inputs' activations and stops: the worker goes on
    serving others (it never waits for a reader), and the stalled stream gets at most its
    look-ahead computed (13 chunks of 256 inputs: the live server's default limits)."""
    stats = explainer.registry.get("bert").worker.stats
    before = stats.rows
    stalled = stub.GetActivations(
        pb.GetActivationsRequest(
            model="bert",
            inputs=[pb.Input(text=f"{BIG} {i}") for i in range(5000)],
            split_points=["bert.encoder.layer.1"],
            granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
        ),
        timeout=120,
    )
    try:
        assert next(stalled).input_start == 0
        settle(stub, explainer)  # another request is answered meanwhile
        # + the other request's 3 rows ("Fine." and its two occlusions).
        assert stats.rows - before <= 13 * 256 + 3
    finally:
        stalled.cancel()
