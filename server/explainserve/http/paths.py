"""Where each protocol lives on the HTTP port. No import of the serving layers: the proto
generator (scripts/gen_proto.py) reads `rpc_path` to write the HTTP rules the OpenAPI document
is generated from, and the server routes the same paths."""

from __future__ import annotations

#: ExplainService's RPCs as JSON: `POST /v1/explainserve/<Rpc>`.
JSON_RPC_PREFIX = "/v1/explainserve/"
#: The OpenAPI document of the JSON RPCs (generated from the proto, committed).
OPENAPI_PATH = "/openapi.json"


def rpc_path(method: str) -> str:
    """The HTTP path of ExplainService's RPC `method` ("Explain": /v1/explainserve/Explain)."""
    return JSON_RPC_PREFIX + method
