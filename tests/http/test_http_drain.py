"""The drain covers HTTP: an HTTP call that reached the server before the drain is answered, new
HTTP work is refused with 503 while draining, a call still running once the grace period is over
is named in the log and cancelled; SIGTERM to `explainserve serve --http-port` drains and exits
0."""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from http_calls import request

from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.http.server import start_http
from explainserve.launch import spawn_serve
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.jobs import Job

BIG = "The quick brown fox jumps over the lazy dog. " * 10
SOBOL = {"model": "bert", "inputs": [{"text": BIG}] * 4, "sobol": {"nPoints": 4}}
SMALL = {"model": "bert", "inputs": [{"text": "Fine."}], "occlusion": {}}


@pytest.fixture
def registry(tiny_bert_dir: Path) -> Any:
    models = Registry()
    models.add(load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu")))
    yield models
    models.close()


def hold_first_batch(registry: Registry) -> tuple[threading.Event, threading.Event]:
    """The bert worker holds its first batch until `release` is set or its request is cancelled
    (as a batch running when the cancel comes ends); `entered` says it is held."""
    entered, release = threading.Event(), threading.Event()

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        if not entered.is_set():
            entered.set()
            cancelled = pieces[0][0].is_cancelled
            deadline = time.monotonic() + 60
            while not release.wait(0.01) and time.monotonic() < deadline:
                if cancelled is not None and cancelled():
                    return

    registry.get("bert").worker.fault_hook = hook
    return entered, release


def test_an_http_call_in_flight_is_answered_and_new_work_refused(registry: Registry) -> None:
    running = start(
        ServerOptions(port=0, http_port=0), Explainer(registry), companions=[start_http]
    )
    port = running.companions[0].port  # type: ignore[attr-defined]
    entered, release = hold_first_batch(registry)
    replies: list[Any] = []
    call = threading.Thread(
        target=lambda: replies.append(request(port, "POST", "/v1/explainserve/Explain", SOBOL))
    )
    call.start()
    assert entered.wait(30)
    stopper = threading.Thread(target=running.stop, args=(30.0,))
    stopper.start()
    deadline = time.monotonic() + 30
    while running.state.state != "draining":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    refused = request(port, "POST", "/v1/explainserve/Explain", SMALL)
    assert refused.status == 503
    assert "draining" in refused.json()["message"]
    assert request(port, "GET", "/v2/health/ready").status == 503
    assert request(port, "GET", "/v2/health/live").status == 200
    release.set()
    call.join(60)
    stopper.join(60)
    (reply,) = replies
    assert reply.status == 200, reply.body
    assert len(reply.json()["explanations"]) == 4
    with pytest.raises(ConnectionRefusedError):  # stopped once the drain is over
        request(port, "GET", "/v2/health/live", timeout=5)


def test_a_call_past_the_grace_period_is_named_and_cancelled(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    running = start(
        ServerOptions(port=0, http_port=0), Explainer(registry), companions=[start_http]
    )
    port = running.companions[0].port  # type: ignore[attr-defined]
    entered, release = hold_first_batch(registry)
    replies: list[Any] = []

    def call() -> None:
        replies.append(
            request(
                port, "POST", "/v1/explainserve/Explain", SOBOL, headers={"x-request-id": "late"}
            )
        )

    thread = threading.Thread(target=call)
    thread.start()
    assert entered.wait(30)
    try:
        with caplog.at_level(logging.WARNING, logger="explainserve.grpc.server"):
            running.stop(grace=0.5)
    finally:
        release.set()
    thread.join(60)
    (record,) = [r for r in caplog.records if "still running" in r.getMessage()]
    message = record.getMessage()
    assert "cancelling 1 calls still running: Explain model=bert method=sobol" in message
    assert "request_id=late" in message
    # The client got its answer or lost its connection: never a hang.
    assert not thread.is_alive()


def queued_rows(metrics_port: int) -> float:
    """The bert worker's queued rows, from the server's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(r'explainserve_queue_rows\{model="bert"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_sigterm_drains_http_calls_and_exits(tiny_bert_dir: Path) -> None:
    proc, _ = spawn_serve(
        [
            "--model",
            f"bert={tiny_bert_dir}",
            "--port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--device",
            "cpu",
            "--grace-seconds",
            "120",
        ],
        timeout=120,
    )
    try:
        assert proc.stdout is not None
        metrics = re.search(r"metrics on [\d.]+:(\d+)", proc.stdout.readline())
        served = re.search(r"explainserve http on [\d.]+:(\d+)", proc.stdout.readline())
        assert metrics is not None
        assert served is not None
        port = int(served.group(1))
        body = {"model": "bert", "inputs": [{"text": BIG}] * 16, "sobol": {"nPoints": 32}}
        replies: list[Any] = []
        call = threading.Thread(
            target=lambda: replies.append(
                request(port, "POST", "/v1/explainserve/Explain", body, timeout=300)
            )
        )
        call.start()
        # The call has reached the server once its rows are queued.
        deadline = time.monotonic() + 60
        while queued_rows(int(metrics.group(1))) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert call.is_alive()
        proc.send_signal(signal.SIGTERM)
        call.join(300)
        assert proc.wait(timeout=300) == 0
        (reply,) = replies
        assert reply.status == 200, reply.body
        assert len(json.loads(reply.body)["explanations"]) == 16
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_not_ready_from_the_first_moment_of_a_drain(registry: Registry) -> None:
    """With a drain delay, readiness turns 503 at once (probes stop sending) while new calls are
    still served until the delay is over."""
    running = start(
        ServerOptions(port=0, http_port=0), Explainer(registry), companions=[start_http]
    )
    port = running.companions[0].port  # type: ignore[attr-defined]
    stopper = threading.Thread(target=running.stop, args=(30.0, 5.0))
    stopper.start()
    try:
        deadline = time.monotonic() + 5
        while request(port, "GET", "/v2/health/ready").status != 503:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert running.state.state == "serving"  # the delay: calls are still taken
        assert request(port, "POST", "/v1/explainserve/Explain", SMALL).status == 200
    finally:
        stopper.join(60)
