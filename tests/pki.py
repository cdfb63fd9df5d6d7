"""Test certificates: a CA, a server certificate for localhost/127.0.0.1 and client certificates
(shared by the TLS tests of the server and of the clients)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
