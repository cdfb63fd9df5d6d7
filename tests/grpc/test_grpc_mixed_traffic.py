"""A small request served beside a huge one, over gRPC: it completes after a bounded number of
the huge request's batches, whatever the huge one's size; a batch-priority request gives way to
an interactive one. The worker's fault hook holds the huge request's first batch until the other
request is queued, then records which requests each batch serves: batches are counted, never
seconds, so the test is exact on a loaded machine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from explainserve.explain.service import Explainer, Limits
from explainserve.grpc.server import ServerOptions, start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.jobs import Job
from explainserve.scheduling.options import WorkerOptions
from explainserve.scheduling.worker import Worker
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

LONG = "The quick brown fox jumps over the lazy dog. " * 3


class BatchLog:
    """A fault hook that logs, from the huge request's first batch on, each batch's requests
    (the `is_cancelled` tag every job of a request shares) and rows.

    It holds that first batch until `release` (the other request is queued meanwhile). Each
    request queues once (a classifier's perturbation job carries the unperturbed row that picks
    its target), so nothing of the other request is queued later than its first job.
    """

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        self.batches: list[set[int]] = []
        #: Per batch, the rows of each request.
        self.rows: list[dict[int, int]] = []

    def __call__(self, pieces: Sequence[tuple[Job[Any], int, int]]) -> None:
        rows: dict[int, int] = {}
        for job, first, stop in pieces:
            rows[id(job.is_cancelled)] = rows.get(id(job.is_cancelled), 0) + stop - first
        self.batches.append(set(rows))
        self.rows.append(rows)
        if not self.held.is_set():
            self.held.set()
            assert self.release.wait(30)

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
    log = BatchLog()
    worker.fault_hook = log
    try:
        big_call = stub.Explain.future(big, timeout=120)
        assert log.held.wait(30)
        queued = worker.queued_rows
        other_call = stub.Explain.future(other, timeout=120)
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
    assert total >= 20  # ~500 distinct rows of ~32 tokens, 16 in a batch of 512 tokens
    # The small request queues once (its unperturbed row, which would pick its target, rides
    # with its perturbations): all its rows go in the batch taken after the held one, where
    # the huge request's rows (over twice as long) may not join them. It completes after 1 of
    # the huge request's batches, the one already taken (2 if a huge row could share its own).
    (other,) = {tag for b in log.batches for tag in b} - {log.first_request()}
    assert [i for i, rows in enumerate(log.rows) if other in rows] == [1]
    assert log.rows[1] == {other: 5}  # the unperturbed sentence, and each of its 4 words
    assert count_before(log, last) == 1


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
    assert len(served_medium) >= 2
    assert served_medium == list(range(1, last + 1))  # right after the held batch, in a row
    for i in served_medium[:-1]:  # its rows fill whole batches: none of the huge one's
        assert mine not in log.batches[i]
    # The batch-priority request runs only where the medium one had nothing queued or left
    # room: the held batch, and the rest of the medium one's last batch.
    assert count_before(log, last) <= 2
    assert count_before(log, len(log.batches) - 1) >= 20
