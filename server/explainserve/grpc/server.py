"""Builds and runs the gRPC server: ExplainService, the Open Inference Protocol v2, health,
reflection, the interceptor (serving state, authentication, request ids, metrics), TLS,
keepalive and the metrics endpoint."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from explainserve.activations.service import Activator
from explainserve.concepts.service import ConceptExplainer
from explainserve.explain.service import Explainer
from explainserve.grpc.interceptors import ServerInterceptor, ServingState
from explainserve.grpc.oip import SERVICE_NAME as OIP_SERVICE_NAME
from explainserve.grpc.oip import OipServicer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.servicer import ExplainServicer
from explainserve.memory import IdleTrimmer
from explainserve.metrics import Metrics
from explainserve.oip import grpc_predict_v2_pb2_grpc
from explainserve.v1 import explain_pb2, explain_pb2_grpc

log = logging.getLogger(__name__)


def channel_options(options: ServerOptions) -> list[tuple[str, int | str]]:
    """The grpc server arguments for `options` (message sizes, keepalive, connection age)."""
    out: list[tuple[str, int | str]] = [
        # gRPC's default (on) lets a second server bind a port that is already serving, and
        # the two then share it by accident: off, a busy port fails at start.
        ("grpc.so_reuseport", 0),
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


#: The reflection services registered: v1 (what current clients, grpcurl and Postman ask for
#: first) and v1alpha (older clients).
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_SERVICE_NAMES = (REFLECTION_V1, reflection.SERVICE_NAME)


def _reflection_v1_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding `grpc/reflection/v1/reflection.proto`. grpcio-reflection ships only the
    v1alpha module; v1 is the same file under another package (same messages, same field
    numbers), so it is built here from v1alpha's descriptor by renaming the package."""
    old, new = reflection_pb2.DESCRIPTOR.package, "grpc.reflection.v1"
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = new
    proto.ClearField("options")
    for message in proto.message_type:
        for f in message.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(f".{old}.", f".{new}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old}.", f".{new}.")
            method.output_type = method.output_type.replace(f".{old}.", f".{new}.")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


class _MethodAwarePool:
    """The default descriptor pool for server reflection, also finding the file of a method
    symbol ("pkg.Service.Method"), which the Python pool does not, and which some clients
    (ghz) ask for, and the v1 reflection file (which the default pool does not hold)."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()
        self._v1 = _reflection_v1_pool()

    def FindFileByName(self, name: str) -> Any:  # noqa: N802 (the pool's API)
        try:
            return self._pool.FindFileByName(name)
        except KeyError:
            return self._v1.FindFileByName(name)

    def FindFileContainingSymbol(self, name: str) -> Any:  # noqa: N802 (the pool's API)
        for pool in (self._pool, self._v1):
            try:
                return pool.FindFileContainingSymbol(name)
            except KeyError:
                pass
        parent, _, method = name.rpartition(".")
        for pool in (self._pool, self._v1):
            try:
                service = pool.FindServiceByName(parent)
            except KeyError:
                continue
            if method in service.methods_by_name:
                return service.file
        raise KeyError(name)

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


def _add_reflection(server: grpc.Server, service_names: list[str]) -> None:
    """Reflection v1alpha and v1 over the same servicer: the two protocols are wire-identical,
    so v1 calls are (de)serialized with v1alpha's message classes."""
    names = [*service_names, health.SERVICE_NAME, *REFLECTION_SERVICE_NAMES]
    reflection.enable_server_reflection(names, server, pool=_MethodAwarePool())
    servicer = reflection.ReflectionServicer(names, pool=_MethodAwarePool())
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


