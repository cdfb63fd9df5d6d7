"""The server the client packages' tests call (started by tests/clients/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass

from explainserve.explain.service import Explainer
from explainserve.grpc.server import RunningServer

TOKEN = "client-test-token"
#: Inputs per GetActivations chunk.
CHUNK_INPUTS = 2


@dataclass(frozen=True)
class ClientServer:
    """The running server, the address clients dial and the token it wants."""

    running: RunningServer
    explainer: Explainer
    token: str = TOKEN

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.running.port}"
