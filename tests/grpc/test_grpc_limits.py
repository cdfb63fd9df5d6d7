"""The server's token limit and truncation: over-long inputs are refused with a BadRequest field
violation saying how to fix them, or cut to their first tokens when the request sets
`truncate` (text and token ids, Explain and GetActivations)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

LONG = "word " * 200  # 202 tokens with [CLS] and [SEP]; the tiny models take 128


def violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        out.extend(v.field for v in bad.field_violations)
    return out


def explain(text: str, **fields: object) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=text)],
        occlusion=pb.Occlusion(),
        granularity=pb.GRANULARITY_TOKEN,
        **fields,  # type: ignore[arg-type]
    )


def test_truncate_cuts_a_long_text_to_the_model_maximum(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(explain(LONG), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["inputs[0]"]
    (e,) = stub.Explain(explain(LONG, truncate=True), timeout=60).explanations
    assert len(e.token_ids) == 128
    assert e.scores.cols == 126
    assert e.text == "word " * 125 + "word"
    assert e.units[-1].text == "word"


def test_truncate_keeps_the_trailing_special_token_of_ids(
    stub: explain_pb2_grpc.ExplainServiceStub, bert_tokenizer: object
) -> None:
    ids = bert_tokenizer(LONG)["input_ids"]  # type: ignore[operator]
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(token_ids=pb.TokenIds(ids=ids, attention_mask=[1] * len(ids)))],
        occlusion=pb.Occlusion(),
        truncate=True,
    )
    (e,) = stub.Explain(request, timeout=60).explanations
    assert list(e.token_ids) == ids[:127] + ids[-1:]


def test_truncate_in_get_activations(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    request = pb.GetActivationsRequest(
        model="bert",
        inputs=[pb.Input(text=LONG), pb.Input(text="Short.")],
        split_points=["bert.encoder.layer.0"],
        granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GetActivations(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request.truncate = True
    (chunk,) = stub.GetActivations(request, timeout=30)
    assert list(chunk.row_offsets) == [0, 128, 128 + 4]


@pytest.fixture(scope="module")
def limited(live_server: Any) -> Iterator[explain_pb2_grpc.ExplainServiceStub]:
    """A second server on the same models with a token limit of 8 per input."""
    running = start(ServerOptions(port=0, max_tokens_per_input=8), live_server.explainer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    finally:
        running.stop(grace=None)


def test_the_server_token_limit(limited: explain_pb2_grpc.ExplainServiceStub) -> None:
    ok = limited.Explain(explain("Six words fit in eight."), timeout=30)
    assert len(ok.explanations[0].token_ids) == 8
    with pytest.raises(grpc.RpcError) as err:
        limited.Explain(explain("Seven words do not fit in eight."), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 0 has 10 tokens, more than the limit of 8" in err.value.details()
    assert "set truncate" in err.value.details()
    assert violations(err.value) == ["inputs[0].text"]
    (e,) = limited.Explain(
        explain("Seven words do not fit in eight.", truncate=True), timeout=30
    ).explanations
    assert e.text == "Seven words do not fit in"
    assert len(e.token_ids) == 8
    for model in ("bert", "gpt2"):
        (chunk,) = limited.GetActivations(
            pb.GetActivationsRequest(model=model, inputs=[pb.Input(text=LONG)], truncate=True),
            timeout=30,
        )
        assert list(chunk.row_offsets) == [0, 1]


def test_message_size_limits_both_ways(live_server: Any) -> None:
    """Requests and responses over `max_message_bytes` get RESOURCE_EXHAUSTED naming the sizes
    (the client here allows 64 MiB both ways, as the README tells clients to)."""
    running = start(ServerOptions(port=0, max_message_bytes=20_000), live_server.explainer)
    big = 64 * 1024 * 1024
    options = [("grpc.max_receive_message_length", big), ("grpc.max_send_message_length", big)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}", options=options) as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as err:
                stub.Explain(explain("x " * 20_000), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "Received message larger than max" in err.value.details()
            many = pb.ExplainRequest(
                model="bert",
                inputs=[pb.Input(text="Good food and a nice view.")] * 200,
                occlusion=pb.Occlusion(),
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Explain(many, timeout=60)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "over the server's max_message_bytes (20000)" in err.value.details()
            assert "ExplainStream" in err.value.details()
    finally:
        running.stop(grace=None)