class Companion(Protocol):
    """Another transport served beside gRPC by the same process (HTTP/JSON): it answers through
    the same servicers and counts its calls in the same serving state, so a drain waits for
    them; `close` stops it (cancelling what still runs) once the drain is over."""

    #: The line `serve_forever` prints once serving ("explainserve http on HOST:PORT").
    announcement: str

    def close(self) -> None:
        """Stops serving; calls still running are cancelled."""


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
    #: The servicers (None without an explainer), which other transports answer through too.
    explain_servicer: ExplainServicer | None = None
    oip_servicer: OipServicer | None = None
    #: What gRPC's interceptor was given: bearer tokens and the call ledger (metrics, logs).
    interceptor: ServerInterceptor | None = None
    #: The options the server was started with.
    options: ServerOptions | None = None
    #: Other transports on the same servicers and state (`Companion`), stopped after the drain.
    companions: list[Companion] = field(default_factory=list)

    def set_serving(self) -> None:
        """Models loaded and warmed up: health SERVING, ExplainService takes work."""
        if self.metrics is not None:
            self.metrics.watch_workers()
        self.state.set_serving()
        for name in ["", *self.service_names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None, delay: float = 0.0) -> None:
        """Drains, then stops. Draining: every service NOT_SERVING (health checks still
        answered, so load balancers see it), new ExplainService calls UNAVAILABLE after `delay`
        seconds (taken until then), and the calls in flight get up to `grace` seconds more to
        finish and send their replies; then the calls still running are logged (what they are,
        for how long) and cancelled, and the server stops. `grace=None`: stop at once."""
        self.health.enter_graceful_shutdown()
        self.state.stop_ready()
        if grace is not None and delay > 0:
            time.sleep(delay)
        self.state.set_draining()
        if grace is not None and not self.state.wait_idle(grace):
            running = self.state.running()
            log.warning(
                "grace period of %.1f s over: cancelling %d calls still running: %s",
                grace,
                len(running),
                "; ".join(running),
            )
        self.state.set_closed()
        # Cancels whatever still runs: the calls' contexts turn inactive, so the workers drop
        # their queued jobs before the next batch.
        self.server.stop(None).wait()
        for companion in self.companions:
            companion.close()
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
    concept_explainer: ConceptExplainer | None = None,
    companions: Sequence[Callable[[RunningServer], Companion]] = (),
) -> RunningServer:
    """Starts a server with health and reflection, and ExplainService when `explainer` is given
    (`activator` defaults to one with default limits on the same registry); `port=0` binds a
    free port. With `serving=False` health says NOT_SERVING and ExplainService answers
    UNAVAILABLE until `set_serving()` (load and warm up the models in between). Each of
    `companions` starts another transport on the started server (`Companion`)."""
    state = ServingState()
    metrics = None
    if options.metrics_port is not None and explainer is not None:
        metrics = Metrics(explainer.registry)
    # A handler thread for every call the server takes, and gRPC refusing the calls beyond
    # that bound at once (RESOURCE_EXHAUSTED): no taken call waits for a thread in the pool's
    # queue, where a drain would neither know nor wait for it, and start it only to refuse it
    # once draining. The threads mostly wait on the models' workers (the queue of work, with
    # its own bound, is theirs), so they are many and cheap.
    bound = options.max_concurrent_rpcs
    interceptor = ServerInterceptor(state, options.auth_tokens, metrics)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=bound, thread_name_prefix="grpc-handler"),
        options=channel_options(options),
        interceptors=[interceptor],
        maximum_concurrent_rpcs=bound,
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names: list[str] = []
    explain_servicer = oip_servicer = None
    if explainer is not None:
        # One activator for both protocols: OIP's ModelInfer is an activation request.
        activator = activator or Activator(explainer.registry)
        explain_servicer = ExplainServicer(
            explainer,
            activator,
            options.max_tokens_per_input,
            max_response_bytes=options.max_message_bytes,
            concept_explainer=concept_explainer,
        )
        explain_pb2_grpc.add_ExplainServiceServicer_to_server(explain_servicer, server)  # type: ignore[no-untyped-call]
        service_names.append(explain_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name)
        oip_servicer = OipServicer(
            activator,
            lambda: state.ready,
            options.max_tokens_per_input,
            max_response_bytes=options.max_message_bytes,
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(oip_servicer, server)  # type: ignore[no-untyped-call]
        service_names.append(OIP_SERVICE_NAME)
    _add_reflection(server, service_names)
    address = f"{options.host}:{options.port}"
    credentials = server_credentials(options)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"could not bind {address}: {_bind_failure(options.host, options.port)}")
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    running = RunningServer(
        server,
        port,
        health_servicer,
        state,
        service_names,
        metrics,
        explain_servicer=explain_servicer,
        oip_servicer=oip_servicer,
        interceptor=interceptor,
        options=options,
    )
    try:
        for make in companions:
            running.companions.append(make(running))
    except BaseException:
        running.stop(None)
        raise
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


def _bind_failure(host: str, port: int) -> str:
    """Why `host:port` cannot be bound, as the operating system says it (gRPC only says that
    it failed): "address in use" for a busy port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "address in use (another server listens on this port)"
            return e.strerror or str(e)
    return "gRPC refused the address"


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
    concept_explainer: ConceptExplainer | None = None,
    companions: Sequence[Callable[[RunningServer], Companion]] = (),
) -> None:
    """Starts NOT_SERVING (health answers, ExplainService says UNAVAILABLE), runs `load` (load
    and warm up the models), turns SERVING and prints "explainserve listening on HOST:PORT"
    (then the metrics' port and each companion's announcement), and runs until SIGTERM or
    SIGINT; then drains in-flight calls of every transport for the grace period."""
    running = start(
        options,
        explainer,
        activator,
        serving=False,
        concept_explainer=concept_explainer,
        companions=companions,
    )
    stopped = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.0f s", signum, options.grace_seconds)
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if load is not None:
        try:
            load()
        except BaseException:
            running.stop(None)
            raise
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
        for companion in running.companions:
            print(companion.announcement, flush=True)
    stopped.wait()
    running.stop(options.grace_seconds, options.drain_delay_s)
    if explainer is not None:
        explainer.registry.close()
