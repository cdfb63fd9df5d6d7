"""Faults through the live server: an input that breaks the model fails its own request only
(INTERNAL with a request id), an input too big for the device even alone gets
RESOURCE_EXHAUSTED, and a full queue refuses new work at once. Errors are injected with the
worker's fault hook; the server keeps serving."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
import numpy as np
import pytest
import torch

from explainserve.explain.service import Explainer
from explainserve.scheduling.jobs import Job
from explainserve.scheduling.worker import Worker
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


@pytest.fixture
def worker(explainer: Explainer) -> Iterator[Worker]:
    """The bert worker of the shared server, its hook and options restored afterwards."""
    w = explainer.registry.get("bert").worker
    options = w.options
    yield w
    w.fault_hook = None
    w.options = options
    w.reset_memory_caps()


def has_token(explainer: Explainer, word: str) -> Callable[[Job], bool]:
    (token,) = explainer.registry.get("bert").tokenizer(word, add_special_tokens=False).input_ids
    return lambda job: bool((getattr(job, "ids", np.zeros(0)) == token).any())


def request(text: str) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model="bert", inputs=[pb.Input(text=text)], occlusion=pb.Occlusion(), seed=1
    )


GOOD = ["A fine sentence.", "Another fine sentence, longer than the first one.", "Short."]


def test_an_input_that_breaks_the_model_fails_its_request_only(
    stub: explain_pb2_grpc.ExplainServiceStub,
    explainer: Explainer,
    worker: Worker,
    assert_serving: Callable[[], None],
) -> None:
    alone = [stub.Explain(request(t), timeout=30) for t in GOOD]
    poisoned = has_token(explainer, "volcano")
    shared = threading.Event()

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        if any(poisoned(job) for job, _, _ in pieces):
            if len(pieces) > 1:
                shared.set()
            raise ValueError("injected: this input breaks the model")

    worker.fault_hook = hook
    for _ in range(3):  # concurrent arrivals usually share a batch; once is enough to prove it
        calls = [stub.Explain.future(request(t), timeout=30) for t in GOOD[:2]]
        bad = stub.Explain.future(request("The volcano erupted."), timeout=30)
        calls.append(stub.Explain.future(request(GOOD[2]), timeout=30))
        assert bad.exception() is not None
        assert bad.code() == grpc.StatusCode.INTERNAL
        assert "request id" in bad.details()
        assert "injected" not in bad.details()  # no trace or message leaks to the client
        for want, call in zip(alone, calls, strict=True):
            got = call.result()
            np.testing.assert_allclose(
                got.explanations[0].scores.values,
                want.explanations[0].scores.values,
                rtol=1e-4,
                atol=1e-5,
            )
        if shared.is_set():
            break
    assert shared.is_set(), "the poisoned input never shared a batch"
    worker.fault_hook = None
    assert_serving()


def test_out_of_memory_even_alone_is_resource_exhausted(
    stub: explain_pb2_grpc.ExplainServiceStub,
    explainer: Explainer,
    worker: Worker,
    assert_serving: Callable[[], None],
) -> None:
    long_text = "word " * 60
    splits = worker.stats.oom_splits

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        rows = sum(stop - start for _, start, stop in pieces)
        if rows > 4 or any(job.length > 50 for job, _, _ in pieces):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    worker.fault_hook = hook
    reply = stub.Explain(request(" ".join(GOOD)), timeout=30)  # fits after halving
    assert reply.explanations[0].counters.forward_passes > 4
    assert worker.stats.oom_splits > splits
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(request(long_text), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "does not fit in device memory even alone" in err.value.details()
    worker.fault_hook = None
    assert_serving()  # under the learnt cap


def test_a_full_queue_is_resource_exhausted_at_once(
    stub: explain_pb2_grpc.ExplainServiceStub,
    worker: Worker,
    assert_serving: Callable[[], None],
) -> None:
    unbounded = worker.options
    worker.options = dataclasses.replace(worker.options, max_queued_rows=305)
    hold = threading.Event()
    held = threading.Event()

    def hook(_pieces: Sequence[tuple[Job, int, int]]) -> None:
        held.set()
        hold.wait(30)

    worker.fault_hook = hook
    try:
        first = stub.Explain.future(request("The first request holds the worker."), timeout=30)
        assert held.wait(10)
        # 300 activation inputs wait behind it: 300 of the 305 queued sequences.
        filler = stub.GetActivations(
            pb.GetActivationsRequest(model="bert", inputs=[pb.Input(text=GOOD[0])] * 300),
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while worker.queued_rows < 300 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert worker.queued_rows == 300
        # At once: refused while the worker is held (until the end of the test, 30 s at
        # most); a request that waited for room would miss its 10 s deadline instead.
        with pytest.raises(grpc.RpcError) as err:
            stub.Explain(request(GOOD[1]), timeout=10)  # 11 sequences (10 words + 1): too many
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue of model bert is full (300 sequences waiting" in err.value.details()
        # A request bigger than the whole bound says so.
        big = pb.ExplainRequest(
            model="bert", inputs=[pb.Input(text=GOOD[1])] * 30, occlusion=pb.Occlusion()
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Explain(big, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "more than the queue bound of 305" in err.value.details()
        assert worker.queued_rows == 300  # nothing of the refused requests was queued
    finally:
        # The bound off before the worker is released: the first request queues its perturbed
        # sequences once its unperturbed pass is done, which may be before the worker has taken
        # the 300 waiting ones (a race this test is not about).
        worker.options = unbounded
        worker.fault_hook = None
        # The bound back first: the held request's perturbations are submitted after its base
        # pass, while the filler is still queued, and admission reserves nothing for them.
        worker.options = unbounded
        hold.set()
    assert first.result().explanations
    assert sum(len(chunk.row_offsets) - 1 for chunk in filler) == 300
    assert_serving()
