"""Draining: once `grace_seconds` are over, the calls still running are named in the log and
cancelled; their work stops before the worker's next batch."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from explainserve.explain.service import Explainer
from explainserve.grpc.server import ServerOptions, start
from explainserve.launch import spawn_serve
from explainserve.models.registry import ModelConfig, Registry, load_model
from explainserve.scheduling.jobs import Job
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


def test_sigterm_with_a_call_that_cannot_finish_cancels_it_and_exits(tiny_bert_dir: Path) -> None:
    """A GetActivations client that stops reading keeps its call in flight for good; SIGTERM with
    a 1 s grace logs it, cancels it and the process exits 0."""
    proc, port = spawn_serve(
        [
            "--model",
            f"bert={tiny_bert_dir}",
            "--port",
            "0",
            "--device",
            "cpu",
            "--grace-seconds",
            "1",
        ],
        timeout=120,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            # 5,000 inputs of all-token activations are about 65 MB: far beyond what the
            # transport buffers for a client that stopped reading.
            stalled = stub.GetActivations(
                pb.GetActivationsRequest(
                    model="bert",
                    inputs=[pb.Input(text=f"{BIG} {i}") for i in range(5000)],
                    split_points=["bert.encoder.layer.1"],
                    granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
                ),
                metadata=[("x-request-id", "never-read")],
            )
            # The client reads the first chunk, then stops reading.
            assert next(stalled).input_start == 0
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
        assert proc.stdout is not None
        log = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "cancelling 1 calls still running: GetActivations model=bert" in log
    assert "request_id=never-read" in log
