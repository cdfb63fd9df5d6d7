"""Explain for causal LMs over gRPC: continuations given as text or ids or generated, the target
units x units matrix with its validity mask, streaming progress through generation, model
metadata, and INVALID_ARGUMENT with the field at fault for bad continuations and generation
parameters."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

PROMPT = "Hello there, world"


def request(*inputs: pb.Input, model: str = "gpt2-lm", **fields: object) -> pb.ExplainRequest:
    """An occlusion request unless another method is given."""
    if not any(k in fields for k in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields):
        fields = {"occlusion": pb.Occlusion(), **fields}
    return pb.ExplainRequest(model=model, inputs=list(inputs), **fields)  # type: ignore[arg-type]


def with_text(continuation: str, prompt: str = PROMPT) -> pb.Input:
    return pb.Input(text=prompt, continuation=pb.Continuation(text=continuation))


def test_models_report_their_task(lm_stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    models = lm_stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert {m.name: m.task for m in models} == {"gpt2-lm": "causal-lm", "llama-lm": "causal-lm"}
    info = lm_stub.GetModel(pb.GetModelRequest(name="llama-lm"), timeout=10).model
    assert list(info.labels) == []
    assert info.replacement == "unk_token"


@pytest.mark.parametrize("model", ["gpt2-lm", "llama-lm"])
def test_given_continuation(lm_stub: explain_pb2_grpc.ExplainServiceStub, model: str) -> None:
    reply = lm_stub.Explain(request(with_text(" of words."), model=model), timeout=30)
    (e,) = reply.explanations
    assert e.text == PROMPT + " of words."
    assert e.continuation == " of words."
    assert not e.generated
    assert [u.text for u in e.units] == ["Hello", "there", ",", "world", "of", "words", "."]
    assert [u.text for u in e.target_units] == ["of", "words", "."]
    for u in [*e.units, *e.target_units]:
        assert e.text[u.char_start : u.char_end] == u.text
    assert list(e.token_ids[e.prompt_token_count :]) == list(e.continuation_token_ids)
    assert len(e.continuation_scores) == len(e.continuation_token_ids)
    assert (e.scores.rows, e.scores.cols) == (3, 7)
    valid = np.asarray(e.valid).reshape(3, 7)
    want = np.ones((3, 7), dtype=bool)
    want[:, 4:] = np.tril(np.ones((3, 3), dtype=bool), k=-1)
    np.testing.assert_array_equal(valid, want)
    scores = np.asarray(e.scores.values).reshape(3, 7)
    assert np.all(scores[~valid] == 0.0)
    assert np.any(scores[valid] != 0.0)
    assert list(e.targets) == []
    assert list(e.logits) == []


def test_ids_continuation_and_prompt_units_only(
    lm_stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    (text_e,) = lm_stub.Explain(request(with_text(" of words.")), timeout=30).explanations
    ids = list(text_e.continuation_token_ids)
    item = pb.Input(text=PROMPT, continuation=pb.Continuation(token_ids=pb.TokenIds(ids=ids)))
    (ids_e,) = lm_stub.Explain(request(item, prompt_units_only=True), timeout=30).explanations
    assert ids_e.continuation == " of words."
    assert [u.text for u in ids_e.units] == ["Hello", "there", ",", "world"]
    assert all(ids_e.valid)
    full = np.asarray(text_e.scores.values).reshape(3, 7)[:, :4]
    # float32 rounding: different row sets batch differently (see test_prompt_units_only).
    np.testing.assert_allclose(np.asarray(ids_e.scores.values).reshape(3, 4), full, atol=1e-5)


def test_generated_continuation(lm_stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    gen = pb.Generation(max_new_tokens=5)
    req = request(pb.Input(text=PROMPT), model="llama-lm", generation=gen, saliency=pb.Saliency())
    (e,) = lm_stub.Explain(req, timeout=30).explanations
    assert e.generated
    assert 1 <= len(e.continuation_token_ids) <= 5
    assert e.text == PROMPT + e.continuation
    assert e.scores.rows == len(e.target_units)
    again = lm_stub.Explain(req, timeout=30).explanations[0]
    assert list(again.continuation_token_ids) == list(e.continuation_token_ids)


def test_stream_reports_generation_progress(lm_stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    gen = pb.Generation(max_new_tokens=12, do_sample=True, temperature=0.7, top_p=0.95)
    inner = request(pb.Input(text=PROMPT), pb.Input(text="The quick brown fox"), generation=gen)
    events = list(lm_stub.ExplainStream(pb.ExplainStreamRequest(request=inner), timeout=30))
    progress = [ev.progress for ev in events if ev.WhichOneof("event") == "progress"]
    explanations = [ev.explanation for ev in events if ev.WhichOneof("event") == "explanation"]
    assert sorted(e.input_index for e in explanations) == [0, 1]
    done = [p.forward_passes_done for p in progress]
    assert done == sorted(done)
    # Generation steps are reported before any explanation forward: 2 x 12 planned tokens.
    assert sum(1 for p in progress if p.forward_passes_done <= 24) >= 2
    assert progress[-1].forward_passes_done == progress[-1].forward_passes_total


@pytest.mark.parametrize(
    ("req", "field", "message"),
    [
        (request(with_text("")), "inputs[0].continuation.text", "is empty"),
        (
            request(with_text(" of words" * 20)),
            "inputs[0].continuation",
            "the limit is 20",
        ),
        (
            request(pb.Input(text=PROMPT, continuation=pb.Continuation())),
            "inputs[0].continuation",
            "neither text nor token_ids",
        ),
        (
            request(
                pb.Input(
                    text=PROMPT,
                    continuation=pb.Continuation(
                        token_ids=pb.TokenIds(ids=[5], attention_mask=[1])
                    ),
                )
            ),
            "inputs[0].continuation.token_ids.attention_mask",
            "leave it empty",
        ),
        (
            request(pb.Input(text=PROMPT), generation=pb.Generation(max_new_tokens=21)),
            "generation.max_new_tokens",
            "must be in [1, 20], got 21",
        ),
        (
            request(pb.Input(text=PROMPT), generation=pb.Generation(temperature=-1.0)),
            "generation.temperature",
            "got -1.0",
        ),
        (
            request(pb.Input(text=PROMPT), generation=pb.Generation(top_p=math.nan)),
            "generation.top_p",
            "must be in (0, 1], got nan",
        ),
        (
            request(pb.Input(text=PROMPT, targets=[pb.Target(index=0)])),
            "inputs[0].targets",
            "is a causal LM",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(
    lm_stub: explain_pb2_grpc.ExplainServiceStub, req: pb.ExplainRequest, field: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        lm_stub.Explain(req, timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert message in err.details()  # type: ignore[attr-defined]
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == [field]
    ok = lm_stub.Explain(request(with_text(" of words.")), timeout=30)
    assert ok.explanations[0].scores.rows == 3


def test_activations_of_a_causal_lm(lm_stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    req = pb.GetActivationsRequest(
        model="gpt2-lm",
        inputs=[pb.Input(text=PROMPT)],
        split_points=["transformer.h.1"],
        granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
        include_predictions=True,
    )
    (chunk,) = lm_stub.GetActivations(req, timeout=30)
    values = chunk.activations[0].values
    assert list(values.shape) == [chunk.row_offsets[1], 32]
    # The predictions are the next-token logits after the prompt.
    assert chunk.logits.shape[0] == 1
    assert chunk.predicted_classes[0] < chunk.logits.shape[1]
    with pytest.raises(grpc.RpcError) as info:
        list(
            lm_stub.GetActivations(
                pb.GetActivationsRequest(model="gpt2-lm", inputs=[pb.Input(text=PROMPT)]),
                timeout=30,
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "no classification head" in info.value.details()  # type: ignore[attr-defined]
