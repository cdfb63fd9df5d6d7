"""The Open Inference Protocol v2 on the live server: Triton's own client (tritonclient, in a
process of its own) against GetActivations, the vendored proto against Triton's, and the errors
of bad requests through our generated stub."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from oip_checks import POINTS, TEXTS, TOL, logits, rows, run_triton

from explainserve.explain.service import Explainer
from explainserve.grpc.server import ServerOptions, start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.oip import grpc_predict_v2_pb2 as oip
from explainserve.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def triton_run(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """What tests/grpc/oip_triton_client.py saw (result.json, arrays.npz)."""
    out = tmp_path_factory.mktemp("triton")
    return run_triton(HERE / "oip_triton_client.py", f"127.0.0.1:{live_server.port}", out)


@pytest.fixture(scope="module")
def oip_stub(live_server: Any) -> oip_grpc.GRPCInferenceServiceStub:
    """Our generated OIP stub on the shared server."""
    return oip_grpc.GRPCInferenceServiceStub(live_server.channel)  # type: ignore[no-untyped-call]


def test_tritonclient_gets_the_logits_and_activations_of_get_activations(
    triton_run: Any, stub: explain_pb2_grpc.ExplainServiceStub
) -> None:
    result, arrays = triton_run
    chunks = list(
        stub.GetActivations(
            pb.GetActivationsRequest(
                model="bert",
                inputs=[pb.Input(text=t) for t in TEXTS],
                split_points=POINTS,
                include_predictions=True,
            ),
            timeout=60,
        )
    )
    expected_logits = logits(chunks)
    assert expected_logits.shape == (3, 3)
    np.testing.assert_allclose(arrays["text/logits"], expected_logits, rtol=0, atol=TOL)
    np.testing.assert_allclose(arrays["default/logits"], expected_logits, rtol=0, atol=TOL)
    for name in POINTS:
        expected = rows(chunks, name)
        assert expected.shape == (3, 32)
        assert arrays[f"text/{name}"].dtype == np.float32
        np.testing.assert_allclose(arrays[f"text/{name}"], expected, rtol=0, atol=TOL)
    assert result["text_id"] == "oip-text-1"
    assert result["text_outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [3, 3]},
        {"name": "classifier:input", "datatype": "FP32", "shape": [3, 32]},
        {"name": "bert.encoder.layer.1", "datatype": "FP32", "shape": [3, 32]},
    ]
    assert result["default_outputs"] == ["logits"]


def test_tritonclient_token_ids_with_all_tokens(
    triton_run: Any, stub: explain_pb2_grpc.ExplainServiceStub
) -> None:
    _, arrays = triton_run
    ids, mask = arrays["ids/input_ids"], arrays["ids/attention_mask"]
    chunks = list(
        stub.GetActivations(
            pb.GetActivationsRequest(
                model="bert",
                inputs=[
                    pb.Input(token_ids=pb.TokenIds(ids=i.tolist(), attention_mask=m.tolist()))
                    for i, m in zip(ids, mask, strict=True)
                ],
                split_points=["bert.encoder.layer.1"],
                granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
                include_predictions=True,
            ),
            timeout=60,
        )
    )
    expected = rows(chunks, "bert.encoder.layer.1").reshape(2, 5, 32)
    got = arrays["ids/bert.encoder.layer.1"]
    assert got.shape == (2, 5, 32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(arrays["ids/logits"], logits(chunks), rtol=0, atol=TOL)
    # The padded row's mask matters: its logits differ from the same ids unmasked.
    unmasked = list(
        stub.GetActivations(
            pb.GetActivationsRequest(
                model="bert",
                inputs=[pb.Input(token_ids=pb.TokenIds(ids=ids[0].tolist()))],
                include_predictions=True,
            ),
            timeout=60,
        )
    )
    assert np.abs(logits(unmasked)[0] - arrays["ids/logits"][0]).max() > 1e-4


def test_tritonclient_health_and_metadata(triton_run: Any, live_server: Any) -> None:
    result, _ = triton_run
    assert result["live"] is True
    assert result["ready"] is True
    assert result["model_ready"] is True
    assert result["server_metadata"]["name"] == "explainserve"
    assert result["server_metadata"]["version"] == "0.1.0"
    meta = result["model_metadata"]
    assert meta["name"] == "bert"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "explainserve_transformers"
    assert meta["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": ["-1"]},
        {"name": "input_ids", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "attention_mask", "datatype": "INT64", "shape": ["-1", "-1"]},
    ]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": ["-1", "3"]}
    model = live_server.explainer.registry.get("bert")
    assert list(outputs) == ["logits", *(name for name, _ in model.split_points)]
    assert outputs["bert.encoder.layer.1"]["shape"] == ["-1", "32"]
    assert outputs["classifier:input"]["shape"] == ["-1", "32"]


def test_tritonclient_errors(triton_run: Any) -> None:
    errors = triton_run[0]["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "nope" in errors["unknown_model"]["message"]
    assert "bert" in errors["unknown_model"]["message"]  # the loaded models are listed
    assert errors["unknown_output"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "bert.encoder.layer.9" in errors["unknown_output"]["message"]
    assert "did you mean" in errors["unknown_output"]["message"]
    assert errors["bad_datatype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "must be INT64" in errors["bad_datatype"]["message"]


def test_vendored_proto_is_wire_compatible_with_tritons() -> None:
    """Every message and RPC of the vendored proto has the same fields (names, numbers, types,
    labels) and signatures as in Triton's own proto, read from tritonclient's descriptor (in a
    subprocess: see oip_triton_client.py for why)."""
    serialized = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tritonclient.grpc import service_pb2 as s; "
            "sys.stdout.buffer.write(s.DESCRIPTOR.serialized_pb)",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    theirs = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    ours = descriptor_pb2.FileDescriptorProto()
    oip.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == theirs.package == "inference"

    def fields(message: descriptor_pb2.DescriptorProto, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in message.field:
            oneof = f.oneof_index if f.HasField("oneof_index") else None
            out[f"{prefix}{message.name}.{f.name}"] = (
                f.number,
                f.type,
                f.label,
                f.type_name,
                oneof,
            )
        for nested in message.nested_type:
            out.update(fields(nested, f"{prefix}{message.name}."))
        return out

    their_messages = {m.name: m for m in theirs.message_type}
    for message in ours.message_type:
        assert fields(message, "") == fields(their_messages[message.name], ""), message.name
    (our_service,) = ours.service
    their_service = {s.name: s for s in theirs.service}[our_service.name]
    their_methods = {m.name: m for m in their_service.method}
    assert [m.name for m in our_service.method] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    for method in our_service.method:
        theirs_m = their_methods[method.name]
        assert (method.input_type, method.output_type) == (
            theirs_m.input_type,
            theirs_m.output_type,
        )
        assert not method.client_streaming
        assert not method.server_streaming


# -- our stub: typed contents, and what a bad request gets -------------------------------------


def bytes_input(values: list[bytes], shape: list[int] | None = None) -> Any:
    """A `text` input with its values in `contents` (KServe's clients send them so)."""
    return oip.ModelInferRequest.InferInputTensor(
        name="text",
        datatype="BYTES",
        shape=shape if shape is not None else [len(values)],
        contents=oip.InferTensorContents(bytes_contents=values),
    )


def raw_bytes(values: list[bytes]) -> bytes:
    """BYTES elements in OIP's raw layout: each a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def test_typed_contents_and_raw_contents_agree(
    oip_stub: oip_grpc.GRPCInferenceServiceStub,
) -> None:
    values = [t.encode() for t in TEXTS]
    typed = oip_stub.ModelInfer(
        oip.ModelInferRequest(model_name="bert", id="a", inputs=[bytes_input(values, [3, 1])]),
        timeout=60,
    )
    raw = oip_stub.ModelInfer(
        oip.ModelInferRequest(
            model_name="bert",
            model_version="1",
            inputs=[
                oip.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[3])
            ],
            raw_input_contents=[raw_bytes(values)],
        ),
        timeout=60,
    )
    assert typed.id == "a"
    assert typed.model_version == "1"
    assert [list(o.shape) for o in typed.outputs] == [[3, 3]]
    a = np.frombuffer(typed.raw_output_contents[0], "<f4")
    b = np.frombuffer(raw.raw_output_contents[0], "<f4")
    np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


def ids_input(name: str, ids: list[list[int]], datatype: str = "INT64") -> Any:
    contents = (
        oip.InferTensorContents(int64_contents=[i for row in ids for i in row])
        if datatype == "INT64"
        else oip.InferTensorContents(int_contents=[i for row in ids for i in row])
    )
    return oip.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=[len(ids), len(ids[0])], contents=contents
    )


def test_int32_ids_equal_int64_ids(oip_stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    ids = [[101, 7592, 2088, 102]]
    replies = [
        oip_stub.ModelInfer(
            oip.ModelInferRequest(model_name="bert", inputs=[ids_input("input_ids", ids, dt)]),
            timeout=60,
        )
        for dt in ("INT64", "INT32")
    ]
    assert replies[0].raw_output_contents[0] == replies[1].raw_output_contents[0]


def status_of(stub: oip_grpc.GRPCInferenceServiceStub, request: Any) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=60)
    error: Any = info.value
    return error.code(), error.details()


TEXT_OK = bytes_input([b"Fine."])


@pytest.mark.parametrize(
    ("request_", "code", "needle"),
    [
        (oip.ModelInferRequest(model_name="bert"), "INVALID_ARGUMENT", "give either text"),
        (
            oip.ModelInferRequest(model_name="bert", model_version="2", inputs=[TEXT_OK]),
            "NOT_FOUND",
            "only version is '1'",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[TEXT_OK, ids_input("input_ids", [[101, 102]])],
            ),
            "INVALID_ARGUMENT",
            "not both",
        ),
        (
            oip.ModelInferRequest(model_name="bert", inputs=[bytes_input([b"a", b"b"], [3])]),
            "INVALID_ARGUMENT",
            "has 2 bytes_contents, the shape says 3",
        ),
        (
            oip.ModelInferRequest(model_name="bert", inputs=[bytes_input([b"\xff\xfe"])]),
            "INVALID_ARGUMENT",
            "not valid UTF-8",
        ),
        (
            oip.ModelInferRequest(model_name="bert", inputs=[bytes_input([b"   "])]),
            "INVALID_ARGUMENT",
            "empty string",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[2])
                ],
                raw_input_contents=[raw_bytes([b"one"]) + b"\x05\x00"],
            ),
            "INVALID_ARGUMENT",
            "ends inside the length of element 1",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(
                        name="input_ids", datatype="INT64", shape=[1, 3]
                    )
                ],
                raw_input_contents=[b"\x00" * 16],
            ),
            "INVALID_ARGUMENT",
            "has 16 bytes, shape [1, 3] of INT64 needs 24",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert", inputs=[ids_input("input_ids", [[101, 99999]])]
            ),
            "INVALID_ARGUMENT",
            "outside the vocabulary",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[
                    ids_input("input_ids", [[101, 102]]),
                    ids_input("attention_mask", [[1, 1, 1]]),
                ],
            ),
            "INVALID_ARGUMENT",
            "must be the same",
        ),
        (
            oip.ModelInferRequest(model_name="bert", inputs=[ids_input("token_ids", [[101]])]),
            "INVALID_ARGUMENT",
            "unknown input 'token_ids'",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[TEXT_OK],
                outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="logits")] * 2,
            ),
            "INVALID_ARGUMENT",
            "asked for twice",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[TEXT_OK],
                parameters={"granularity": oip.InferParameter(string_param="word")},
            ),
            "INVALID_ARGUMENT",
            "one of cls_token, all_tokens",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[TEXT_OK],
                parameters={"sequence_id": oip.InferParameter(int64_param=3)},
            ),
            "INVALID_ARGUMENT",
            "unknown parameter 'sequence_id'",
        ),
        (
            oip.ModelInferRequest(
                model_name="bert",
                inputs=[bytes_input([b"Fine.", b"A much longer text than that."])],
                outputs=[
                    oip.ModelInferRequest.InferRequestedOutputTensor(name="bert.encoder.layer.1")
                ],
                parameters={"granularity": oip.InferParameter(string_param="all_tokens")},
            ),
            "INVALID_ARGUMENT",
            "needs inputs of one length",
        ),
        (
            oip.ModelInferRequest(model_name="gpt2-missing", inputs=[TEXT_OK]),
            "NOT_FOUND",
            "gpt2-missing",
        ),
    ],
)
def test_bad_requests_get_clear_statuses(
    oip_stub: oip_grpc.GRPCInferenceServiceStub,
    assert_serving: Any,
    request_: Any,
    code: str,
    needle: str,
) -> None:
    got, message = status_of(oip_stub, request_)
    assert got.name == code, message
    assert needle in message
    assert_serving()


def test_token_limit_and_truncate(oip_stub: oip_grpc.GRPCInferenceServiceStub) -> None:
    """The server's limits apply: a text over the model's maximum is refused, or cut with the
    request parameter truncate."""
    long_text = " ".join(["word"] * 2000).encode()
    code, message = status_of(
        oip_stub, oip.ModelInferRequest(model_name="bert", inputs=[bytes_input([long_text])])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncate" in message
    reply = oip_stub.ModelInfer(
        oip.ModelInferRequest(
            model_name="bert",
            inputs=[bytes_input([long_text])],
            parameters={"truncate": oip.InferParameter(bool_param=True)},
        ),
        timeout=60,
    )
    assert list(reply.outputs[0].shape) == [1, 3]
    assert np.isfinite(np.frombuffer(reply.raw_output_contents[0], "<f4")).all()


def test_readiness_follows_the_serving_state(
    oip_stub: oip_grpc.GRPCInferenceServiceStub, live_server: Any
) -> None:
    assert oip_stub.ServerLive(oip.ServerLiveRequest()).live
    assert oip_stub.ServerReady(oip.ServerReadyRequest()).ready
    assert oip_stub.ModelReady(oip.ModelReadyRequest(name="gpt2")).ready
    with pytest.raises(grpc.RpcError) as info:
        oip_stub.ModelReady(oip.ModelReadyRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_a_starting_server_is_live_but_not_ready(live_server: Any) -> None:
    """Before its models are loaded (and while draining) the server is live, not ready, and
    ModelInfer is UNAVAILABLE, like ExplainService."""
    running = start(ServerOptions(port=0), live_server.explainer, serving=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            starting = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            assert starting.ServerLive(oip.ServerLiveRequest(), timeout=10).live
            assert not starting.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
            assert not starting.ModelReady(oip.ModelReadyRequest(name="bert"), timeout=10).ready
            code, message = status_of(
                starting, oip.ModelInferRequest(model_name="bert", inputs=[TEXT_OK])
            )
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "starting" in message
            running.set_serving()
            assert starting.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
    finally:
        running.stop(grace=None)


def test_a_reply_over_the_message_limit_is_refused_clearly(live_server: Any) -> None:
    """Every token's rows of 100 inputs (100 x 100 x 32 float32: 1.28 MB) do not fit a server
    whose messages are limited to 256 KiB: RESOURCE_EXHAUSTED saying what to do, not gRPC's
    own failure to send."""
    running = start(ServerOptions(port=0, max_message_bytes=256 * 1024), live_server.explainer)
    ids = [[101, *([1037] * 98), 102]] * 100
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            small = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            request = oip.ModelInferRequest(
                model_name="bert",
                inputs=[ids_input("input_ids", ids)],
                outputs=[
                    oip.ModelInferRequest.InferRequestedOutputTensor(name="bert.encoder.layer.1")
                ],
                parameters={"granularity": oip.InferParameter(string_param="all_tokens")},
            )
            code, message = status_of(small, request)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_message_bytes" in message
            assert "GetActivations" in message
            # The head's row of each input fits.
            del request.parameters["granularity"]
            reply = small.ModelInfer(request, timeout=60)
            assert list(reply.outputs[0].shape) == [100, 32]
    finally:
        running.stop(grace=None)


def test_authentication_spares_only_liveness_and_readiness(live_server: Any) -> None:
    """With bearer tokens, ServerLive and ServerReady answer without one (probes, like the
    health service); metadata and inference need it."""
    running = start(ServerOptions(port=0, auth_tokens=("s3cret",)), live_server.explainer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            guarded = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            assert guarded.ServerLive(oip.ServerLiveRequest(), timeout=10).live
            assert guarded.ServerReady(oip.ServerReadyRequest(), timeout=10).ready
            with pytest.raises(grpc.RpcError) as info:
                guarded.ModelMetadata(oip.ModelMetadataRequest(name="bert"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            code, _ = status_of(guarded, oip.ModelInferRequest(model_name="bert", inputs=[TEXT_OK]))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            reply = guarded.ModelInfer(
                oip.ModelInferRequest(model_name="bert", inputs=[TEXT_OK]),
                metadata=[("authorization", "Bearer s3cret")],
                timeout=60,
            )
            assert list(reply.outputs[0].shape) == [1, 3]
    finally:
        running.stop(grace=None)


def test_causal_lms_are_not_served_through_oip(tiny_gpt2_lm_dir: Path) -> None:
    registry = Registry()
    try:
        registry.add(load_model(ModelConfig(name="lm", path=tiny_gpt2_lm_dir, device="cpu")))
        running = start(ServerOptions(port=0), Explainer(registry))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                lm = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
                for call, request in (
                    (lm.ModelReady, oip.ModelReadyRequest(name="lm")),
                    (lm.ModelMetadata, oip.ModelMetadataRequest(name="lm")),
                    (lm.ModelInfer, oip.ModelInferRequest(model_name="lm", inputs=[TEXT_OK])),
                ):
                    with pytest.raises(grpc.RpcError) as info:
                        call(request, timeout=30)
                    error: Any = info.value
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "causal LM" in error.details()
        finally:
            running.stop(grace=None)
    finally:
        registry.close()
