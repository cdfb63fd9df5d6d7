"""A small request served beside a huge one, over gRPC: it completes after a bounded number of
the huge request's batches, whatever the huge one's size; a batch-priority request gives way to
an interactive one. The worker's fault hook holds the huge request's first batch until the other
request is queued, then records which requests each batch serves: batches are counted, never
seconds, so the test is exact on a loaded machine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from explainserve.explain.service import Explainer, Limits
from explainserve.grpc.server import ServerOptions, start
from explainserve.models.registry import ModelConfig, Registry, load_model
from explainserve.scheduling.jobs import Job
from explainserve.scheduling.worker import Worker, WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

LONG = "The quick brown fox jumps over the lazy dog. " * 3


class BatchLog:
    """A fault hook that logs, from the huge request's first batch of perturbed rows on, each
    batch's requests (the `is_cancelled` tag every job of a request shares).

    It holds that first batch until `release` (the other request is queued meanwhile). The other
    request runs in two rounds (the unperturbed input, then its perturbations, queued when the
    first comes back); a batch of the huge request alone taken in between is held until the
    second round is queued, so that how fast the explain layer prepares it does not change what
    is counted.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.held = threading.Event()
        self.release = threading.Event()
        self.batches: list[set[int]] = []
        self.gap_closed = False
        #: Whether the other request is answered (set once it is sent).
        self.other_done: Callable[[], bool] = lambda: False

    def __call__(self, pieces: Sequence[tuple[Job[Any], int, int]]) -> None:
        tags = {id(job.is_cancelled) for job, _, _ in pieces}
        if not self.held.is_set():
            if sum(stop - start for _, start, stop in pieces) == 1:
                return  # the huge request's unperturbed input
            self.held.set()
            self.batches.append(tags)
            assert self.release.wait(30)
            return
        self.batches.append(tags)
        others_seen = any(b - {self.first_request()} for b in self.batches)
        if others_seen and not self.gap_closed and tags == {self.first_request()}:
            self.gap_closed = True
            queued = self.worker.queued_rows
            deadline = time.monotonic() + 10
            while (
                self.worker.queued_rows <= queued
                and not self.other_done()
                and time.monotonic() < deadline
            ):
                time.sleep(0.001)

    def first_request(self) -> int:
        """The huge request's tag."""
        (tag,) = self.batches[0]
        return tag


@pytest.fixture(scope="module")
def served(tiny_bert_dir: Path) -> Iterator[tuple[explain_pb2_grpc.ExplainServiceStub, Worker]]:
    """A server of tiny BERT whose batches hold 512 tokens, without a time bound: the huge
    request takes dozens of batches, the same on every machine."""
    registry = Registry()
    options = WorkerOptions(token_budget=512, max_batch_ms=0)
    registry.add(
        load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu", worker=options))
    )
    running = start(ServerOptions(port=0), Explainer(registry, Limits()))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            yield stub, registry.get("bert").worker
    finally:
        running.stop(grace=None)
        registry.close()


def huge(priority: int) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=LONG)],
        kernel_shap=pb.KernelShap(n_perturbations=512),
        priority=priority,  # type: ignore[arg-type]
    )


def run_beside_huge(
    stub: explain_pb2_grpc.ExplainServiceStub,
    worker: Worker,
    big: pb.ExplainRequest,
    other: pb.ExplainRequest,
) -> tuple[BatchLog, int]:
    """Sends `big`, holds its first batch, sends `other` once the first is held, waits until
    `other` is queued, lets the worker go and waits for both. Returns the log and the index of
    the last batch that served `other`."""
    log = BatchLog(worker)
    worker.fault_hook = log
    try:
        big_call = stub.Explain.future(big, timeout=120)
        assert log.held.wait(30)
        queued = worker.queued_rows
        other_call = stub.Explain.future(other, timeout=120)
        log.other_done = other_call.done
        deadline = time.monotonic() + 30
        while worker.queued_rows <= queued and time.monotonic() < deadline:
            time.sleep(0.002)
        assert worker.queued_rows > queued
        log.release.set()
        other_call.result()
        big_call.result()
    finally:
        log.release.set()
        worker.fault_hook = None
    mine = log.first_request()
    served_other = [i for i, b in enumerate(log.batches) if b - {mine}]
    return log, max(served_other)


def count_before(log: BatchLog, last: int) -> int:
    """Batches of the huge (first) request up to batch `last`, the held one included."""
    mine = log.first_request()
    return sum(1 for b in log.batches[: last + 1] if mine in b)


def test_a_small_request_beside_a_huge_one_waits_a_bounded_number_of_its_batches(
    served: tuple[explain_pb2_grpc.ExplainServiceStub, Worker],
) -> None:
    stub, worker = served
    small = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text="A fine day.", targets=[pb.Target(index=0)])],
        occlusion=pb.Occlusion(),
    )
    log, last = run_beside_huge(stub, worker, huge(pb.PRIORITY_UNSPECIFIED), small)
    total = count_before(log, len(log.batches) - 1)
    assert total >= 20  # 513 rows of ~32 tokens, 16 in a batch of 512 tokens
    # The small request runs two rounds (the prediction that picks its target, then its
    # perturbations); each is in the next batch taken after it is queued, which the huge
    # request may share or precede by the batch already taken: at most 4 of its batches.
    assert count_before(log, last) <= 4


def test_an_interactive_request_overtakes_a_batch_priority_one(
    served: tuple[explain_pb2_grpc.ExplainServiceStub, Worker],
) -> None:
    stub, worker = served
    # ~16 tokens x 65 rows: several batches of its own.
    medium = pb.ExplainRequest(
        model="bert",
        inputs=[
            pb.Input(
                text="A fine day at the lake, with friends and a picnic.",
                targets=[pb.Target(index=0)],
            )
        ],
        kernel_shap=pb.KernelShap(n_perturbations=64),
        priority=pb.PRIORITY_INTERACTIVE,
    )
    log, last = run_beside_huge(stub, worker, huge(pb.PRIORITY_BATCH), medium)
    mine = log.first_request()
    served_medium = [i for i, b in enumerate(log.batches) if b - {mine}]
    assert len(served_medium) >= 3
    for i in served_medium[1:-1]:  # its perturbations fill whole batches: none of the huge one
        assert mine not in log.batches[i]
    # The batch-priority request runs only where the medium one had nothing queued or left room:
    # the held batch, the gap between its two rounds, the rest of its first round's batch.
    assert count_before(log, last) <= 3
    assert count_before(log, len(log.batches) - 1) >= 20
