"""A real server with HTTP beside gRPC on loopback, shared by the HTTP tests of a session: the
tiny models ("bert", "gpt2") and the shared concept sets, on free ports, metrics on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from concept_sets import served_concepts
from http_calls import MAX_BODY_BYTES, MAX_ROWS_PER_INPUT, HttpLive
from served import served_models

from explainserve.explain.limits import Limits
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.http.server import HttpServer, start_http
from explainserve.v1 import explain_pb2_grpc


@pytest.fixture(scope="session")
def live(tiny_bert_dir: Path, tiny_gpt2_dir: Path) -> Iterator[HttpLive]:
    """Starts the server once per session; stops it and closes the models at the end."""
    with served_models({"bert": tiny_bert_dir, "gpt2": tiny_gpt2_dir}) as registry:
        explainer = Explainer(
            registry, Limits(max_rows_per_input=MAX_ROWS_PER_INPUT), served_concepts(registry)
        )
        options = ServerOptions(
            port=0, http_port=0, metrics_port=0, max_message_bytes=MAX_BODY_BYTES
        )
        running = start(options, explainer, companions=[start_http])
        try:
            (server,) = running.companions
            assert isinstance(server, HttpServer)
            with grpc.insecure_channel(
                f"127.0.0.1:{running.port}",
                options=[("grpc.max_receive_message_length", MAX_BODY_BYTES)],
            ) as channel:
                stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
                yield HttpLive(running, stub, explainer, server)
        finally:
            running.stop(grace=None)


@pytest.fixture
def assert_serving(live: HttpLive) -> Callable[[], None]:
    """A check that the server still answers good HTTP requests correctly (after bad ones)."""

    def check() -> None:
        for model in ("bert", "gpt2"):
            reply = live.post(
                "/v1/explainserve/Explain",
                {"model": model, "inputs": [{"text": "Still serving."}], "occlusion": {}},
            )
            assert reply.status == 200, reply.body
            (explanation,) = reply.json()["explanations"]
            assert [u["text"] for u in explanation["units"]] == ["Still", "serving", "."]
        assert live.get("/v2/health/ready").status == 200

    return check
