"""KServe's V1 protocol, and the JSON routes as a shell user calls them: curl's `:explain` and
JSON Explain give gRPC's explanations; `:predict` gRPC's logits; `:explain`'s parameters map to
ExplainRequest's fields."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from http_calls import HttpLive, grpc_json, request

from explainserve.explain.limits import CausalLimits, Limits
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.http.kserve import explain_request
from explainserve.http.server import start_http
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.v1 import explain_pb2 as pb

TEXTS = ["The food was cold.", "A wonderful, warm evening with friends!"]


def without_time(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_time(v) for k, v in value.items() if k != "elapsedMs"}
    if isinstance(value, list):
        return [without_time(v) for v in value]
    return value


def curl(*args: str) -> Any:
    """curl's output (JSON) for a call that must succeed (--fail-with-body: 4xx/5xx fail)."""
    binary = shutil.which("curl")
    if binary is None:
        pytest.fail("curl is missing: `make curl` installs it (make test does)")
    out = subprocess.run(
        [binary, "-sS", "--fail-with-body", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_curl_explain_gives_grpcs_explanations(live: HttpLive) -> None:
    body = json.dumps({"instances": TEXTS})
    reply = json.loads(
        curl(
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            f"http://127.0.0.1:{live.port}/v1/models/bert:explain",
        )
    )
    expected = live.stub.Explain(
        pb.ExplainRequest(
            model="bert", inputs=[pb.Input(text=t) for t in TEXTS], occlusion=pb.Occlusion()
        ),
        timeout=60,
    )
    assert without_time(reply["explanations"]) == without_time(
        [grpc_json(e) for e in expected.explanations]
    )
    labels = live.explainer.registry.get("bert").labels
    for prediction, e in zip(reply["predictions"], expected.explanations, strict=True):
        index = int(np.argmax(e.logits))
        assert (prediction["index"], prediction["label"]) == (index, labels[index])
        np.testing.assert_allclose(prediction["logits"], e.logits, rtol=1e-6)
        assert sum(prediction["probabilities"]) == pytest.approx(1.0)
        # Units come with their text and character spans into the instance.
        first = reply["explanations"][0]["units"][0]
        assert TEXTS[0][first["charStart"] : first["charEnd"]] == first["text"]


def test_curl_json_explain_and_stream(live: HttpLive) -> None:
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=TEXTS[0])],
        saliency=pb.Saliency(),
        granularity=pb.GRANULARITY_TOKEN,
    )
    expected = grpc_json(live.stub.Explain(request, timeout=60))
    # No Content-Type: curl -d sends a form type, the JSON routes read the body as JSON anyway.
    body = json.dumps(
        {
            "model": "bert",
            "inputs": [{"text": TEXTS[0]}],
            "saliency": {},
            "granularity": "GRANULARITY_TOKEN",
        }
    )
    got = json.loads(curl("-d", body, f"http://127.0.0.1:{live.port}/v1/explainserve/Explain"))
    assert without_time(got) == without_time(expected)
    stream = curl(
        "-N",
        "-d",
        json.dumps({"request": {"model": "bert", "inputs": [{"text": TEXTS[0]}], "saliency": {}}}),
        f"http://127.0.0.1:{live.port}/v1/explainserve/ExplainStream",
    )
    lines = [json.loads(line) for line in stream.splitlines()]
    assert "progress" in lines[0]["result"]
    assert without_time(lines[-1]["result"]["explanation"]) == without_time(
        expected["explanations"][0]
    )


def test_curl_sees_the_error_status(live: HttpLive) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-d",
            '{"instances": ["x"]}',
            f"http://127.0.0.1:{live.port}/v1/models/nope:explain",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == "404"


def test_predict_gives_grpcs_logits(live: HttpLive) -> None:
    reply = live.post("/v1/models/bert:predict", {"instances": [TEXTS[0], {"text": TEXTS[1]}]})
    assert reply.status == 200, reply.body
    (chunk,) = live.stub.GetActivations(
        pb.GetActivationsRequest(
            model="bert", inputs=[pb.Input(text=t) for t in TEXTS], include_predictions=True
        ),
        timeout=60,
    )
    expected = np.frombuffer(chunk.logits.data, "<f4").reshape(2, 3)
    predictions = reply.json()["predictions"]
    np.testing.assert_allclose([p["logits"] for p in predictions], expected, atol=1e-6)
    assert [p["index"] for p in predictions] == list(chunk.predicted_classes)


