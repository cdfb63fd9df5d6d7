"""Draining: every call the server took before the drain is answered, however many (each has a
handler thread from its start: none waits in a queue the drain does not see), calls beyond the
server's bound are refused at once; once `grace_seconds` are over, the calls still running are
named in the log and cancelled; their work stops before the worker's next batch."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from explainserve.explain.service import Explainer
from explainserve.grpc.interceptors import ServingState
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, start
from explainserve.launch import spawn_serve
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.jobs import Job
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

BIG = "The quick brown fox jumps over the lazy dog. " * 10
#: More concurrent calls than the 8 handler threads the server had: the 9th to 12th waited in
#: the thread pool's queue, and a drain refused them when they got a thread.
N_CALLS = 12


def small(i: int) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model="bert", inputs=[pb.Input(text=f"Call {i} is fine.")], occlusion=pb.Occlusion()
    )


def wait_in_flight(running: RunningServer, n: int) -> None:
    """Until `n` calls are in flight (their handlers started), 30 s at most."""
    deadline = time.monotonic() + 30
    while running.state.in_flight < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.state.in_flight == n, f"{running.state.in_flight} of {n} calls in flight"


@pytest.fixture
def gate(explainer: Explainer) -> Iterator[threading.Event]:
    """The bert worker's batches held until the event is set (at the end, whatever happens)."""
    worker = explainer.registry.get("bert").worker
    opened = threading.Event()

    def hold(_pieces: Sequence[tuple[Job, int, int]]) -> None:
        assert opened.wait(60)

    worker.fault_hook = hold
    yield opened
    worker.fault_hook = None
    opened.set()


def held_calls(running: RunningServer, channel: grpc.Channel, n: int) -> list[grpc.Future]:
    """`n` calls sent, once all are in flight (their handlers started, held by the gate)."""
    stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    calls = [stub.Explain.future(small(i), timeout=120) for i in range(n)]
    wait_in_flight(running, n)
    return calls


def test_every_call_taken_before_the_drain_is_answered(
    explainer: Explainer, gate: threading.Event
) -> None:
    """12 calls held in the model's worker (a gate on its first batch): each has a handler at
    once (all 12 in flight), the drain begins with all of them unanswered, a new call is then
    refused, and every held call is answered once the gate opens."""
    running = start(ServerOptions(port=0), explainer)
    stopper = threading.Thread(target=running.stop, args=(60.0,))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            calls = held_calls(running, channel, N_CALLS)  # a handler each, none queued
            stopper.start()
            deadline = time.monotonic() + 10
            while running.state.state != "draining" and time.monotonic() < deadline:
                time.sleep(0.001)
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as err:
                stub.Explain(small(N_CALLS), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in err.value.details()
            assert not any(call.done() for call in calls)  # the drain began before any reply
            gate.set()
            assert all(len(call.result().explanations) == 1 for call in calls)
    finally:
        gate.set()
        if stopper.ident is None:
            running.stop(grace=None)
        else:
            stopper.join(60)
    assert not stopper.is_alive()


def test_calls_beyond_the_bound_are_refused_at_once(
    explainer: Explainer, gate: threading.Event
) -> None:
    """With `max_concurrent_rpcs` calls held in the worker, one more is refused with
    RESOURCE_EXHAUSTED while they are still held: refused, not queued behind them."""
    running = start(ServerOptions(port=0, max_concurrent_rpcs=2), explainer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            calls = held_calls(running, channel, 2)
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as err:
                stub.Explain(small(2), timeout=30)  # queued, it would wait for the gate
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert not any(call.done() for call in calls)
            gate.set()
            assert all(len(call.result().explanations) == 1 for call in calls)
    finally:
        gate.set()
        running.stop(grace=None)


def test_a_call_admitted_before_the_drain_counts_when_its_handler_starts() -> None:
    """The serving state is checked as a call arrives; its handler may start a moment later,
    once the drain has begun: it is counted in (the drain waits for it), not refused. Only once
    the drain is over is a late handler refused."""
    state = ServingState(serving=True)
    state.set_draining()
    assert state.enter("admitted while serving")
    assert state.in_flight == 1
    assert not state.wait_idle(0)  # the drain waits for it
    state.leave()
    assert state.wait_idle(0)
    state.set_closed()
    assert not state.enter("admitted, started after the drain")


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
