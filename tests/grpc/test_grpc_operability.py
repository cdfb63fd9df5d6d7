"""Operability of a live server: request ids (metadata, INTERNAL errors, log records), the
Prometheus endpoint, NOT_SERVING until ready, draining (UNAVAILABLE for new work, in-flight
work finishes, health answers NOT_SERVING), keepalive options."""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from explainserve.explain.service import Explainer
from explainserve.grpc.interceptors import RequestIdFilter
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, channel_options, start
from explainserve.logs import JsonFormatter
from explainserve.scheduling.jobs import Job
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


def sentences(i: int, n: int) -> str:
    """`n` sentences, "quick" made "slow" in those of `i`'s set bits: inputs of one length that
    differ (identical inputs of a request run once)."""
    return "".join(
        f"The {'slow' if i >> k & 1 else 'quick'} brown fox jumps over the lazy dog. "
        for k in range(n)
    )


SMALL = pb.ExplainRequest(model="bert", inputs=[pb.Input(text="Fine.")], occlusion=pb.Occlusion())
HEAVY = pb.ExplainRequest(
    model="bert",
    inputs=[pb.Input(text=sentences(i, 4)) for i in range(6)],
    sobol=pb.Sobol(n_points=8),
    granularity=pb.GRANULARITY_TOKEN,
)
# Many seconds of work if nothing stops it.
HUGE = pb.ExplainRequest(
    model="bert",
    inputs=[pb.Input(text=sentences(i, 10)) for i in range(40)],
    sobol=pb.Sobol(n_points=9),
    granularity=pb.GRANULARITY_TOKEN,
)


def connect(running: RunningServer) -> tuple[grpc.Channel, explain_pb2_grpc.ExplainServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    return channel, explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]


