"""Draining: once `grace_seconds` are over, the calls still running are named in the log and
cancelled; their work stops before the worker's next batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from explainserve.explain.service import Explainer
from explainserve.grpc.server import ServerOptions, start
from explainserve.models.registry import ModelConfig, Registry, load_model
from explainserve.scheduling.worker import Job
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

BIG = "The quick brown fox jumps over the lazy dog. " * 10


def test_the_drain_names_and_cancels_the_calls_still_running(
    tiny_bert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()
    registry.add(load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu")))
    running = start(ServerOptions(port=0), Explainer(registry))
    entered = threading.Event()
    key: list[object] = []
    after = [0]
    seen_cancelled = [False]

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        check = pieces[0][0].is_cancelled
        if not key:
            key.append(check)
            entered.set()
            # Holds the first batch until the server has cancelled the call (the drain's end).
            deadline = time.monotonic() + 30
            while check is not None and not check() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_cancelled[0] = check is not None and check()
        elif check is key[0]:
            after[0] += 1

    registry.get("bert").worker.fault_hook = hook
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Explain.future(
                pb.ExplainRequest(
                    model="bert", inputs=[pb.Input(text=BIG)] * 20, sobol=pb.Sobol(n_points=9)
                ),
                timeout=60,
                metadata=[("x-request-id", "drain-me")],
            )
            assert entered.wait(30)
            with caplog.at_level(logging.WARNING, logger="explainserve.grpc.server"):
                running.stop(grace=0.5)
            assert call.exception() is not None
            assert call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    finally:
        registry.close()
    (record,) = [r for r in caplog.records if "still running" in r.getMessage()]
    message = record.getMessage()
    assert "cancelling 1 calls still running: Explain model=bert method=sobol" in message
    assert "request_id=drain-me" in message
    assert seen_cancelled[0]
    assert after[0] == 0  # no batch of the cancelled call ran after the one in flight
