"""ExplainService as JSON: every RPC of the descriptor at POST /v1/explainserve/<Rpc> answers what
gRPC answers for the same request (proto3's JSON mapping of the same message), streams as NDJSON
or server-sent events, and errors as a google.rpc.Status with grpc-gateway's HTTP status."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from http_calls import MAX_BODY_BYTES, SAMPLES, HttpLive, grpc_json

from explainserve.grpc.status import HTTP_STATUS_OF
from explainserve.http.jsonrpc import SERVICE
from explainserve.scheduling.jobs import Job
from explainserve.v1 import explain_pb2 as pb

BIG = "The quick brown fox jumps over the lazy dog. " * 10
HUGE = pb.ExplainRequest(
    model="bert", inputs=[pb.Input(text=BIG)] * 20, sobol=pb.Sobol(n_points=9), isolate_batches=True
)
#: What differs between two identical calls: time taken, and the batch sizes measured so far.
VARYING = {"elapsedMs", "batching"}


def without_varying(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_varying(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [without_varying(v) for v in value]
    return value


def grpc_reply(live: HttpLive, rpc: str, request: Any) -> Any:
    """What gRPC answers to `request`, in the JSON form (a list for a stream)."""
    method = SERVICE.methods_by_name[rpc]
    reply = getattr(live.stub, rpc)(request, timeout=60)
    if method.server_streaming:
        return [{"result": grpc_json(m)} for m in reply]
    return grpc_json(reply)


def test_every_rpc_has_a_sample() -> None:
    assert set(SAMPLES) == {m.name for m in SERVICE.methods}


@pytest.mark.parametrize("rpc", [m.name for m in SERVICE.methods])
def test_every_rpc_answers_what_grpc_answers(live: HttpLive, rpc: str) -> None:
    request = SAMPLES[rpc]
    reply = live.post(f"/v1/explainserve/{rpc}", json_format.MessageToJson(request))
    assert reply.status == 200, reply.body
    expected = grpc_reply(live, rpc, request)
    if SERVICE.methods_by_name[rpc].server_streaming:
        assert reply.headers["content-type"] == "application/x-ndjson"
        got = reply.lines()
        assert len(got) >= 1
    else:
        assert reply.headers["content-type"] == "application/json"
        got = reply.json()
    assert without_varying(got) == without_varying(expected)


def test_snake_case_field_names_and_enum_numbers_are_read_too(live: HttpLive) -> None:
    request = SAMPLES["Explain"]
    snake = json_format.MessageToDict(
        request, preserving_proto_field_name=True, use_integers_for_enums=True
    )
    assert "isolate_batches" in snake
    camel = live.post("/v1/explainserve/Explain", json_format.MessageToJson(request)).json()
    assert without_varying(live.post("/v1/explainserve/Explain", snake).json()) == (
        without_varying(camel)
    )


def test_the_json_mapping_canonical_forms(live: HttpLive) -> None:
    """64-bit integers are strings, enums are names, bytes are base64: GetActivations' tensors
    decode to gRPC's float32 rows."""
    (line,) = live.post(
        "/v1/explainserve/GetActivations", json_format.MessageToJson(SAMPLES["GetActivations"])
    ).lines()
    chunk = line["result"]
    assert chunk["rowOffsets"] == ["0", "6"]  # six words
    (grpc_chunk,) = live.stub.GetActivations(SAMPLES["GetActivations"], timeout=60)
    for got, want in zip(chunk["activations"], grpc_chunk.activations, strict=True):
        values = np.frombuffer(base64.b64decode(got["values"]["data"]), "<f4")
        assert got["values"]["shape"] == [str(d) for d in want.values.shape]
        np.testing.assert_array_equal(values, np.frombuffer(want.values.data, "<f4"))
    listed = live.post("/v1/explainserve/GetModel", {"name": "bert"}).json()
    assert listed["model"]["replacementTokenId"] == "103"
    assert live.post("/v1/explainserve/ListModels").status == 200  # an empty body is {}


