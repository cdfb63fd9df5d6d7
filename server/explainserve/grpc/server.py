"""Builds and runs the gRPC server: ExplainService, health, reflection, the interceptor (serving
state, authentication, request ids, metrics), TLS, keepalive and the metrics endpoint."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from explainserve.activations.service import Activator
from explainserve.explain.service import Explainer
from explainserve.grpc.interceptors import ServerInterceptor, ServingState
from explainserve.grpc.servicer import ExplainServicer
from explainserve.memory import IdleTrimmer
from explainserve.metrics import Metrics
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
    #: Bearer tokens accepted (metadata `authorization: Bearer <token>`); none = no auth.
    #: Health checks stay open.
    auth_tokens: tuple[str, ...] = ()
    #: PEM server certificate chain and private key: TLS when both are given.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM CA bundle: clients must present a certificate it signed (mutual TLS).
    tls_client_ca: Path | None = None
    #: HTTP/2 keepalive pings to idle clients every this many seconds (0 = gRPC's default).
    keepalive_time_s: float = 0.0
    #: How long to wait for a ping's answer before closing the connection (0 = default).
    keepalive_timeout_s: float = 0.0
    #: Clients may ping this often at most (0 = gRPC's default of 5 minutes).
    min_client_ping_interval_s: float = 0.0
    #: Let clients ping connections that have no call in flight.
    keepalive_permit_without_calls: bool = False
    #: Close connections idle this long (0 = never).
    max_connection_idle_s: float = 0.0
    #: Close connections this old, so clients reconnect and spread over replicas (0 = never).
    max_connection_age_s: float = 0.0
    #: Time in-flight calls get on a connection closed for its age (0 = gRPC's default).
    max_connection_age_grace_s: float = 0.0
    #: Prometheus metrics on http://metrics_host:metrics_port/metrics; None = off.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: Extra channel arguments, appended last.
    extra_options: tuple[tuple[str, int | str], ...] = field(default_factory=tuple)


def channel_options(options: ServerOptions) -> list[tuple[str, int | str]]:
    """The grpc server arguments for `options` (message sizes, keepalive, connection age)."""
    out: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
    ]
    ms = [
        ("grpc.keepalive_time_ms", options.keepalive_time_s),
        ("grpc.keepalive_timeout_ms", options.keepalive_timeout_s),
        ("grpc.http2.min_ping_interval_without_data_ms", options.min_client_ping_interval_s),
        ("grpc.max_connection_idle_ms", options.max_connection_idle_s),
        ("grpc.max_connection_age_ms", options.max_connection_age_s),
        ("grpc.max_connection_age_grace_ms", options.max_connection_age_grace_s),
    ]
    for name, seconds in ms:
        if seconds < 0:
            raise ValueError(f"{name.removeprefix('grpc.')} must not be negative")
        if seconds > 0:
            out.append((name, int(seconds * 1000)))
    if options.min_client_ping_interval_s > 0:
        out.append(
            (
                "grpc.http2.min_recv_ping_interval_without_data_ms",
                int(options.min_client_ping_interval_s * 1000),
            )
        )
    if options.keepalive_permit_without_calls:
        out.append(("grpc.keepalive_permit_without_calls", 1))
    out.extend(options.extra_options)
    return out


def server_credentials(options: ServerOptions) -> grpc.ServerCredentials | None:
    """TLS credentials from the files named in `options` (None: plaintext)."""
    if options.tls_cert is None and options.tls_key is None:
        if options.tls_client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise ValueError("TLS needs both tls_cert and tls_key")
    ca = options.tls_client_ca.read_bytes() if options.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(options.tls_key.read_bytes(), options.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class _MethodAwarePool:
    """The default descriptor pool for server reflection, also finding the file of a method
    symbol ("pkg.Service.Method"), which the Python pool does not, and which some clients
    (ghz) ask for."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def FindFileContainingSymbol(self, name: str) -> Any:  # noqa: N802 (the pool's API)
        try:
            return self._pool.FindFileContainingSymbol(name)
        except KeyError:
            parent, _, method = name.rpartition(".")
            try:
                service = self._pool.FindServiceByName(parent)
            except KeyError:
                raise KeyError(name) from None
            if method not in service.methods_by_name:
                raise KeyError(name) from None
            return service.file

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._pool, attr)


class HealthServicer(health.HealthServicer):  # type: ignore[misc]
    """grpc's health servicer plus `List` (the statuses of every service), which the library
    leaves UNIMPLEMENTED although reflection lists it. Keeps its own copy of the statuses, as
    the library's are private."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._shutting_down = False
        self._statuses_lock = threading.Lock()

    def set(self, service: str, status: int) -> None:
        """Sets a service's status (ignored once shutting down, as the library does)."""
        super().set(service, status)
        with self._statuses_lock:
            if not self._shutting_down:
                self._statuses[service] = status

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good."""
        super().enter_graceful_shutdown()
        with self._statuses_lock:
            self._shutting_down = True

    def List(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every service's status."""
        with self._statuses_lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )


