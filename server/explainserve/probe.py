"""A gRPC health probe: `python -m explainserve.probe [--target HOST:PORT] [--service NAME]`.

Asks `grpc.health.v1.Health/Check` and exits 0 when the answer is SERVING, 1 otherwise (NOT_SERVING
while the models load or the server drains, no answer, an error). The container image's
HEALTHCHECK runs it; it imports grpc and the health stubs only, no torch, so it costs a fraction of
a second. (Kubernetes probes the same service natively with `grpc:` probes, and
grpc_health_probe does the same job, but it is one more binary to build into the image.)
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: The service whose health is asked by default: ExplainService, SERVING once the models are
#: loaded and warmed up (the empty name "" is the whole server).
DEFAULT_SERVICE = "explainserve.v1.ExplainService"


def check(target: str, service: str = DEFAULT_SERVICE, timeout: float = 5.0) -> str:
    """The health status of `service` at `target` ("SERVING", "NOT_SERVING", ...), or the gRPC
    status code's name ("UNAVAILABLE", "DEADLINE_EXCEEDED", ...) when the call fails."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return str(e.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str] | None = None) -> int:
    """Prints the status; 0 when SERVING."""
    parser = argparse.ArgumentParser(
        prog="python -m explainserve.probe", description="gRPC health check of ExplainServe"
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the server")
    parser.add_argument("--service", default=DEFAULT_SERVICE, help='service name ("": server)')
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    args = parser.parse_args(argv)
    status = check(args.target, args.service, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