def test_a_concept_target_over_json(live: HttpLive) -> None:
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text="The food was cold.")],
        occlusion=pb.Occlusion(),
        concept_target=pb.ConceptTarget(
            concepts=pb.ConceptSetRef(name="bert-relu"),
            concepts_explained=[pb.Target(label="c1")],
        ),
        isolate_batches=True,
    )
    reply = live.post("/v1/explainserve/Explain", json_format.MessageToJson(request))
    assert reply.status == 200, reply.body
    (explanation,) = reply.json()["explanations"]
    assert explanation["targets"] == [{"index": 1, "label": "c1"}]
    assert len(explanation["conceptActivations"]) > 1
    assert without_varying(reply.json()) == without_varying(grpc_reply(live, "Explain", request))


def test_server_sent_events_when_asked(live: HttpLive) -> None:
    reply = live.post(
        "/v1/explainserve/ExplainStream",
        json_format.MessageToJson(SAMPLES["ExplainStream"]),
        headers={"accept": "text/event-stream"},
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    events = reply.body.decode().split("\n\n")
    assert events[-1] == ""
    parsed = []
    for event in events[:-1]:
        assert event.startswith("data: ")
        assert "\n" not in event
        parsed.append(json.loads(event.removeprefix("data: ")))
    assert "progress" in parsed[0]["result"]
    assert "explanation" in parsed[-1]["result"]


@pytest.fixture
def fail_second_batch(live: HttpLive) -> Iterator[list[int]]:
    """The bert worker raises in the second batch of the next request (a model error)."""
    worker = live.explainer.registry.get("bert").worker
    seen = [0]

    def hook(_pieces: Sequence[tuple[Job, int, int]]) -> None:
        seen[0] += 1
        if seen[0] == 2:
            raise RuntimeError("injected")

    worker.fault_hook = hook
    yield seen
    worker.fault_hook = None


def test_an_error_after_the_first_message_ends_the_stream_with_its_status(
    live: HttpLive, fail_second_batch: list[int]
) -> None:
    request = pb.ExplainStreamRequest(request=HUGE)
    reply = live.post("/v1/explainserve/ExplainStream", json_format.MessageToJson(request))
    assert reply.status == 200  # sent with the first message
    lines = reply.lines()
    assert "progress" in lines[0]["result"]
    error = lines[-1]["error"]
    assert error["code"] == code_pb2.INTERNAL
    assert re.search(r"internal error \(request id [0-9a-f]{16}\)", error["message"])
    assert reply.headers["x-request-id"] in error["message"]
    assert all("result" in line for line in lines[:-1])


def test_an_error_before_the_first_message_is_an_error_reply(live: HttpLive) -> None:
    request = pb.GetActivationsRequest(model="nope", inputs=[pb.Input(text="x")])
    reply = live.post("/v1/explainserve/GetActivations", json_format.MessageToJson(request))
    assert reply.status == 404
    assert reply.headers["content-type"] == "application/json"
    status = json_format.Parse(reply.body, status_pb2.Status())
    assert status.code == code_pb2.NOT_FOUND


def status_of(reply: Any) -> status_pb2.Status:
    """The body as a google.rpc.Status (parsed strictly: nothing else in it)."""
    return json_format.Parse(reply.body, status_pb2.Status())


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (
            {"model": "nope", "inputs": [{"text": "x"}], "occlusion": {}},
            404,
            code_pb2.NOT_FOUND,
            "no model named 'nope'",
        ),
        ({"model": "bert", "inputs": [{"text": "x"}]}, 400, code_pb2.INVALID_ARGUMENT, "no method"),
        ({"model": "bert", "occlussion": {}}, 400, code_pb2.INVALID_ARGUMENT, "occlussion"),
        ({"model": 3}, 400, code_pb2.INVALID_ARGUMENT, "model"),
        ({"inputs": {"text": "x"}}, 400, code_pb2.INVALID_ARGUMENT, "inputs"),
        ('{"model": "bert", ', 400, code_pb2.INVALID_ARGUMENT, "not valid JSON"),
        ("[1, 2]", 400, code_pb2.INVALID_ARGUMENT, "must be a JSON object"),
        (b"\xff\xfe{}", 400, code_pb2.INVALID_ARGUMENT, "JSON"),
        ("[" * 100_000 + "]" * 100_000, 400, code_pb2.INVALID_ARGUMENT, "nested too deeply"),
        ('{"model": ' + "9" * 5000 + "}", 400, code_pb2.INVALID_ARGUMENT, "JSON"),
    ],
    ids=[
        "unknown-model",
        "no-method",
        "unknown-field",
        "wrong-type",
        "wrong-shape",
        "malformed",
        "not-an-object",
        "not-utf8",
        "too-deep",
        "too-many-digits",
    ],
)
def test_errors_are_a_google_rpc_status_with_grpc_gateways_http_status(
    live: HttpLive, body: Any, status: int, code: int, message: str
) -> None:
    reply = live.post("/v1/explainserve/Explain", body)
    assert reply.status == status, reply.body
    got = status_of(reply)
    assert got.code == code
    assert message in got.message
    assert re.fullmatch(r"[0-9a-f]{16}", reply.headers["x-request-id"])


