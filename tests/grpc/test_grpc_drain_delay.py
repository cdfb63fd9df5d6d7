"""`drain_delay_s`: once a drain starts, health says NOT_SERVING at once, but new calls are still
served for the delay (a balancing client may pick the replica until its health check sees the
change)."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from explainserve.explain.service import Explainer
from explainserve.grpc.server import ServerOptions, start
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

SMALL = pb.ExplainRequest(model="bert", inputs=[pb.Input(text="Fine.")], occlusion=pb.Occlusion())
SERVICE = "explainserve.v1.ExplainService"


def test_calls_are_served_during_the_drain_delay(explainer: Explainer) -> None:
    running = start(ServerOptions(port=0), explainer)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=60
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        # 10 s: far longer than one call takes on a loaded machine, so the call below lands
        # inside the delay.
        stopper = threading.Thread(target=running.stop, args=(30.0, 10.0))
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert running.state.state == "serving"
        assert stub.Explain(SMALL, timeout=30).explanations
        # Then new calls are refused (tests/grpc/test_grpc_operability.py shows it with a call
        # in flight); with none, the server stops once the delay is over.
        stopper.join(60)
        assert not stopper.is_alive()
        assert running.state.state == "closed"  # drained, then closed
        watch.cancel()
