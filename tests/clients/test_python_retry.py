"""The light client's retry policy (its gRPC service config), counted on a server that fails a
given number of attempts with a given status before answering."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc
import pytest
from client_server import handler_server

from explainserve_client import RETRY_POLICY, Client, pb, service_config
from explainserve_client.client import SERVICE


class Flaky(grpc.GenericRpcHandler):
    """ListModels that fails the first `failures` attempts with `code`, then answers."""

    def __init__(self) -> None:
        self.failures = 0
        self.code = grpc.StatusCode.UNAVAILABLE
        self.attempts = 0
        self.lock = threading.Lock()

    def reset(self, failures: int, code: grpc.StatusCode) -> None:
        with self.lock:
            self.failures, self.code, self.attempts = failures, code, 0

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != f"/{SERVICE}/ListModels":  # type: ignore[attr-defined]
            return None

        def list_models(
            request: pb.ListModelsRequest, context: grpc.ServicerContext
        ) -> pb.ListModelsResponse:
            with self.lock:
                self.attempts += 1
                fail = self.attempts <= self.failures
            if fail:
                context.abort(self.code, f"attempt {self.attempts} fails")
            return pb.ListModelsResponse(models=[pb.ModelInfo(name="m")])

        return grpc.unary_unary_rpc_method_handler(
            list_models,
            request_deserializer=pb.ListModelsRequest.FromString,
            response_serializer=pb.ListModelsResponse.SerializeToString,
        )


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[Flaky, str]]:
    handler = Flaky()
    with handler_server(handler) as target:
        yield handler, target


def test_unavailable_is_retried_until_it_answers(flaky: tuple[Flaky, str]) -> None:
    handler, target = flaky
    handler.reset(failures=2, code=grpc.StatusCode.UNAVAILABLE)
    with Client(target) as client:
        assert [m.name for m in client.list_models()] == ["m"]
    assert handler.attempts == 3


def test_retries_stop_at_max_attempts(flaky: tuple[Flaky, str]) -> None:
    handler, target = flaky
    handler.reset(failures=100, code=grpc.StatusCode.UNAVAILABLE)
    with Client(target) as client, pytest.raises(grpc.RpcError) as err:
        client.list_models()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert handler.attempts == RETRY_POLICY["maxAttempts"] == 5


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAUTHENTICATED,
    ],
)
def test_other_errors_are_not_retried(flaky: tuple[Flaky, str], code: grpc.StatusCode) -> None:
    handler, target = flaky
    handler.reset(failures=1, code=code)
    with Client(target) as client, pytest.raises(grpc.RpcError) as err:
        client.list_models()
    assert err.value.code() == code
    assert handler.attempts == 1


def test_retry_can_be_turned_off(flaky: tuple[Flaky, str]) -> None:
    handler, target = flaky
    handler.reset(failures=1, code=grpc.StatusCode.UNAVAILABLE)
    with Client(target, retry=False) as client, pytest.raises(grpc.RpcError) as err:
        client.list_models()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert handler.attempts == 1


def test_service_config_names_the_service() -> None:
    (method,) = json.loads(service_config())["methodConfig"]
    assert method["name"] == [{"service": "explainserve.v1.ExplainService"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "retryPolicy" not in json.loads(service_config(retry=False))["methodConfig"][0]


def test_balanced_service_config_round_robins_over_healthy_replicas() -> None:
    config = json.loads(service_config(balance=True))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": "explainserve.v1.ExplainService"}
    assert config["methodConfig"][0]["retryPolicy"] == RETRY_POLICY
    assert "loadBalancingConfig" not in json.loads(service_config())