def test_a_field_violation_names_the_field(live: HttpLive) -> None:
    reply = live.post(
        "/v1/explainserve/Explain",
        {"model": "bert", "inputs": [{"text": "x"}], "lime": {}}
        | {"inputs": [{"text": "x", "targets": [{"index": 9}]}]},
    )
    assert reply.status == 400
    body = reply.json()
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    (violation,) = detail["fieldViolations"]
    assert violation["field"] == "inputs[0].targets[0]"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_bound_is_refused_before_parsing(live: HttpLive, chunked: bool) -> None:
    text = "x" * (MAX_BODY_BYTES + 10)
    body = json.dumps({"model": "bert", "inputs": [{"text": text}], "occlusion": {}}).encode()
    payload: Any = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    # An iterable body is sent chunked, without a Content-Length.
    reply = live.post("/v1/explainserve/Explain", payload if chunked else body)
    assert reply.status == 413
    got = status_of(reply)
    assert got.code == code_pb2.RESOURCE_EXHAUSTED
    assert "max_message_bytes" in got.message


def test_a_gzip_body_is_read_within_the_bound(live: HttpLive) -> None:
    import gzip

    small = json.dumps({"model": "bert", "inputs": [{"text": "Fine."}], "occlusion": {}}).encode()
    reply = live.post(
        "/v1/explainserve/Explain", gzip.compress(small), headers={"content-encoding": "gzip"}
    )
    assert reply.status == 200, reply.body
    bomb = gzip.compress(b" " * (MAX_BODY_BYTES * 4))
    assert len(bomb) < MAX_BODY_BYTES
    reply = live.post("/v1/explainserve/Explain", bomb, headers={"content-encoding": "gzip"})
    assert reply.status == 413


def test_unknown_routes_and_verbs(live: HttpLive) -> None:
    reply = live.post("/v1/explainserve/Nope", {})
    assert reply.status == 404
    assert status_of(reply).code == code_pb2.NOT_FOUND
    reply = live.get("/v1/explainserve/Explain")
    assert reply.status == 405
    assert status_of(reply).code == code_pb2.UNIMPLEMENTED


