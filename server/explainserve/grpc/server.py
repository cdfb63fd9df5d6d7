"""Builds and runs the gRPC server: ExplainService, health and reflection."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from explainserve.activations.service import Activator
from explainserve.explain.service import Explainer
from explainserve.grpc.servicer import ExplainServicer
from explainserve.v1 import explain_pb2, explain_pb2_grpc

log = logging.getLogger(__name__)

# Well above gRPC's 4 MiB default: explanation batches and activations can be large.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    """How the server listens."""

    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 8
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grace_seconds: float = 30.0
    #: Tokens per input at most (0 = each model's maximum); see `explainserve.inputs`.
    max_tokens_per_input: int = 0


@dataclass
class RunningServer:
    """A started server, the port it is bound to and its health servicer."""

    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float | None) -> None:
        """Marks every service NOT_SERVING, then stops, letting in-flight RPCs finish."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        gc.unfreeze()


def start(
    options: ServerOptions,
    explainer: Explainer | None = None,
    activator: Activator | None = None,
) -> RunningServer:
    """Starts a server with health and reflection, and ExplainService when `explainer` is given
    (its models already loaded; `activator` defaults to one with default limits on the same
    registry); `port=0` binds a free port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.workers),
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
        ],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names: list[str] = []
    if explainer is not None:
        explain_pb2_grpc.add_ExplainServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ExplainServicer(explainer, activator, options.max_tokens_per_input), server
        )
        service_names.append(explain_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{options.host}:{options.port}")
    if port == 0:
        raise OSError(f"could not bind {options.host}:{options.port}")
    # The loaded models and libraries are hundreds of thousands of long-lived objects: without
    # this, every few requests a full collection walks them all and stops every thread, the model
    # workers included, for a quarter of a second (measured with MiniLM on 2 cores).
    gc.freeze()
    server.start()
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening on %s:%d", options.host, port)
    return RunningServer(server=server, port=port, health=health_servicer)


def serve_forever(
    options: ServerOptions,
    explainer: Explainer | None = None,
    activator: Activator | None = None,
) -> None:
    """Runs until SIGTERM or SIGINT, then drains in-flight RPCs for the grace period."""
    running = start(options, explainer, activator)
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.0f s", signum, options.grace_seconds)
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"explainserve listening on {options.host}:{running.port}", flush=True)
    stopped.wait()
    running.stop(options.grace_seconds)
    if explainer is not None:
        explainer.registry.close()
