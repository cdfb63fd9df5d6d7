"""Command line: `explainserve serve ...`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from explainserve.grpc.server import DEFAULT_MAX_MESSAGE_BYTES, ServerOptions, serve_forever


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `explainserve` command."""
    parser = argparse.ArgumentParser(prog="explainserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the gRPC server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="port to bind, 0 = any free port")
    serve.add_argument("--workers", type=int, default=8, help="gRPC handler threads")
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest request or response accepted (clients must raise theirs to match)",
    )
    serve.add_argument(
        "--grace-seconds", type=float, default=30.0, help="drain time on SIGTERM"
    )
    serve.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `explainserve` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        serve_forever(
            ServerOptions(
                host=args.host,
                port=args.port,
                workers=args.workers,
                max_message_bytes=args.max_message_bytes,
                grace_seconds=args.grace_seconds,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
