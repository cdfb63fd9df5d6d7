"""Bearer tokens and TLS on the HTTP port, from the same settings and certificate files as
gRPC: the probes stay open, everything else wants `Authorization: Bearer <token>`; TLS and
mutual TLS with tests/pki.py's certificates."""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from http_calls import HttpLive, request
from pki import Pki

from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, start
from explainserve.http.server import HttpServer, start_http
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Hi."]}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def serve(live: HttpLive, **options: object) -> tuple[RunningServer, int]:
    running = start(
        ServerOptions(port=0, http_port=0, **options),  # type: ignore[arg-type]
        live.explainer,
        companions=[start_http],
    )
    (server,) = running.companions
    assert isinstance(server, HttpServer)
    return running, server.port


@pytest.fixture
def with_tokens(live: HttpLive) -> Iterator[int]:
    running, port = serve(live, auth_tokens=("s3cret-one", "s3cret-two"))
    yield port
    running.stop(grace=None)


@pytest.mark.parametrize(
    ("verb", "path", "body"),
    [
        ("POST", "/v1/explainserve/ListModels", {}),
        ("POST", "/v1/explainserve/GetActivations", {"model": "bert", "inputs": [{"text": "x"}]}),
        ("POST", "/v2/models/bert/infer", TEXT),
        ("GET", "/v2/models/bert", None),
        ("GET", "/v2", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/models/bert:explain", {"instances": ["Hi."]}),
    ],
)
def test_bearer_tokens(with_tokens: int, verb: str, path: str, body: object) -> None:
    for token in ("s3cret-one", "s3cret-two"):
        reply = request(with_tokens, verb, path, body, headers={"authorization": f"Bearer {token}"})
        assert reply.status == 200, reply.body
    for header in (None, "", "Bearer ", "Bearer s3cret", "Bearer S3CRET-ONE", "s3cret-one"):
        headers = {} if header is None else {"authorization": header}
        reply = request(with_tokens, verb, path, body, headers=headers)
        assert reply.status == 401
        assert reply.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in reply.body.decode()


def test_the_probes_and_the_document_stay_open(with_tokens: int) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/openapi.json"):
        assert request(with_tokens, "GET", path).status == 200


def test_tls_with_the_grpc_certificate_files(live: HttpLive, pki: Pki) -> None:
    running, port = serve(live, tls_cert=pki.server_cert, tls_key=pki.server_key)
    try:
        context = ssl.create_default_context(cadata=pki.ca_pem.decode())
        reply = request(port, "POST", "/v1/explainserve/ListModels", {}, context=context)
        assert reply.status == 200
        assert [m["name"] for m in reply.json()["models"]] == ["bert", "gpt2"]
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises((ConnectionError, OSError)):
            request(port, "GET", "/v2/health/live", timeout=5)
        # gRPC on the same files still serves.
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    finally:
        running.stop(grace=None)


def test_mutual_tls(live: HttpLive, pki: Pki) -> None:
    running, port = serve(
        live, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca_file
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "client.pem", Path(tmp) / "client.key"
            cert.write_bytes(pki.client_cert)
            key.write_bytes(pki.client_key)
            context = ssl.create_default_context(cadata=pki.ca_pem.decode())
            context.load_cert_chain(cert, key)
            assert request(port, "GET", "/v2/health/live", context=context).status == 200
            stranger = ssl.create_default_context(cadata=pki.ca_pem.decode())
            cert.write_bytes(pki.stranger_cert)
            key.write_bytes(pki.stranger_key)
            stranger.load_cert_chain(cert, key)
            for refused in (ssl.create_default_context(cadata=pki.ca_pem.decode()), stranger):
                with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                    request(port, "GET", "/v2/health/live", context=refused, timeout=5)
    finally:
        running.stop(grace=None)


def test_a_busy_port_fails_at_start(live: HttpLive) -> None:
    running, port = serve(live)
    try:
        with pytest.raises(OSError, match="address in use"):
            start(ServerOptions(port=0, http_port=port), live.explainer, companions=[start_http])
    finally:
        running.stop(grace=None)