@dataclass
class RunningServer:
    """A started server, the port it is bound to, its health servicer and serving state."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    state: ServingState
    service_names: list[str]
    metrics: Metrics | None = None
    #: The metrics endpoint's port, when metrics are on.
    metrics_port: int | None = None
    #: Returns freed heap memory to the system after each burst of calls.
    trimmer: IdleTrimmer | None = None

    def set_serving(self) -> None:
        """Models loaded and warmed up: health SERVING, ExplainService takes work."""
        if self.metrics is not None:
            self.metrics.watch_workers()
        self.state.set_serving()
        for name in ["", *self.service_names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None) -> None:
        """Drains, then stops. Draining: every service NOT_SERVING (health checks still
        answered, so load balancers see it), new ExplainService calls UNAVAILABLE at once, and
        the calls in flight get up to `grace` seconds to finish; then the calls still running
        are logged (what they are, for how long) and cancelled, and the server stops.
        `grace=None`: stop at once."""
        self.state.set_draining()
        self.health.enter_graceful_shutdown()
        if grace is not None and not self.state.wait_idle(grace):
            running = self.state.running()
            log.warning(
                "grace period of %.1f s over: cancelling %d calls still running: %s",
                grace,
                len(running),
                "; ".join(running),
            )
        # Cancels whatever still runs: the calls' contexts turn inactive, so the workers drop
        # their queued jobs before the next batch.
        self.server.stop(None).wait()
        if self.trimmer is not None:
            self.trimmer.close()
        if self.metrics is not None:
            self.metrics.close()
        gc.unfreeze()


def start(
    options: ServerOptions,
    explainer: Explainer | None = None,
    activator: Activator | None = None,
    *,
    serving: bool = True,
) -> RunningServer:
    """Starts a server with health and reflection, and ExplainService when `explainer` is given
    (`activator` defaults to one with default limits on the same registry); `port=0` binds a
    free port. With `serving=False` health says NOT_SERVING and ExplainService answers
    UNAVAILABLE until `set_serving()` (load and warm up the models in between)."""
    state = ServingState()
    metrics = None
    if options.metrics_port is not None and explainer is not None:
        metrics = Metrics(explainer.registry)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.workers),
        options=channel_options(options),
        interceptors=[ServerInterceptor(state, options.auth_tokens, metrics)],
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names: list[str] = []
    if explainer is not None:
        explain_pb2_grpc.add_ExplainServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ExplainServicer(
                explainer,
                activator,
                options.max_tokens_per_input,
                max_response_bytes=options.max_message_bytes,
            ),
            server,
        )
        service_names.append(explain_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server, pool=_MethodAwarePool())
    address = f"{options.host}:{options.port}"
    credentials = server_credentials(options)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    running = RunningServer(server, port, health_servicer, state, service_names, metrics)
    running.trimmer = IdleTrimmer(lambda: state.in_flight, lambda: state.completed).start()
    if metrics is not None:
        running.metrics_port = metrics.serve(options.metrics_host, options.metrics_port or 0)
    if serving:
        freeze_heap()
        running.set_serving()
    log.info(
        "bound %s:%d%s, %s",
        options.host,
        port,
        " (TLS)" if credentials else "",
        "serving" if serving else "NOT_SERVING until the models are loaded",
    )
    return running


def freeze_heap() -> None:
    """Moves every object alive now out of the garbage collector's sight.

    The loaded models and libraries are hundreds of thousands of long-lived objects: without
    this, every few requests a full collection walks them all and stops every thread, the model
    workers included, for a quarter of a second (measured with MiniLM on 2 cores). Call it once
    the models are loaded."""
    gc.freeze()


def serve_forever(
    options: ServerOptions,
    explainer: Explainer | None = None,
    activator: Activator | None = None,
    load: Callable[[], None] | None = None,
) -> None:
    """Starts NOT_SERVING (health answers, ExplainService says UNAVAILABLE), runs `load` (load
    and warm up the models), turns SERVING and prints "explainserve listening on HOST:PORT",
    and runs until SIGTERM or SIGINT; then drains in-flight RPCs for the grace period."""
    running = start(options, explainer, activator, serving=False)
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.0f s", signum, options.grace_seconds)
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if load is not None:
        load()
    freeze_heap()
    if not stopped.is_set():
        running.set_serving()
        # Printed once ready: scripts wait for this line.
        print(f"explainserve listening on {options.host}:{running.port}", flush=True)
        if running.metrics_port is not None:
            print(
                f"explainserve metrics on {options.metrics_host}:{running.metrics_port}",
                flush=True,
            )
    stopped.wait()
    running.stop(options.grace_seconds)
    if explainer is not None:
        explainer.registry.close()
