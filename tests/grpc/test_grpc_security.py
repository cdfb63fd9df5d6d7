"""Bearer-token authentication (health stays open) and TLS / mutual TLS, with certificates
generated here."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from explainserve.grpc.server import RunningServer, ServerOptions, start
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

Key = ec.EllipticCurvePrivateKey


def pem_key(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def issue(
    name: str, key: Key, issuer: x509.Certificate | None, issuer_key: Key, *, ca: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """A CA, a server certificate for localhost and a client certificate, as PEM files."""

    def __init__(self, root: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = issue("test CA", ca_key, None, ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        client_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_pem = pem_cert(self.ca)
        self.server_cert = root / "server.pem"
        self.server_key = root / "server.key"
        self.ca_file = root / "ca.pem"
        self.server_cert.write_bytes(pem_cert(issue("localhost", server_key, self.ca, ca_key)))
        self.server_key.write_bytes(pem_key(server_key))
        self.ca_file.write_bytes(self.ca_pem)
        self.client_cert = pem_cert(issue("client", client_key, self.ca, ca_key))
        self.client_key = pem_key(client_key)
        other_key = ec.generate_private_key(ec.SECP256R1())
        other_ca = issue("other CA", other_key, None, other_key, ca=True)
        self.stranger_key = pem_key(client_key)
        self.stranger_cert = pem_cert(issue("stranger", client_key, other_ca, other_key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def serve(explainer: object, **options: object) -> RunningServer:
    return start(ServerOptions(port=0, workers=2, **options), explainer)  # type: ignore[arg-type]


@pytest.fixture
def with_tokens(explainer: object) -> Iterator[RunningServer]:
    running = serve(explainer, auth_tokens=("s3cret-one", "s3cret-two"))
    yield running
    running.stop(grace=None)


def list_models(channel: grpc.Channel, token: str | None = None) -> list[str]:
    stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=metadata)
    return [m.name for m in reply.models]


def test_bearer_tokens(with_tokens: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{with_tokens.port}") as channel:
        assert list_models(channel, "s3cret-one") == ["bert", "gpt2"]
        assert list_models(channel, "s3cret-two") == ["bert", "gpt2"]
        for token in (None, "", "s3cret", "s3cret-one-more", "S3CRET-ONE"):
            with pytest.raises(grpc.RpcError) as err:
                list_models(channel, token)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in err.value.details()
        # Streaming RPCs too.
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GetActivationsRequest(model="bert", inputs=[pb.Input(text="Hi.")])
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GetActivations(request, timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for load balancers.
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls(explainer: object, pki: Pki) -> None:
    running = serve(explainer, tls_cert=pki.server_cert, tls_key=pki.server_key)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            assert list_models(channel) == ["bert", "gpt2"]
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plain:
            with pytest.raises(grpc.RpcError) as err:
                list_models(plain)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(grace=None)


def test_mutual_tls(explainer: object, pki: Pki) -> None:
    running = serve(
        explainer,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_file,
        auth_tokens=("tok",),
    )
    try:
        target = f"localhost:{running.port}"
        ok = grpc.ssl_channel_credentials(pki.ca_pem, pki.client_key, pki.client_cert)
        with grpc.secure_channel(target, ok) as channel:
            assert list_models(channel, "tok") == ["bert", "gpt2"]
        for credentials in (
            grpc.ssl_channel_credentials(pki.ca_pem),  # no client certificate
            grpc.ssl_channel_credentials(pki.ca_pem, pki.stranger_key, pki.stranger_cert),
        ):
            with grpc.secure_channel(target, credentials) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    list_models(channel, "tok")
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(grace=None)


def test_tls_needs_both_files(explainer: object, pki: Pki) -> None:
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        serve(explainer, tls_cert=pki.server_cert)
    with pytest.raises(ValueError, match="tls_client_ca needs"):
        serve(explainer, tls_client_ca=pki.ca_file)
