"""OpenTelemetry tracing through the live server, captured with the SDK's in-memory exporter: a
call with a W3C `traceparent` continues the caller's trace with the RPC, queue, batch and
serialization spans; log lines carry the request id with the trace id; the environment rule
that turns export on."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from explainserve import tracing
from explainserve.grpc.interceptors import RequestIdFilter
from explainserve.oip import grpc_predict_v2_pb2 as oip
from explainserve.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
TEXTS = ["The food was cold.", "A wonderful, warm evening with friends!", "Fine."]


def wait_for(
    exporter: InMemorySpanExporter, done: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """The finished spans once `done` says they are all there. The worker ends a batch's spans
    just after the batch's results are handed over, so the reply may reach the client first:
    poll (bounded; no timing is asserted)."""
    deadline = time.monotonic() + 60
    while True:
        finished = list(exporter.get_finished_spans())
        if done(finished) or time.monotonic() > deadline:
            return finished
        time.sleep(0.01)


def named(finished: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def request_rows(finished: list[ReadableSpan]) -> int:
    """This trace's rows over the batch spans."""
    return sum(
        int(s.attributes["explainserve.batch.request_rows"])  # type: ignore[index, arg-type]
        for s in named(finished, "explainserve.batch")
    )


def token_count(live_server: Any, text: str) -> int:
    tokenizer = live_server.explainer.registry.get("bert").tokenizer
    return len(tokenizer(text)["input_ids"])


def test_get_activations_trace(
    spans: InMemorySpanExporter, stub: explain_pb2_grpc.ExplainServiceStub, live_server: Any
) -> None:
    chunks = list(
        stub.GetActivations(
            pb.GetActivationsRequest(
                model="bert",
                inputs=[pb.Input(text=t) for t in TEXTS],
                split_points=["bert.encoder.layer.1"],
                granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
            ),
            metadata=[("traceparent", TRACEPARENT), ("x-request-id", "trace-me")],
            timeout=60,
        )
    )
    rows = len(TEXTS)
    finished = wait_for(spans, lambda f: request_rows(f) >= rows)
    (rpc,) = named(finished, "explainserve.v1.ExplainService/GetActivations")
    assert rpc.kind == trace.SpanKind.SERVER
    assert rpc.context.trace_id == TRACE_ID
    assert rpc.parent is not None
    assert rpc.parent.span_id == PARENT_ID
    assert rpc.parent.is_remote
    attributes = dict(rpc.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "explainserve.v1.ExplainService"
    assert attributes["rpc.method"] == "GetActivations"
    assert attributes["rpc.grpc.status_code"] == "OK"
    assert attributes["explainserve.request_id"] == "trace-me"
    assert attributes["explainserve.model"] == "bert"

    def children(name: str) -> list[ReadableSpan]:
        out = named(finished, name)
        for span in out:
            assert span.context.trace_id == TRACE_ID
            assert span.parent is not None
            assert span.parent.span_id == rpc.context.span_id
        return out

    queue = children("explainserve.queue")
    assert sum(s.attributes["explainserve.rows"] for s in queue) == rows  # type: ignore[index, misc]
    batches = children("explainserve.batch")
    # Alone on the server: every row of its batches is this request's, every token one of its.
    tokens = sum(token_count(live_server, t) for t in TEXTS)
    assert sum(s.attributes["explainserve.batch.tokens"] for s in batches) == tokens  # type: ignore[index, misc]
    for batch in batches:
        a = dict(batch.attributes or {})
        assert a["explainserve.batch.kind"] == "activation"
        assert a["explainserve.batch.rows"] == a["explainserve.batch.request_rows"]
        assert a["explainserve.batch.padding"] == (
            a["explainserve.batch.padded_tokens"] - a["explainserve.batch.tokens"]  # type: ignore[operator]
        )
        assert a["explainserve.batch.padding"] >= 0  # type: ignore[operator]
        assert batch.start_time is not None
        assert rpc.start_time is not None
        assert batch.start_time >= rpc.start_time
    # One serialization per message sent, inside the RPC.
    assert len(children("explainserve.serialize")) == len(chunks)


def test_model_infer_trace_and_a_failed_call(spans: InMemorySpanExporter, live_server: Any) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(live_server.channel)  # type: ignore[no-untyped-call]
    text = oip.ModelInferRequest.InferInputTensor(
        name="text",
        datatype="BYTES",
        shape=[2],
        contents=oip.InferTensorContents(bytes_contents=[b"Fine.", b"Not fine."]),
    )
    stub.ModelInfer(
        oip.ModelInferRequest(model_name="bert", inputs=[text]),
        metadata=[("traceparent", TRACEPARENT)],
        timeout=60,
    )
    finished = wait_for(spans, lambda f: request_rows(f) >= 2)
    (rpc,) = named(finished, "inference.GRPCInferenceService/ModelInfer")
    assert rpc.context.trace_id == TRACE_ID
    batches = named(finished, "explainserve.batch")
    for batch in batches:
        assert batch.parent is not None
        assert batch.parent.span_id == rpc.context.span_id
    assert request_rows(finished) == 2
    spans.clear()

    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(
            oip.ModelInferRequest(model_name="nope", inputs=[text]),
            metadata=[("traceparent", TRACEPARENT)],
            timeout=60,
        )
    (failed,) = spans.get_finished_spans()
    assert failed.name == "inference.GRPCInferenceService/ModelInfer"
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["rpc.grpc.status_code"] == "NOT_FOUND"


def test_without_traceparent_a_new_trace_starts(
    spans: InMemorySpanExporter, stub: explain_pb2_grpc.ExplainServiceStub
) -> None:
    stub.ListModels(pb.ListModelsRequest(), timeout=10)
    finished = list(spans.get_finished_spans())
    (rpc,) = named(finished, "explainserve.v1.ExplainService/ListModels")
    assert rpc.parent is None
    assert rpc.context.trace_id not in (0, TRACE_ID)
    (serialize,) = named(finished, "explainserve.serialize")
    assert serialize.parent is not None
    assert serialize.parent.span_id == rpc.context.span_id


def test_a_shared_batch_gives_each_request_its_batch_span(spans: InMemorySpanExporter) -> None:
    """Two requests' jobs in one batch: one batch span in each request's trace, with its own
    rows; the batch's totals on both. (The worker's calls, made here directly: a live server
    puts two requests in one batch only by timing.)"""

    class Job:
        def __init__(self, n_rows: int, length: int) -> None:
            self.n_rows = n_rows
            self.length = length

    ActivationJob = type("ActivationJob", (Job,), {})  # noqa: N806 (named like the worker's)
    tracer = trace.get_tracer("test", tracer_provider=TracerProvider())
    jobs: dict[str, list[Any]] = {}
    parents = {}
    for name, sizes in (("a", [(2, 5), (1, 3)]), ("b", [(4, 5)])):
        with tracer.start_as_current_span(name) as span:
            parents[name] = span.get_span_context()
            jobs[name] = [ActivationJob(n, length) for n, length in sizes]
            tracing.jobs_submitted(jobs[name])
    pieces = [(jobs["a"][0], 0, 2), (jobs["b"][0], 0, 3), (jobs["a"][1], 0, 1)]
    tracing.batch_ran(pieces, time.perf_counter())
    tracing.batch_ran([(jobs["b"][0], 3, 4)], time.perf_counter())
    finished = list(spans.get_finished_spans())
    batches = named(finished, "explainserve.batch")
    assert len(batches) == 3
    by_trace: dict[int, list[dict[str, Any]]] = {}
    for span in batches:
        assert span.parent is not None
        by_trace.setdefault(span.parent.span_id, []).append(dict(span.attributes or {}))
    (first_a,) = by_trace[parents["a"].span_id]
    assert first_a["explainserve.batch.request_rows"] == 3
    assert first_a["explainserve.batch.rows"] == 6
    assert first_a["explainserve.batch.tokens"] == 2 * 5 + 3 * 5 + 1 * 3
    assert first_a["explainserve.batch.padded_tokens"] == 6 * 5
    assert first_a["explainserve.batch.padding"] == 30 - 28
    assert first_a["explainserve.batch.kind"] == "activation"
    in_b = by_trace[parents["b"].span_id]
    assert [b["explainserve.batch.request_rows"] for b in in_b] == [3, 1]
    # A queue span per submission, ended by its first batch only.
    queue = named(finished, "explainserve.queue")
    assert sorted(dict(q.attributes or {})["explainserve.rows"] for q in queue) == [3, 4]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)