def test_explain_parameters_are_explain_requests_fields(live: HttpLive) -> None:
    body = {
        "instances": [TEXTS[0], {"text": TEXTS[1], "targets": [{"label": "neutral"}]}],
        "parameters": {
            "method": "lime",
            "lime": {"nPerturbations": 24, "distance": "hamming"},
            "granularity": "token",
            "inference_mode": "softmax",
            "seed": 3,
            "targets": ["negative", 2],
            "isolateBatches": True,
        },
    }
    reply = live.post("/v1/models/bert:explain", body)
    assert reply.status == 200, reply.body
    expected = live.stub.Explain(
        pb.ExplainRequest(
            model="bert",
            inputs=[
                pb.Input(text=TEXTS[0], targets=[pb.Target(label="negative"), pb.Target(index=2)]),
                pb.Input(text=TEXTS[1], targets=[pb.Target(label="neutral")]),
            ],
            lime=pb.Lime(n_perturbations=24, distance=pb.LIME_DISTANCE_HAMMING),
            granularity=pb.GRANULARITY_TOKEN,
            inference_mode=pb.INFERENCE_MODE_SOFTMAX,
            seed=3,
            isolate_batches=True,
        ),
        timeout=60,
    )
    assert without_time(reply.json()["explanations"]) == without_time(
        [grpc_json(e) for e in expected.explanations]
    )
    assert [t["label"] for t in reply.json()["explanations"][0]["targets"]] == [
        "negative",
        "positive",
    ]


def test_explain_request_mapping() -> None:
    request = explain_request("m", {"instances": ["a"], "parameters": {"var_grad": {}}})
    assert request.WhichOneof("method") == "var_grad"
    assert explain_request("m", {"instances": ["a"]}).WhichOneof("method") == "occlusion"
    named = explain_request("m", {"instances": ["a"], "parameters": {"method": "saliency"}})
    assert named.WhichOneof("method") == "saliency"  # its parameters at their defaults


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/nope:explain", {"instances": ["x"]}, 404, "nope"),
        ("/v1/models/bert:explain", {"instances": []}, 400, "instances"),
        ("/v1/models/bert:explain", {"inputs": ["x"]}, 400, "instances"),
        ("/v1/models/bert:explain", {"instances": [3]}, 400, "instances[0]"),
        (
            "/v1/models/bert:explain",
            {"instances": ["x"], "parameters": {"method": "magic"}},
            400,
            "magic",
        ),
        (
            "/v1/models/bert:explain",
            {"instances": ["x"], "parameters": {"method": "lime", "sobol": {}}},
            400,
            "sobol",
        ),
        (
            "/v1/models/bert:explain",
            {"instances": ["x"], "parameters": {"model": "gpt2"}},
            400,
            "model",
        ),
        (
            "/v1/models/bert:explain",
            {"instances": ["x"], "parameters": {"granularity": "huge"}},
            400,
            "huge",
        ),
        (
            "/v1/models/bert:explain",
            {"instances": ["x"], "parameters": {"targets": [[1]]}},
            400,
            "targets",
        ),
        ("/v1/models/bert:predict", {"instances": [{"tokenIds": {"ids": [1]}}]}, 400, "texts"),
        (
            "/v1/models/bert:predict",
            {"instances": ["x"], "parameters": {"seed": 1}},
            400,
            "truncate",
        ),
        ("/v1/models/nope:predict", {"instances": ["x"]}, 404, "nope"),
    ],
)
def test_v1_errors_are_kserves_error_object(
    live: HttpLive, path: str, body: Any, status: int, message: str
) -> None:
    reply = live.post(path, body)
    assert reply.status == status, reply.body
    assert list(reply.json()) == ["error"]
    assert message in reply.json()["error"]


def test_list_and_get_models(live: HttpLive) -> None:
    assert live.get("/v1/models").json() == {"models": ["bert", "gpt2"]}
    assert live.get("/v1/models/bert").json() == {"name": "bert", "ready": True}
    missing = live.get("/v1/models/nope")
    assert missing.status == 404
    assert "loaded models" in missing.json()["error"]


def test_a_causal_lms_prediction_is_its_continuation(tiny_gpt2_lm_dir: Path) -> None:
    registry = Registry()
    registry.add(load_model(ModelConfig(name="writer", path=tiny_gpt2_lm_dir, device="cpu")))
    limits = Limits(causal=CausalLimits(max_new_tokens=5, max_continuation_tokens=20))
    running = start(
        ServerOptions(port=0, http_port=0), Explainer(registry, limits), companions=[start_http]
    )
    try:
        port = running.companions[0].port  # type: ignore[attr-defined]
        reply = request(
            port,
            "POST",
            "/v1/models/writer:explain",
            {
                "instances": [
                    {"text": "Hello there", "continuation": {"text": ", world."}},
                    "Hello",
                ],
                "parameters": {"generation": {"maxNewTokens": 3}},
            },
        )
        assert reply.status == 200, reply.body
        given, generated = reply.json()["predictions"]
        assert given == {"continuation": ", world.", "generated": False}
        assert generated["generated"] is True
        assert generated["continuation"] == reply.json()["explanations"][1]["continuation"]
        refused = request(port, "POST", "/v1/models/writer:predict", {"instances": ["x"]})
        assert refused.status == 400
        assert "causal LM" in refused.json()["error"]
    finally:
        running.stop(None)
        registry.close()
