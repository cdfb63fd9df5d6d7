"""The Open Inference Protocol v2 over REST: Triton's own HTTP client (tritonclient.http, in a
process of its own) gets the logits and activations of the gRPC path, in binary and in JSON; the
protocol's routes and errors as the REST specification states them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from http_calls import HttpLive, request
from oip_checks import POINTS, TEXTS, TOL, logits, rows, run_triton

from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.http.server import start_http
from explainserve.v1 import explain_pb2 as pb

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def triton_run(live: HttpLive, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """What tests/http/oip_triton_http_client.py saw (result.json, arrays.npz)."""
    out = tmp_path_factory.mktemp("triton-http")
    return run_triton(HERE / "oip_triton_http_client.py", f"127.0.0.1:{live.port}", out)


def test_tritonclient_http_gets_the_logits_and_activations_of_the_grpc_path(
    triton_run: Any, live: HttpLive
) -> None:
    result, arrays = triton_run
    chunks = list(
        live.stub.GetActivations(
            pb.GetActivationsRequest(
                model="bert",
                inputs=[pb.Input(text=t) for t in TEXTS],
                split_points=POINTS,
                include_predictions=True,
            ),
            timeout=60,
        )
    )
    expected = logits(chunks)
    assert expected.shape == (3, 3)
    for form in ("binary", "json", "default"):
        assert arrays[f"{form}/logits"].dtype == np.float32
        np.testing.assert_allclose(arrays[f"{form}/logits"], expected, rtol=0, atol=TOL)
    for name in POINTS:
        for form in ("binary", "json"):
            np.testing.assert_allclose(arrays[f"{form}/{name}"], rows(chunks, name), atol=TOL)
    assert result["binary_id"] == "oip-http-1"
    assert [o["parameters"] for o in result["binary_outputs"]] == [
        {"binary_data_size": 3 * 3 * 4},
        {"binary_data_size": 3 * 32 * 4},
        {"binary_data_size": 3 * 32 * 4},
    ]
    assert result["json_outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [3, 3]},
        {"name": "classifier:input", "datatype": "FP32", "shape": [3, 32]},
        {"name": "bert.encoder.layer.1", "datatype": "FP32", "shape": [3, 32]},
    ]
    assert result["default_outputs"] == ["logits"]


def test_tritonclient_http_token_ids_compressed_and_mixed_binary_and_json(
    triton_run: Any, live: HttpLive
) -> None:
    _, arrays = triton_run
    ids, mask = arrays["ids/input_ids"], arrays["ids/attention_mask"]
    chunks = list(
        live.stub.GetActivations(
            pb.GetActivationsRequest(
                model="bert",
                inputs=[
                    pb.Input(token_ids=pb.TokenIds(ids=i.tolist(), attention_mask=m.tolist()))
                    for i, m in zip(ids, mask, strict=True)
                ],
                split_points=["bert.encoder.layer.1"],
                granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
                include_predictions=True,
            ),
            timeout=60,
        )
    )
    got = arrays["ids/bert.encoder.layer.1"]
    assert got.shape == (2, 5, 32)
    np.testing.assert_allclose(
        got, rows(chunks, "bert.encoder.layer.1").reshape(2, 5, 32), atol=TOL
    )
    np.testing.assert_allclose(arrays["ids/logits"], logits(chunks), atol=TOL)


def test_tritonclient_http_health_metadata_and_errors(triton_run: Any, live: HttpLive) -> None:
    result, _ = triton_run
    assert (result["live"], result["ready"], result["model_ready"]) == (True, True, True)
    assert result["unknown_ready"] is False
    assert result["server_metadata"] == {
        "name": "explainserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    meta = result["model_metadata"]
    assert meta == result["versioned_metadata"]
    assert meta["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    model = live.explainer.registry.get("bert")
    assert [o["name"] for o in meta["outputs"]] == [
        "logits",
        *(name for name, _ in model.split_points),
    ]
    errors = result["errors"]
    assert errors["unknown_model"]["status"] == "404"
    assert "loaded models: bert" in errors["unknown_model"]["message"]
    assert errors["unknown_output"]["status"] == "400"
    assert "did you mean" in errors["unknown_output"]["message"]
    assert errors["bad_datatype"]["status"] == "400"
    assert "must be INT64" in errors["bad_datatype"]["message"]
    assert errors["unknown_metadata"]["status"] == "404"


def infer(live: HttpLive, body: Any, headers: dict[str, str] | None = None) -> Any:
    return live.post("/v2/models/bert/infer", body, headers=headers)


def test_json_data_flat_or_nested_and_int32_ids(live: HttpLive) -> None:
    ids = [[101, 7592, 2088, 102]]
    nested = infer(
        live, {"inputs": [{"name": "input_ids", "shape": [1, 4], "datatype": "INT32", "data": ids}]}
    )
    flat = infer(
        live,
        {"inputs": [{"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": ids[0]}]},
    )
    assert nested.status == flat.status == 200, nested.body
    assert nested.json()["outputs"] == flat.json()["outputs"]
    (chunk,) = live.stub.GetActivations(
        pb.GetActivationsRequest(
            model="bert",
            inputs=[pb.Input(token_ids=pb.TokenIds(ids=ids[0]))],
            include_predictions=True,
        ),
        timeout=30,
    )
    np.testing.assert_allclose(nested.json()["outputs"][0]["data"], logits([chunk])[0], atol=TOL)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        ({"inputs": []}, None, 400, "inputs"),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]},
            None,
            400,
            "strings",
        ),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}, None, 400, "data"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            None,
            400,
            "unknown input",
        ),
        (
            {
                "inputs": [
                    {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": ["a", 1]}
                ]
            },
            None,
            400,
            "INT64",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "text",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": 9},
                    }
                ]
            },
            None,
            400,
            "binary",
        ),
        ('{"inputs": [', None, 400, "JSON"),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "parameters": {"x": 1},
            },
            None,
            400,
            "unknown parameter",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            {"inference-header-content-length": "99999"},
            400,
            "Inference-Header-Content-Length",
        ),
    ],
    ids=[
        "no-inputs",
        "bytes-not-strings",
        "no-data",
        "unknown-input",
        "bad-ints",
        "missing-binary",
        "malformed",
        "unknown-parameter",
        "bad-header-length",
    ],
)
def test_errors_are_the_protocols_error_object(
    live: HttpLive, body: Any, headers: dict[str, str] | None, status: int, message: str
) -> None:
    reply = infer(live, body, headers)
    assert reply.status == status, reply.body
    error = reply.json()
    assert list(error) == ["error"]
    assert message in error["error"]


def test_not_ready_while_loading(explainer_for_start: Explainer) -> None:
    """Starting (models loading): live, not ready (503), inference refused with 503."""
    running = start(
        ServerOptions(port=0, http_port=0),
        explainer_for_start,
        serving=False,
        companions=[start_http],
    )
    try:
        port = running.companions[0].port  # type: ignore[attr-defined]
        assert request(port, "GET", "/v2/health/live").status == 200
        ready = request(port, "GET", "/v2/health/ready")
        assert (ready.status, ready.json()) == (503, {"ready": False})
        assert request(port, "GET", "/v2/models/bert/ready").status == 503
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
        refused = request(port, "POST", "/v2/models/bert/infer", body)
        assert refused.status == 503
        assert "starting" in refused.json()["error"]
        running.set_serving()
        assert request(port, "GET", "/v2/health/ready").status == 200
        assert request(port, "POST", "/v2/models/bert/infer", body).status == 200
    finally:
        running.stop(None)


@pytest.fixture
def explainer_for_start(live: HttpLive) -> Explainer:
    """The shared server's explainer, to serve from a second server."""
    return live.explainer
