"""Hostile and careless inputs: bounded error statuses whatever the input, x-request-id in the
trailers, non-finite activations refused, health List, and a 10 MB text refused cheaply."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from explainserve.launch import spawn_serve
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: The bound the issue asks for: message + details of a status under 4 KiB.
STATUS_BYTES = 4096
LONG_NAME = "m" * 100_000
#: The head of the tiny BERT takes [rows, 32]; a 1,000-value shape is nonsense of any kind.
LONG_SHAPE = [1] * 1000


def status_bytes(error: grpc.RpcError) -> int:
    """Bytes of the status the client got: message (UTF-8) + serialized details."""
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    details = trailers.get("grpc-status-details-bin", b"")
    assert isinstance(details, bytes)
    return len((error.details() or "").encode()) + len(details)


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        out.extend((v.field, v.description) for v in bad.field_violations)
    return out


def test_a_huge_model_name_gets_not_found_with_a_bounded_status(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    calls = {
        "GetModel": lambda: stub.GetModel(pb.GetModelRequest(name=LONG_NAME), timeout=30),
        "Explain": lambda: stub.Explain(
            pb.ExplainRequest(
                model=LONG_NAME, inputs=[pb.Input(text="Hi.")], occlusion=pb.Occlusion()
            ),
            timeout=30,
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, name
        details = err.value.details()
        assert f"'{'m' * 200}…(100000 chars)'" in details, name
        assert "loaded models: bert, gpt2" in details
        assert status_bytes(err.value) < STATUS_BYTES


def test_a_huge_shape_gets_invalid_argument_with_a_bounded_status(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    activations = pb.Tensor(dtype="float32", shape=LONG_SHAPE, data=b"\0" * 4)
    with pytest.raises(grpc.RpcError) as err:
        stub.PredictFromActivations(
            pb.PredictFromActivationsRequest(model="bert", activations=activations), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    shown = str(LONG_SHAPE)
    assert f"{shown[:200]}…({len(shown)} chars)" in err.value.details()
    assert violations(err.value) == [("activations.shape", err.value.details())]
    assert status_bytes(err.value) < STATUS_BYTES


def test_any_message_is_bounded_in_bytes(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    """A value no message quotes through `quote` (a label target, 4-byte characters) is bounded
    by the status table all the same."""
    label = "😀" * 50_000
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(
            pb.ExplainRequest(
                model="bert",
                inputs=[pb.Input(text="Fine words.", targets=[pb.Target(label=label)])],
                occlusion=pb.Occlusion(),
            ),
            timeout=30,
        )
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert "…(" in err.value.details()
    assert status_bytes(err.value) < STATUS_BYTES


def test_the_request_id_is_in_the_trailers_of_errors_and_successes(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    ok, call = stub.GetModel.with_call(pb.GetModelRequest(name="bert"), timeout=30)
    assert ok.model.name == "bert"
    trailers = dict(call.trailing_metadata())
    assert len(trailers["x-request-id"]) == 16
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(
            pb.GetModelRequest(name="nope"), timeout=30, metadata=[("x-request-id", "abc-123")]
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(err.value.trailing_metadata())["x-request-id"] == "abc-123"  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_activations_are_refused(
    stub: explain_pb2_grpc.ExplainServiceStub, value: float
) -> None:
    rows = np.zeros((3, 32), dtype="<f4")
    rows[1, 5] = value
    activations = pb.Tensor(dtype="float32", shape=[3, 32], data=rows.tobytes())
    with pytest.raises(grpc.RpcError) as err:
        stub.PredictFromActivations(
            pb.PredictFromActivationsRequest(model="bert", activations=activations), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "activations have 1 non-finite values (NaN or infinity), in 1 rows, the first row 1"
    )
    assert violations(err.value)[0][0] == "activations.data"


def test_health_list_gives_every_service(live_server: object) -> None:
    port = live_server.port  # type: ignore[attr-defined]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in reply.statuses.items()} == {
        "": serving,
        "explainserve.v1.ExplainService": serving,
        "inference.GRPCInferenceService": serving,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def served(tiny_bert_dir: Path) -> Iterator[tuple[int, explain_pb2_grpc.ExplainServiceStub]]:
    """(pid, stub) of an `explainserve serve` process on the tiny BERT (128 tokens at most)."""
    proc, port = spawn_serve(
        ["--model", f"bert={tiny_bert_dir}", "--port", "0", "--device", "cpu"], timeout=120
    )
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
        ) as channel:
            yield proc.pid, explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        proc.terminate()
        proc.wait(60)


def test_a_ten_megabyte_text_is_refused_for_little_server_cpu(
    served: tuple[int, explain_pb2_grpc.ExplainServiceStub],
) -> None:
    """Tokenizing 10 MB takes seconds of CPU (17 s measured with a BERT tokenizer on this
    project's 2-core machine); the character bound (16 per token of the 128-token limit: 2,048)
    refuses it before any tokenizing. The bound of 250 ms is on CPU time, which a loaded machine
    does not inflate as it does wall time: receiving, copying and parsing 10 MB in gRPC and
    protobuf measured 50-60 ms of the server's CPU, and 250 ms is still 60x below tokenizing."""
    pid, stub = served
    text = "word " * 2_000_000
    # A warm connection and warm code paths: the first call of each RPC imports and caches.
    stub.Explain(
        pb.ExplainRequest(model="bert", inputs=[pb.Input(text="Hi.")], occlusion=pb.Occlusion()),
        timeout=60,
    )
    list(stub.GetActivations(pb.GetActivationsRequest(model="bert", inputs=[pb.Input(text="Hi.")])))
    calls = {
        "Explain": lambda: stub.Explain(
            pb.ExplainRequest(model="bert", inputs=[pb.Input(text=text)], occlusion=pb.Occlusion()),
            timeout=60,
        ),
        "GetActivations": lambda: list(
            stub.GetActivations(
                pb.GetActivationsRequest(model="bert", inputs=[pb.Input(text=text)]), timeout=60
            )
        ),
    }
    for rpc in calls:
        # The least of three calls: CPU time is counted in 10 ms ticks and includes the server's
        # other threads (gRPC pollers, the metrics collector), which add a tick or two to one
        # call now and then; tokenizing would cost seconds on every call.
        used = []
        for _ in range(3):
            time.sleep(0.2)  # let the server's idle threads settle
            before = cpu_seconds(pid)
            with pytest.raises(grpc.RpcError) as err:
                calls[rpc]()
            used.append(cpu_seconds(pid) - before)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
            assert err.value.details() == (
                "input 0 has 10000000 characters, more than the limit of 2048 (16 per token of "
                "the 128-token limit): shorten it, or set truncate to cut it"
            )
        assert min(used) < 0.25, (rpc, used)


def test_a_ten_megabyte_text_with_truncate_is_cut(
    served: tuple[int, explain_pb2_grpc.ExplainServiceStub],
) -> None:
    pid, stub = served
    before = cpu_seconds(pid)
    reply = stub.Explain(
        pb.ExplainRequest(
            model="bert",
            inputs=[pb.Input(text="word " * 2_000_000)],
            saliency=pb.Saliency(),
            truncate=True,
        ),
        timeout=60,
    )
    (explanation,) = reply.explanations
    assert len(explanation.units) == 126  # 128 tokens, [CLS] and [SEP] included
    assert explanation.text == ("word " * 126).rstrip()
    print("CPU seconds for a truncated 10 MB text, explained:", cpu_seconds(pid) - before)
