"""A small HTTP client for the tests of the HTTP server (the standard library's, one connection
per call), and what the JSON routes must give for a gRPC reply."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from explainserve.explain.service import Explainer
from explainserve.grpc.server import RunningServer
from explainserve.http.json_mapping import to_dict
from explainserve.http.server import HttpServer
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: The server's limit on sequences per input (as the gRPC tests' server).
MAX_ROWS_PER_INPUT = 1000
#: Its bound on a request's bytes: small, so that the fuzz can go past it cheaply.
MAX_BODY_BYTES = 1 << 20


#: A request of each RPC (a new RPC needs one here: the first test fails until it has it).
SAMPLES: dict[str, Any] = {
    "Explain": pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text="The food was cold."), pb.Input(text="Lovely!")],
        lime=pb.Lime(n_perturbations=20),
        seed=7,
        isolate_batches=True,
    ),
    "ExplainStream": pb.ExplainStreamRequest(
        request=pb.ExplainRequest(
            model="gpt2",
            inputs=[pb.Input(text="Hello world.", targets=[pb.Target(label="positive")])],
            occlusion=pb.Occlusion(),
            isolate_batches=True,
        )
    ),
    "ListModels": pb.ListModelsRequest(),
    "GetModel": pb.GetModelRequest(name="bert"),
    "GetActivations": pb.GetActivationsRequest(
        model="bert",
        inputs=[pb.Input(text="Great food. Rude staff.")],
        split_points=["bert.encoder.layer.1", "bert.embeddings"],
        granularity=pb.ACTIVATION_GRANULARITY_WORD,
        include_predictions=True,
    ),
    "PredictFromActivations": pb.PredictFromActivationsRequest(
        model="bert",
        activations=pb.Tensor(
            dtype="float32",
            shape=[2, 32],
            data=np.linspace(-1, 1, 64, dtype="<f4").tobytes(),
        ),
    ),
    "ExplainConcepts": pb.ExplainConceptsRequest(
        model="bert",
        inputs=[pb.Input(text="The food was cold but the staff were lovely.")],
        concepts=pb.ConceptSetRef(name="bert-relu"),
        isolate_batches=True,
    ),
}


@dataclass
class Response:
    """An HTTP response, read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        """The JSON objects of a newline-delimited JSON body."""
        return [json.loads(line) for line in self.body.splitlines() if line]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    context: Any = None,
) -> Response:
    """One HTTP call to 127.0.0.1:`port` (HTTPS with an ssl `context`); a dict body is sent as
    JSON."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    connection: http.client.HTTPConnection
    if context is not None:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        reply = connection.getresponse()
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
    finally:
        connection.close()


def grpc_json(message: Any) -> Any:
    """A gRPC reply in the HTTP form: what the JSON routes must answer for the same call."""
    return to_dict(message)


@dataclass
class HttpLive:
    """The running server (gRPC and HTTP), a gRPC stub on it and the domain `Explainer`."""

    running: RunningServer
    stub: explain_pb2_grpc.ExplainServiceStub
    explainer: Explainer
    http: HttpServer

    @property
    def port(self) -> int:
        """The HTTP port."""
        return self.http.port

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Response:
        """POST `body` (a dict as JSON) to `path` of the HTTP port."""
        return request(self.port, "POST", path, body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Response:
        """GET `path` of the HTTP port."""
        return request(self.port, "GET", path, **kwargs)
