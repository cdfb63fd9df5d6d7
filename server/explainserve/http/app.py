"""The HTTP/JSON app: every route of the three protocols on one Starlette app, each answered by
the servicers the gRPC server runs (`RunningServer.explain_servicer` and `.oip_servicer`),
through `calls.Calls`; and `/openapi.json`, the OpenAPI document of the JSON RPCs generated
from the proto (`make proto`; tests/http/test_openapi.py fails when it drifts)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import grpc
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from explainserve.grpc.oip import OipServicer
from explainserve.grpc.servicer import ExplainServicer
from explainserve.http import jsonrpc, kserve, oip_rest
from explainserve.http.calls import JSON, Calls, HttpRequest, Operation, Reply, status_body
from explainserve.http.paths import OPENAPI_PATH

#: The generated OpenAPI (Swagger 2.0) document, a file of this package.
OPENAPI_FILE = "explainserve.swagger.json"


def openapi_document() -> bytes:
    """The committed OpenAPI document of the JSON RPCs."""
    return resources.files("explainserve.http").joinpath(OPENAPI_FILE).read_bytes()


def operations(explainer: ExplainServicer, inference: OipServicer, calls: Calls) -> list[Operation]:
    """Every operation served: the JSON RPCs, the Open Inference Protocol's REST form, KServe's
    V1 protocol and the OpenAPI document."""
    document = openapi_document()

    def openapi(_request: HttpRequest) -> Reply:
        return Reply(body=document)

    return [
        *jsonrpc.operations(explainer, calls.ledger),
        *oip_rest.operations(inference),
        *kserve.operations(explainer, inference),
        Operation("OpenAPI", "GET", OPENAPI_PATH, openapi, open=True),
    ]


def build_app(operations: list[Operation], calls: Calls) -> Starlette:
    """The ASGI app routing each operation to `calls`; an unknown path is a 404 and a known
    one asked with the wrong verb a 405, with a google.rpc.Status body as grpc-gateway's."""
    routes = [Route(op.route, calls.endpoint(op), methods=[op.verb]) for op in operations]

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = (
            grpc.StatusCode.NOT_FOUND if exc.status_code == 404 else grpc.StatusCode.UNIMPLEMENTED
        )
        message = "no such route" if exc.status_code == 404 else "method not allowed"
        body = status_body(status_pb2.Status(code=code.value[0], message=message))
        headers: dict[str, Any] = dict(exc.headers or {})
        return Response(body, exc.status_code, headers=headers, media_type=JSON)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
