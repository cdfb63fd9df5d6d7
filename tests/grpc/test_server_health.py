"""A live server on loopback: health, reflection, and SIGTERM draining of the CLI process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, start
from explainserve.launch import spawn_serve
from explainserve.v1 import explain_pb2, explain_pb2_grpc


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start(ServerOptions(port=0))
    yield running
    running.stop(grace=None)


def test_health_is_serving_on_a_free_port(server: RunningServer) -> None:
    assert server.port > 0
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in replies[0].list_services_response.service}
        assert "grpc.health.v1.Health" in names
        assert "grpc.reflection.v1alpha.ServerReflection" in names
        assert "grpc.reflection.v1.ServerReflection" in names


def test_stop_marks_not_serving() -> None:
    running = start(ServerOptions(port=0))
    running.health.enter_graceful_shutdown()
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    running.stop(grace=None)


def test_cli_serves_then_exits_zero_on_sigterm(tiny_bert_dir: Path) -> None:
    # A --model keeps the test fast: without one the CLI builds the embedded default model.
    proc, port = spawn_serve(
        [
            "--port",
            "0",
            "--grace-seconds",
            "2",
            "--device",
            "cpu",
            "--model",
            f"tiny={tiny_bert_dir}",
        ],
        timeout=60,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "explainserve.v1.ExplainService"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            explain = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            listed = explain.ListModels(explain_pb2.ListModelsRequest(), timeout=5).models
            assert [m.name for m in listed] == ["tiny"]
            model = explain.GetModel(explain_pb2.GetModelRequest(name="tiny"), timeout=5).model
            assert model == listed[0]
            assert list(model.labels) == ["negative", "neutral", "positive"]
            assert model.max_length == 128
            assert model.device == "cpu"
            assert model.replacement == "mask_token"
            with pytest.raises(grpc.RpcError) as err:
                explain.GetModel(explain_pb2.GetModelRequest(name="bert"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "loaded models: tiny" in err.value.details()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reflection_finds_a_method_symbol(server: RunningServer) -> None:
    """Some clients (ghz) ask for the file of "package.Service.Method"."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        for symbol, found in [
            ("grpc.health.v1.Health.Check", True),
            ("grpc.health.v1.Health", True),
            ("grpc.health.v1.Health.Nope", False),
            ("no.such.Service.Method", False),
        ]:
            request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
            (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
            assert reply.HasField("file_descriptor_response") == found, symbol


def test_reflection_v1_answers_like_v1alpha(server: RunningServer) -> None:
    """Reflection v1 (what current clients ask for first) is served beside v1alpha: the same
    services listed, and the v1 protocol's own file described."""
    from google.protobuf import descriptor_pb2

    v1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        # The v1 messages are v1alpha's under another package name: the same bytes on the wire.
        call = channel.stream_stream(
            v1,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = call(iter([listing]), timeout=5)
        names = {s.name for s in reply.list_services_response.service}
        assert {
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        old = reflection_pb2_grpc.ServerReflectionStub(channel)
        (old_reply,) = old.ServerReflectionInfo(iter([listing]), timeout=5)
        assert {s.name for s in old_reply.list_services_response.service} == names
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.health.v1.Health.Check"
        )
        (found,) = call(iter([request]), timeout=5)
        health_file = descriptor_pb2.FileDescriptorProto.FromString(
            found.file_descriptor_response.file_descriptor_proto[0]
        )
        assert health_file.package == "grpc.health.v1"
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        )
        (found,) = call(iter([request]), timeout=5)
        v1_file = descriptor_pb2.FileDescriptorProto.FromString(
            found.file_descriptor_response.file_descriptor_proto[0]
        )
        assert (v1_file.name, v1_file.package) == (
            "grpc/reflection/v1/reflection.proto",
            "grpc.reflection.v1",
        )
        method = v1_file.service[0].method[0]
        assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