@pytest.fixture
def hold_until_cancelled(live: HttpLive) -> Iterator[list[int]]:
    """Holds the bert worker's first batch of the next request until that request is cancelled
    (its deadline passes, its client goes away), then counts its batches that still run."""
    worker = live.explainer.registry.get("bert").worker
    key: list[Any] = []
    after = [0]

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        mine = [job.is_cancelled for job, _, _ in pieces if job.is_cancelled is not None]
        if not key and mine:
            key.append(mine[0])
            deadline = time.monotonic() + 30
            while not mine[0]() and time.monotonic() < deadline:
                time.sleep(0.01)
        elif key and any(job.is_cancelled is key[0] for job, _, _ in pieces):
            after[0] += 1

    worker.fault_hook = hook
    yield after
    worker.fault_hook = None


def test_a_grpc_timeout_is_the_calls_deadline(
    live: HttpLive, hold_until_cancelled: list[int]
) -> None:
    reply = live.post(
        "/v1/explainserve/Explain",
        json_format.MessageToJson(HUGE),
        headers={"grpc-timeout": "200m"},
    )
    assert reply.status == 504, reply.body
    assert status_of(reply).code == code_pb2.DEADLINE_EXCEEDED
    assert hold_until_cancelled[0] == 0  # no batch of it ran after the one held
    reply = live.post("/v1/explainserve/ListModels", {}, headers={"grpc-timeout": "soon"})
    assert reply.status == 400


def grpc_gateway_mapping() -> dict[str, int]:
    """grpc-gateway's own table (runtime.HTTPStatusFromCode), read from its source in Go's
    module cache (`make clients` installs protoc-gen-openapiv2 from that module)."""
    import subprocess
    from http import HTTPStatus

    root = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    version = re.search(r"PROTOC_GEN_OPENAPIV2_VERSION := (\S+)", makefile)
    assert version is not None
    source = Path(root) / f"github.com/grpc-ecosystem/grpc-gateway/v2@{version.group(1)}"
    text = (source / "runtime" / "errors.go").read_text()
    body = text[text.index("func HTTPStatusFromCode") :]
    body = body[: body.index("\n}\n")]
    out = {}
    for code, value in re.findall(r"case codes\.(\w+):\s+(?://[^\n]*\s+)*return ([\w.]+)", body):
        if value.isdigit():
            out[code] = int(value)
        else:
            word = value.removeprefix("http.Status")
            name = "OK" if word == "OK" else re.sub(r"(?<!^)(?=[A-Z])", "_", word).upper()
            out[code] = HTTPStatus[name].value
    return out


def test_the_http_statuses_are_grpc_gateways() -> None:
    expected = grpc_gateway_mapping()
    assert len(expected) == 17
    # Go's names (codes.Canceled) and Python's (StatusCode.CANCELLED), compared alike.
    expected = {code.lower().replace("canceled", "cancelled"): s for code, s in expected.items()}
    got = {code.name.replace("_", "").lower(): status for code, status in HTTP_STATUS_OF.items()}
    assert got == expected


def test_request_ids_are_echoed_and_kept(live: HttpLive) -> None:
    reply = live.post("/v1/explainserve/ListModels", {}, headers={"x-request-id": "client-7"})
    assert reply.headers["x-request-id"] == "client-7"
    reply = live.post("/v1/explainserve/ListModels", {}, headers={"x-request-id": "bad id!"})
    assert re.fullmatch(r"[0-9a-f]{16}", reply.headers["x-request-id"])


def test_calls_run_beside_each_other(live: HttpLive) -> None:
    """Concurrent HTTP calls are all answered, each with its own result (handler threads, not
    the event loop)."""
    texts = [f"Text number {i} is fine." for i in range(8)]
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        body = {"model": "bert", "inputs": [{"text": texts[i]}], "occlusion": {}}
        results[i] = live.post("/v1/explainserve/Explain", body).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(len(texts)))
    for i, reply in results.items():
        assert reply["explanations"][0]["text"] == texts[i]


def test_grpc_still_serves(live: HttpLive) -> None:
    with pytest.raises(grpc.RpcError) as err:
        live.stub.GetModel(pb.GetModelRequest(name="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
