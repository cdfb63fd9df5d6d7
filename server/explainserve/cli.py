"""Command line: `explainserve serve ...`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explainserve.config import ServeConfig, load_toml, parse_model_flag

if TYPE_CHECKING:
    from explainserve.explain.service import Explainer


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `explainserve` command."""
    parser = argparse.ArgumentParser(prog="explainserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the gRPC server")
    serve.add_argument("--config", type=Path, help="TOML file with any of the options below")
    serve.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help="serve the model in local directory PATH as NAME (repeatable); "
        "none = the embedded default sentiment classifier",
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 50051), 0 = any free port")
    serve.add_argument("--workers", type=int, help="gRPC handler threads (default 8)")
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        help="largest request or response (default 64 MiB; clients must raise theirs to match)",
    )
    serve.add_argument("--grace-seconds", type=float, help="drain time on SIGTERM (default 30)")
    serve.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    serve.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    serve.add_argument(
        "--replacement-fallback",
        choices=["unk", "pad", "eos", "zero_embedding"],
        help="replacement when the tokenizer has no mask token (default unk)",
    )
    serve.add_argument("--token-budget", type=int, help="tokens per forward batch (default 8192)")
    serve.add_argument(
        "--gradient-token-budget", type=int, help="tokens per gradient batch (default 4096)"
    )
    for flag, what, default in [
        ("--max-inputs", "Explain: inputs per request", "256"),
        ("--max-rows-per-input", "Explain: sequences per input (perturbations, steps)", "50000"),
        ("--max-targets", "Explain: targets per input", "64"),
        ("--max-tokens-per-input", "tokens per input, 0 = the model's maximum", "0"),
        ("--max-activation-inputs", "GetActivations: inputs per request", "100000"),
        ("--max-new-tokens", "causal LMs: tokens generated per input", "256"),
        ("--max-continuation-tokens", "causal LMs: tokens of a given continuation", "256"),
        ("--logits-budget", "causal LMs: positions x vocabulary of logits per batch", "2^26"),
    ]:
        serve.add_argument(flag, type=int, help=f"{what} at most (default {default})")
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        help="how long a queued job may wait for others to share its batch (default 2)",
    )
    serve.add_argument(
        "--max-queued-rows",
        type=int,
        help="sequences waiting per model before RESOURCE_EXHAUSTED (default 200000)",
    )
    serve.add_argument(
        "--activation-chunk-inputs", type=int, help="GetActivations: inputs per chunk (default 256)"
    )
    serve.add_argument(
        "--activation-chunk-bytes",
        type=int,
        help="GetActivations: tensor bytes per chunk (default 1 MiB)",
    )
    serve.add_argument(
        "--activation-prefetch-chunks",
        type=int,
        help="GetActivations: chunks computed ahead of the one being sent (default 4)",
    )
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        help="bearer tokens accepted, one per line (default: no authentication)",
    )
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain: TLS with --tls-key")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA of the client certificates: mutual TLS"
    )
    for flag, what in [
        ("--keepalive-time-s", "ping idle clients every this many seconds"),
        ("--keepalive-timeout-s", "close a connection whose ping gets no answer in this time"),
        ("--min-client-ping-interval-s", "clients may ping this often at most"),
        ("--max-connection-idle-s", "close connections idle this long"),
        ("--max-connection-age-s", "close connections this old (clients reconnect)"),
        ("--max-connection-age-grace-s", "time in-flight calls get on a closed connection"),
    ]:
        serve.add_argument(flag, type=float, help=f"{what} (default 0: gRPC's default / never)")
    serve.add_argument(
        "--keepalive-permit-without-calls",
        action="store_true",
        default=None,
        help="let clients ping connections without calls in flight",
    )
    serve.add_argument(
        "--reuse",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="causal LMs: run perturbed rows from their first change on the cached prefix; run "
        "identical rows and inputs once (default on; --no-reuse only to measure what it saves)",
    )
    serve.add_argument(
        "--metrics-port", type=int, help="Prometheus metrics port (default off; 0 = any free)"
    )
    serve.add_argument("--metrics-host", help="address of the metrics port (default 127.0.0.1)")
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines (default text)")
    serve.add_argument("--log-level", default="INFO")
    return parser


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Defaults, then the TOML file, then the flags given."""
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(load_toml(args.config))
    for f in fields(ServeConfig):
        flag = getattr(args, f.name, None)
        if flag is not None and f.name != "models":
            values[f.name] = flag
    if args.model:
        values["models"] = dict(parse_model_flag(m) for m in args.model)
    return ServeConfig(**values)


def setup_logging(level: str, fmt: str) -> None:
    """Text or JSON log lines on stderr, each with the request id of the RPC it is about."""
    from explainserve.grpc.interceptors import RequestIdFilter
    from explainserve.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def warm_up(explainer: Explainer, model: str) -> None:
    """One small explanation of each kind (forward and gradient), so the first client does not
    pay for lazy initialisation (kernels, allocator, tokenizer caches)."""
    from explainserve.explain.params import ExplainParams, Gradient, InputSpec, Occlusion

    for method in (Occlusion(), Gradient(kind="saliency")):
        list(explainer.explain(ExplainParams(model, [InputSpec(text="Warm up.")], method)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `explainserve` command."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        config = config_from_args(args)
        setup_logging(args.log_level, config.log_format)
        from explainserve.activations.service import Activator
        from explainserve.explain.service import Explainer
        from explainserve.grpc.server import ServerOptions, serve_forever
        from explainserve.models.registry import Registry, load_model

        limits = config.activation_limits()
        explain_limits = config.explain_limits()
        registry = Registry()
        explainer = Explainer(registry, explain_limits)

        def load() -> None:
            for model_config in config.model_configs():
                registry.add(load_model(model_config))
                warm_up(explainer, model_config.name)

        serve_forever(
            ServerOptions(
                host=config.host,
                port=config.port,
                workers=config.workers,
                max_message_bytes=config.max_message_bytes,
                grace_seconds=config.grace_seconds,
                max_tokens_per_input=config.max_tokens_per_input,
                auth_tokens=config.tokens(),
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                tls_client_ca=config.tls_client_ca,
                keepalive_time_s=config.keepalive_time_s,
                keepalive_timeout_s=config.keepalive_timeout_s,
                min_client_ping_interval_s=config.min_client_ping_interval_s,
                keepalive_permit_without_calls=config.keepalive_permit_without_calls,
                max_connection_idle_s=config.max_connection_idle_s,
                max_connection_age_s=config.max_connection_age_s,
                max_connection_age_grace_s=config.max_connection_age_grace_s,
                metrics_port=config.metrics_port,
                metrics_host=config.metrics_host,
            ),
            explainer,
            Activator(registry, limits),
            load,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