def health_of(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_request_ids_in_metadata_errors_and_logs(
    stub: explain_pb2_grpc.ExplainServiceStub,
    explainer: Explainer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="explainserve.access")
    _, call = stub.Explain.with_call(SMALL, timeout=30)
    rid = dict(call.initial_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    _, call = stub.Explain.with_call(SMALL, timeout=30, metadata=[("x-request-id", "client-7")])
    assert dict(call.initial_metadata())["x-request-id"] == "client-7"
    # The access log line: structured fields, and the request id through the filter.
    (record,) = [r for r in caplog.records if getattr(r, "rpc", None) == "Explain"][-1:]
    assert (record.model, record.method, record.code) == ("bert", "occlusion", "OK")  # type: ignore[attr-defined]
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["rpc"] == "Explain"
    assert line["code"] == "OK"
    assert line["ms"] > 0
    assert "request_id" in line
    # An INTERNAL error names the request id the client got in the metadata.
    worker = explainer.registry.get("bert").worker

    def boom(_pieces: Sequence[tuple[Job, int, int]]) -> None:
        raise RuntimeError("injected")

    worker.fault_hook = boom
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Explain(SMALL, timeout=30)
    finally:
        worker.fault_hook = None
    assert err.value.code() == grpc.StatusCode.INTERNAL
    rid = dict(err.value.initial_metadata())["x-request-id"]  # type: ignore[attr-defined]
    assert f"request id {rid}" in err.value.details()


@pytest.fixture
def metered(explainer: Explainer) -> Iterator[RunningServer]:
    running = start(ServerOptions(port=0, metrics_port=0), explainer)
    yield running
    running.stop(grace=None)
    for model in explainer.registry.list():
        model.worker.observer = None


def scrape(running: RunningServer) -> str:
    url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_prometheus_metrics(metered: RunningServer) -> None:
    channel, stub = connect(metered)
    with channel:
        stub.Explain(SMALL, timeout=30)
        gradient = pb.ExplainRequest()
        gradient.CopyFrom(SMALL)
        gradient.saliency.SetInParent()
        stub.Explain(gradient, timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Explain(
                pb.ExplainRequest(model="nope", inputs=SMALL.inputs, occlusion=pb.Occlusion()),
                timeout=30,
            )
        list(
            stub.GetActivations(
                pb.GetActivationsRequest(model="gpt2", inputs=SMALL.inputs), timeout=30
            )
        )
    text = scrape(metered)
    for line in [
        'explainserve_requests_total{code="OK",method="occlusion",model="bert",protocol="grpc",'
        'rpc="Explain"} 1.0',
        'explainserve_requests_total{code="OK",method="saliency",model="bert",protocol="grpc",'
        'rpc="Explain"} 1.0',
        'explainserve_requests_total{code="NOT_FOUND",method="occlusion",model="nope",'
        'protocol="grpc",rpc="Explain"} 1.0',
        'explainserve_requests_total{code="OK",method="",model="gpt2",protocol="grpc",'
        'rpc="GetActivations"} 1.0',
        'explainserve_queue_rows{model="bert"} 0.0',
    ]:
        assert line in text, line
    for pattern in [
        r'explainserve_request_seconds_count\{method="occlusion",model="bert",protocol="grpc",'
        r'rpc="Explain"\} 1',
        r'explainserve_queue_seconds_count\{kind="forward",model="bert"\} [1-9]',
        r'explainserve_compute_seconds_count\{kind="gradient",model="bert"\} [1-9]',
        r'explainserve_compute_seconds_count\{kind="activation",model="gpt2"\} [1-9]',
        r'explainserve_batch_fill_ratio_bucket\{kind="forward",le="0.1",model="bert"\} [1-9]',
        r'explainserve_batch_padding_ratio_count\{kind="forward",model="bert"\} [1-9]',
        r'explainserve_serialize_seconds_count\{protocol="grpc",rpc="Explain"\} [1-9]',
        r'explainserve_forward_passes_total\{model="bert"\} [1-9]',
        r'explainserve_oom_splits_total\{model="bert"\} \d',
        r'explainserve_tokens_run_total\{model="bert"\} [1-9]',
        r'explainserve_naive_tokens_total\{model="bert"\} [1-9]',
    ]:
        assert re.search(pattern, text), pattern


def test_latency_metrics_by_priority_and_batch_cost(metered: RunningServer) -> None:
    """Each request's queue wait, labelled by its priority; batch times; the cost the worker
    learnt and its time cap (after the 8 batches its first fit needs: 5 requests of 2 rounds)."""
    channel, stub = connect(metered)
    background = pb.ExplainRequest(priority=pb.PRIORITY_BATCH)
    background.MergeFrom(SMALL)
    with channel:
        for _ in range(4):
            stub.Explain(SMALL, timeout=30)
        stub.Explain(background, timeout=30)
    text = scrape(metered)
    for pattern in [
        r'explainserve_request_queue_seconds_count\{model="bert",priority="interactive"\} [1-9]',
        r'explainserve_request_queue_seconds_count\{model="bert",priority="batch"\} [1-9]',
        r'explainserve_batch_seconds_count\{kind="forward",model="bert"\} [1-9]',
        r'explainserve_batch_seconds_bucket\{kind="forward",le="0.1",model="bert"\} \d',
        r'explainserve_batch_cost_seconds_per_token\{kind="forward",model="bert"\} \d',
        r'explainserve_batch_cost_intercept_seconds\{kind="forward",model="bert"\} \d',
    ]:
        assert re.search(pattern, text), pattern


def test_not_serving_until_ready(explainer: Explainer) -> None:
    running = start(ServerOptions(port=0), explainer, serving=False)
    try:
        channel, stub = connect(running)
        with channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="explainserve.v1.ExplainService"),
                timeout=10,
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert health_of(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                stub.Explain(SMALL, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "starting" in err.value.details()
            running.set_serving()
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            assert stub.Explain(SMALL, timeout=30).explanations
    finally:
        running.stop(grace=None)


def test_drain_refuses_new_work_and_finishes_in_flight(explainer: Explainer) -> None:
    """A call held in the worker (its first batch waits on a gate) while the server drains: a
    new call is refused with UNAVAILABLE while the held one still runs (it is not queued
    behind it), health says NOT_SERVING, and the held call then finishes."""
    worker = explainer.registry.get("bert").worker
    entered, gate = threading.Event(), threading.Event()

    def hold(_pieces: Sequence[tuple[Job, int, int]]) -> None:
        entered.set()
        assert gate.wait(60)

    running = start(ServerOptions(port=0), explainer)
    channel, stub = connect(running)
    worker.fault_hook = hold
    stopper = threading.Thread(target=running.stop, args=(30.0,))
    try:
        with channel:
            in_flight = stub.Explain.future(HEAVY, timeout=60)
            assert entered.wait(30)
            stopper.start()
            deadline = time.monotonic() + 10
            while running.state.state != "draining" and time.monotonic() < deadline:
                time.sleep(0.001)
            with pytest.raises(grpc.RpcError) as err:
                stub.Explain(SMALL, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in err.value.details()
            assert health_of(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not in_flight.done()  # refused while the held call still runs
            worker.fault_hook = None
            gate.set()
            reply = in_flight.result()
            assert len(reply.explanations) == 6
    finally:
        worker.fault_hook = None
        gate.set()
        if stopper.ident is None:  # failed before the drain began
            running.stop(grace=None)
        else:
            stopper.join(30)
    assert not stopper.is_alive()


def test_keepalive_and_connection_age_options() -> None:
    options = dict(
        channel_options(
            ServerOptions(
                keepalive_time_s=30,
                keepalive_timeout_s=5,
                min_client_ping_interval_s=10,
                keepalive_permit_without_calls=True,
                max_connection_idle_s=600,
                max_connection_age_s=1800,
                max_connection_age_grace_s=60,
            )
        )
    )
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_connection_idle_ms"] == 600_000
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 60_000
    assert "grpc.keepalive_time_ms" not in dict(channel_options(ServerOptions()))


def test_connections_are_closed_at_their_max_age(explainer: Explainer) -> None:
    """The server closes a connection once it is `max_connection_age_s` old (a GOAWAY): the
    client's channel, READY on it, leaves READY without the client doing anything. The client
    reconnects transparently; calls keep working across the closes."""
    running = start(
        ServerOptions(port=0, max_connection_age_s=0.2, max_connection_age_grace_s=1),
        explainer,
    )
    try:
        channel, stub = connect(running)
        with channel:
            states: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
            channel.subscribe(states.put)
            for _ in range(2):  # two connections, each closed by the server
                assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models
                seen = states.get(timeout=10)
                while seen != grpc.ChannelConnectivity.READY:
                    seen = states.get(timeout=10)
                # Nothing else closes an idle connection within minutes (no idle bound here,
                # the channel's own idle timeout is 30 min): the wait only bounds a failure.
                try:
                    closed = states.get(timeout=30)
                except queue.Empty:
                    pytest.fail("the connection is still open well past its max age")
                assert closed != grpc.ChannelConnectivity.READY
            channel.unsubscribe(states.put)
            assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    finally:
        running.stop(grace=None)


def test_a_missed_deadline_is_counted_as_deadline_exceeded(metered: RunningServer) -> None:
    channel, stub = connect(metered)
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            stub.Explain(HUGE, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    label = 'explainserve_requests_total{code="DEADLINE_EXCEEDED",method="sobol",model="bert"'
    deadline = time.monotonic() + 10  # the handler notices at its next batch boundary
    while label not in scrape(metered) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert label in scrape(metered)
