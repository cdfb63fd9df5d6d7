"""The OpenAPI document of the JSON RPCs: generated from the protos by grpc-gateway's
protoc-gen-openapiv2 (buf.gen.openapi.yaml, `make proto`), it must be exactly the committed one
(and its generator configurations exactly what scripts/gen_proto.py writes), valid by a
maintained validator (openapi-spec-validator), served at /openapi.json, describing every route
the server serves, and the server's replies must match its schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from generated import buf_generate, gen_proto
from google.protobuf import json_format
from http_calls import SAMPLES, HttpLive
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from explainserve.http.app import openapi_document
from explainserve.http.jsonrpc import SERVICE
from explainserve.http.paths import rpc_path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "server" / "explainserve" / "http" / "explainserve.swagger.json"


def test_the_generator_configurations_match_the_protos(tmp_path: Path) -> None:
    written = gen_proto().generate_http(tmp_path)
    assert written
    for path in written:
        committed = ROOT / "proto" / "explainserve" / "v1" / path.name
        assert committed.read_text() == path.read_text(), f"{path.name} is stale: make proto"


def test_the_document_is_what_the_generator_makes_of_the_protos(tmp_path: Path) -> None:
    plugin = ROOT / ".make" / "bin" / "protoc-gen-openapiv2"
    generated = buf_generate("buf.gen.openapi.yaml", [plugin], tmp_path)
    assert generated == [DOCUMENT.relative_to(ROOT)]
    assert (tmp_path / generated[0]).read_bytes() == DOCUMENT.read_bytes(), "stale: make proto"


def test_a_maintained_validator_accepts_the_served_document(live: HttpLive) -> None:
    reply = live.get("/openapi.json")
    assert reply.status == 200
    assert reply.body == openapi_document() == DOCUMENT.read_bytes()
    document = reply.json()
    assert document["swagger"] == "2.0"
    validate(document)
    broken = json.loads(reply.body)
    del broken["paths"]["/v1/explainserve/Explain"]["post"]["responses"]  # required
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_the_document_describes_every_json_rpc_the_server_serves(live: HttpLive) -> None:
    document = json.loads(DOCUMENT.read_bytes())
    served = {route.path for route in live.http.app.routes}  # type: ignore[attr-defined]
    rpcs = {rpc_path(m.name) for m in SERVICE.methods}
    assert set(document["paths"]) == rpcs
    assert rpcs <= served
    for method in SERVICE.methods:
        operation = document["paths"][rpc_path(method.name)]["post"]
        (body,) = operation["parameters"]
        assert body["in"] == "body"
        if method.server_streaming:
            assert operation["produces"] == ["application/x-ndjson", "text/event-stream"]
    assert document["securityDefinitions"]["Bearer"]["name"] == "Authorization"


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON-schema validator of `schema`, its `#/definitions/...` references into the
    document (Swagger 2.0 schemas are JSON Schema draft 4 with extensions)."""
    return jsonschema.Draft4Validator({**schema, "definitions": document["definitions"]})


def test_the_replies_match_the_documents_schemas(live: HttpLive) -> None:
    document = json.loads(DOCUMENT.read_bytes())
    for method in SERVICE.methods:
        operation = document["paths"][rpc_path(method.name)]["post"]
        request = json_format.MessageToDict(SAMPLES[method.name])
        validator(document, operation["parameters"][0]["schema"]).validate(request)
        reply = live.post(rpc_path(method.name), request)
        assert reply.status == 200
        check = validator(document, operation["responses"]["200"]["schema"])
        for message in reply.lines() if method.server_streaming else [reply.json()]:
            check.validate(message)
        error = live.post(rpc_path(method.name), {"nope": 1})
        assert error.status == 400
        validator(document, operation["responses"]["default"]["schema"]).validate(error.json())
    # The check can fail: a reply of the wrong shape is refused.
    operation = document["paths"][rpc_path("Explain")]["post"]
    with pytest.raises(jsonschema.ValidationError):
        validator(document, operation["responses"]["200"]["schema"]).validate(
            {"explanations": [{"inputIndex": "zero"}]}
        )