@pytest.mark.parametrize("traced", [True, False], ids=["tracing-on", "tracing-off"])
def test_log_lines_carry_request_and_trace_ids(
    request: pytest.FixtureRequest, stub: explain_pb2_grpc.ExplainServiceStub, traced: bool
) -> None:
    """The access log line has the request id and the caller's trace id, whether or not spans
    are exported (off: the trace id comes from the traceparent alone)."""
    if traced:
        request.getfixturevalue("spans")
    handler = _Records()
    logger = logging.getLogger("explainserve.access")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        stub.GetModel(
            pb.GetModelRequest(name="bert"),
            metadata=[("traceparent", TRACEPARENT), ("x-request-id", "log-me")],
            timeout=10,
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    (record,) = [r for r in handler.records if getattr(r, "request_id", "") == "log-me"]
    assert record.trace_id == f"{TRACE_ID:032x}"  # type: ignore[attr-defined]
    span_id = record.span_id  # type: ignore[attr-defined]
    # Tracing on: the RPC's own span; off: the caller's.
    assert (span_id != f"{PARENT_ID:016x}") is traced


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:1"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_the_environment_rule(environ: dict[str, str], exporters: list[str]) -> None:
    assert tracing.exporters_from_env(environ) == exporters


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "unknown exporter 'jaeger'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "over gRPC",
        ),
    ],
)
def test_the_environment_rule_refuses_what_it_cannot_do(
    environ: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        tracing.exporters_from_env(environ)


def test_configure_from_env_installs_an_otlp_exporter() -> None:
    assert tracing.configure_from_env({}) is None
    assert tracing.tracer() is None
    provider = tracing.configure_from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "sidecar"}
    )
    try:
        assert provider is not None
        assert tracing.tracer() is not None
        assert provider.resource.attributes["service.name"] == "sidecar"
    finally:
        tracing.uninstall()
    assert tracing.tracer() is None
