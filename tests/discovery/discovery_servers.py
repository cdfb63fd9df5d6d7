"""The in-process servers of the discovery tests (`conftest.replicas`)."""

from __future__ import annotations

from dataclasses import dataclass

from explainserve.grpc.server import RunningServer
from explainserve.models.registry import Registry


@dataclass(frozen=True)
class Replica:
    """One in-process server and its registry (its worker's stats count what it ran)."""

    running: RunningServer
    registry: Registry

    @property
    def target(self) -> str:
        """Its address."""
        return f"127.0.0.1:{self.running.port}"
