"""Command line: `explainserve serve ...`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from explainserve.config import ServeConfig, load_toml, parse_model_flag


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `explainserve` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        from explainserve.activations.service import Activator
        from explainserve.explain.service import Explainer
        from explainserve.grpc.server import ServerOptions, serve_forever
        from explainserve.models.registry import Registry, load_model

        config = config_from_args(args)
        limits = config.activation_limits()
        explain_limits = config.explain_limits()
        registry = Registry()
        for model_config in config.model_configs():
            registry.add(load_model(model_config))
        serve_forever(
            ServerOptions(
                host=config.host,
                port=config.port,
                workers=config.workers,
                max_message_bytes=config.max_message_bytes,
                grace_seconds=config.grace_seconds,
                max_tokens_per_input=config.max_tokens_per_input,
            ),
            Explainer(registry, explain_limits),
            Activator(registry, limits),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
