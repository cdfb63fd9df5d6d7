"""How the server listens: its settings (TOML keys and flags, see `explainserve.settings`). No
grpc or torch import here: the configuration imports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from explainserve.settings import option

# Well above gRPC's 4 MiB default: explanation batches and activations can be large.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    """How the server listens."""

    host: str = option("127.0.0.1", "address to bind")
    port: int = option(50051, "port to bind, 0 = any free port")
    #: Each call taken has a handler thread of its own from its start (mostly waiting on the
    #: models' workers), so that a drain knows every call it waits for: none queues for one.
    #: Health checks and Watch streams count too. HTTP calls, when HTTP is on, have a pool of
    #: as many threads of their own.
    max_concurrent_rpcs: int = option(
        256,
        "calls handled at once, each on a handler thread of its own; more are refused at once "
        "with RESOURCE_EXHAUSTED",
        minimum=1,
    )
    max_message_bytes: int = option(
        DEFAULT_MAX_MESSAGE_BYTES,
        "largest request or response (clients must raise theirs to match)",
        unit="bytes",
    )
    grace_seconds: float = option(30.0, "drain time on SIGTERM, seconds")
    #: A client balancing over replicas with health checks may pick this one until the
    #: NOT_SERVING update reaches it: such a call is served rather than refused.
    drain_delay_s: float = option(
        0.0,
        "on SIGTERM, keep taking new calls this long after health turns NOT_SERVING, so "
        "health-checking clients stop sending before calls are refused (0: refuse at once)",
        minimum=0,
    )
    #: See `explainserve.inputs`.
    max_tokens_per_input: int = option(
        0,
        "tokens per input at most, 0 = each model's maximum; longer inputs are rejected, or cut "
        "when the request sets truncate",
        minimum=0,
    )
    #: Bearer tokens accepted (metadata `authorization: Bearer <token>`); none = no auth.
    #: Health checks stay open. The configuration adds those of `auth_token_file`.
    auth_tokens: tuple[str, ...] = option(
        (), "bearer tokens accepted; none (and no file) = no authentication", flag=False
    )
    #: PEM server certificate chain and private key: TLS when both are given.
    tls_cert: Path | None = option(None, "PEM certificate chain: TLS with --tls-key")
    tls_key: Path | None = option(None, "PEM private key of --tls-cert")
    #: PEM CA bundle: clients must present a certificate it signed (mutual TLS).
    tls_client_ca: Path | None = option(None, "PEM CA of the client certificates: mutual TLS")
    keepalive_time_s: float = option(0.0, "ping idle clients every this many seconds (0: gRPC's)")
    keepalive_timeout_s: float = option(
        0.0, "close a connection whose ping gets no answer in this time (0: gRPC's)"
    )
    min_client_ping_interval_s: float = option(
        0.0, "clients may ping this often at most (0: gRPC's, 5 minutes)"
    )
    keepalive_permit_without_calls: bool = option(
        False, "let clients ping connections without calls in flight"
    )
    max_connection_idle_s: float = option(0.0, "close connections idle this long (0: never)")
    #: So that clients reconnect and spread over replicas.
    max_connection_age_s: float = option(
        0.0, "close connections this old, clients reconnect (0: never)"
    )
    max_connection_age_grace_s: float = option(
        0.0, "time in-flight calls get on a connection closed for its age (0: gRPC's)"
    )
    #: Prometheus metrics on http://metrics_host:metrics_port/metrics.
    metrics_port: int | None = option(None, "Prometheus metrics port (none: off; 0 = any free)")
    metrics_host: str = option("127.0.0.1", "address of the metrics port")
    #: HTTP/JSON beside gRPC (`explainserve.http`): the Open Inference Protocol's REST form,
    #: KServe's V1 protocol and every ExplainService RPC as JSON, on `host`, with the same
    #: tokens, TLS files, limits and drain.
    http_port: int | None = option(
        None, "HTTP/JSON port: OIP v2 REST, KServe V1, ExplainService as JSON (none: off; 0 = any)"
    )
    #: Extra channel arguments, appended last.
    extra_options: tuple[tuple[str, int | str], ...] = field(default_factory=tuple)
