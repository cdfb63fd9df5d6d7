"""What the gRPC side promises of each call, on HTTP: Prometheus metrics labelled by protocol,
the access log line, W3C traceparent continuing the caller's trace with the worker's spans under
it, and a client that goes away cancelling its queued work (batches counted, not seconds)."""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from http_calls import HttpLive
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from explainserve import tracing
from explainserve.grpc.interceptors import RequestIdFilter
from explainserve.scheduling.jobs import Job

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
BIG = "The quick brown fox jumps over the lazy dog. " * 10
EXPLAIN = {"model": "bert", "inputs": [{"text": "The food was cold."}], "occlusion": {}}


def scrape(live: HttpLive) -> str:
    url = f"http://127.0.0.1:{live.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def count(text: str, line: str) -> float:
    """The value of the sample `line` (its name and labels) in `text`, 0 when absent."""
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_labelled_by_protocol(live: HttpLive) -> None:
    from explainserve.v1 import explain_pb2 as pb

    total = "explainserve_requests_total"
    ok_http = f'{total}{{code="OK",method="occlusion",model="bert",protocol="http",rpc="Explain"}}'
    ok_grpc = f'{total}{{code="OK",method="occlusion",model="bert",protocol="grpc",rpc="Explain"}}'
    missing = f'{total}{{code="NOT_FOUND",method="",model="nope",protocol="http",rpc="ModelInfer"}}'
    explain = (
        f'{total}{{code="OK",method="occlusion",model="bert",protocol="http",rpc="KServeExplain"}}'
    )
    before = scrape(live)
    assert live.post("/v1/explainserve/Explain", EXPLAIN).status == 200
    live.stub.Explain(
        pb.ExplainRequest(model="bert", inputs=[pb.Input(text="x")], occlusion=pb.Occlusion()),
        timeout=30,
    )
    infer = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    assert live.post("/v2/models/nope/infer", infer).status == 404
    assert live.post("/v1/models/bert:explain", {"instances": ["x"]}).status == 200
    after = scrape(live)
    for line in (ok_http, ok_grpc, missing, explain):
        assert count(after, line) == count(before, line) + 1, line
    assert re.search(
        r'explainserve_request_seconds_count\{method="occlusion",model="bert",protocol="http",'
        r'rpc="Explain"\} [1-9]',
        after,
    )
    assert re.search(
        r'explainserve_serialize_seconds_count\{protocol="http",rpc="Explain"\} [1-9]', after
    )


def test_the_access_log_line(live: HttpLive, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="explainserve.access")
    reply = live.post("/v1/explainserve/Explain", EXPLAIN, headers={"x-request-id": "log-me"})
    assert reply.status == 200  # logged on the handler thread before the reply went out
    (record,) = [r for r in caplog.records if getattr(r, "rpc", None) == "Explain"][-1:]
    RequestIdFilter().filter(record)
    assert record.request_id == "log-me"  # type: ignore[attr-defined]
    assert (record.model, record.method, record.code, record.protocol) == (  # type: ignore[attr-defined]
        "bert",
        "occlusion",
        "OK",
        "http",
    )


def test_traceparent_continues_the_trace(live: HttpLive, spans: InMemorySpanExporter) -> None:
    reply = live.post(
        "/v1/explainserve/Explain",
        EXPLAIN,
        headers={"traceparent": TRACEPARENT, "x-request-id": "traced"},
    )
    assert reply.status == 200
    deadline = time.monotonic() + 30
    while True:
        finished = list(spans.get_finished_spans())
        names = {s.name for s in finished}
        if {"POST /v1/explainserve/Explain", tracing.BATCH_SPAN} <= names:
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.01)
    (server,) = [s for s in finished if s.name == "POST /v1/explainserve/Explain"]
    assert server.context.trace_id == TRACE_ID
    assert server.parent is not None
    assert server.parent.span_id == PARENT_ID
    attributes = dict(server.attributes or {})
    assert attributes["http.route"] == "/v1/explainserve/Explain"
    assert attributes["http.response.status_code"] == 200
    assert attributes["explainserve.request_id"] == "traced"
    batches = [s for s in finished if s.name == tracing.BATCH_SPAN]
    assert batches
    assert all(b.parent is not None and b.parent.span_id == server.context.span_id for b in batches)


@pytest.fixture
def gate(live: HttpLive) -> Iterator[dict[str, Any]]:
    """Holds the bert worker's first batch of the next request until the request is cancelled,
    then counts that request's batches that still run."""
    worker = live.explainer.registry.get("bert").worker
    state: dict[str, Any] = {"entered": threading.Event(), "key": None, "after": 0, "seen": False}

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        mine = [job.is_cancelled for job, _, _ in pieces if job.is_cancelled is not None]
        if state["key"] is None and mine:
            state["key"] = mine[0]
            state["entered"].set()
            deadline = time.monotonic() + 30
            while not mine[0]() and time.monotonic() < deadline:
                time.sleep(0.01)
            state["seen"] = mine[0]()
        elif state["key"] is not None and any(
            job.is_cancelled is state["key"] for job, _, _ in pieces
        ):
            state["after"] += 1

    worker.fault_hook = hook
    yield state
    worker.fault_hook = None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/explainserve/Explain",
            {"model": "bert", "inputs": [{"text": BIG}] * 20, "sobol": {"nPoints": 9}},
        ),
        (
            "/v1/explainserve/GetActivations",
            {
                "model": "bert",
                "inputs": [{"text": f"{BIG} {i}"} for i in range(300)],
                "granularity": "ACTIVATION_GRANULARITY_ALL_TOKENS",
                "splitPoints": ["bert.encoder.layer.1"],
            },
        ),
        (
            "/v1/models/bert:explain",
            {"instances": [BIG] * 20, "parameters": {"sobol": {"nPoints": 9}}},
        ),
    ],
    ids=["Explain", "GetActivations", "KServeExplain"],
)
def test_a_client_that_goes_away_cancels_its_queued_work(
    live: HttpLive, gate: dict[str, Any], path: str, body: Any
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=60)
    connection.request("POST", path, body=json.dumps(body))
    assert gate["entered"].wait(30)
    connection.close()  # the client goes away while its first batch runs
    deadline = time.monotonic() + 30
    while not gate["seen"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate["seen"]  # the server saw the call cancelled
    worker = live.explainer.registry.get("bert").worker
    while worker.queued_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.queued_rows == 0  # its queued rows were dropped, not run
    assert live.post("/v1/explainserve/Explain", EXPLAIN).status == 200
    assert gate["after"] == 0  # no batch of it ran after the one in flight


def test_connections_send_without_waiting_for_acks(live: HttpLive) -> None:
    """TCP_NODELAY on the server's connections: a reply's header and body segments do not wait
    for the client's delayed ACK (which cost about 40 ms a call before)."""
    import socket

    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        connection.request("GET", "/v2/health/live")
        assert connection.getresponse().read() == b'{"live":true}'
        server = live.http._server  # uvicorn's
        sockets = [c.transport.get_extra_info("socket") for c in server.server_state.connections]
        assert sockets
        for sock in sockets:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        connection.close()
