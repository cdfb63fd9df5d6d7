"""Bad requests: the right status code, a clear message, the field at fault in a
google.rpc.BadRequest for INVALID_ARGUMENT, and a server that keeps serving afterwards."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

TEXT = "Unbelievably good film. I hated the ending!"
BERT_VOCAB = 30522
N_IDS = 15  # WordPiece tokens of TEXT, [CLS] and [SEP] included


@dataclass(frozen=True)
class Case:
    """A bad request and what the server must answer."""

    request: Callable[[list[int]], pb.ExplainRequest]
    code: grpc.StatusCode
    message: str
    #: The BadRequest field violation (INVALID_ARGUMENT only).
    field: str | None = None


def bert(*inputs: pb.Input, **fields: Any) -> pb.ExplainRequest:
    """A bert request with occlusion unless another method is given."""
    if not any(k in fields for k in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields):
        fields = {"occlusion": pb.Occlusion(), **fields}
    return pb.ExplainRequest(model="bert", inputs=list(inputs), **fields)


def text(t: str = TEXT, *targets: pb.Target) -> pb.Input:
    return pb.Input(text=t, targets=list(targets))


def ids_input(ids: list[int], mask: list[int] | None = None) -> pb.Input:
    return pb.Input(token_ids=pb.TokenIds(ids=ids, attention_mask=mask or []))


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

CASES: dict[str, Case] = {
    "unknown model": Case(
        lambda _ids: pb.ExplainRequest(model="nope", inputs=[text()], occlusion=pb.Occlusion()),
        NOT_FOUND,
        "no model named 'nope'; loaded models: bert, gpt2",
    ),
    "no method": Case(
        lambda _ids: pb.ExplainRequest(model="bert", inputs=[text()]),
        INVALID,
        "no method set: choose one of occlusion, lime, kernel_shap",
        "method",
    ),
    "unknown label": Case(
        lambda _ids: bert(text(TEXT, pb.Target(label="positive"), pb.Target(label="meh"))),
        NOT_FOUND,
        "model 'bert' has no label 'meh'; labels are: negative, neutral, positive",
    ),
    "target index too big": Case(
        lambda _ids: bert(text(), text(TEXT, pb.Target(index=0), pb.Target(index=3))),
        INVALID,
        "target 3 of input 1 is out of range: the model has 3 classes (0..2)",
        "inputs[1].targets[1]",
    ),
    "target index negative": Case(
        lambda _ids: bert(text(TEXT, pb.Target(index=-1))),
        INVALID,
        "target -1 of input 0 is out of range",
        "inputs[0].targets[0]",
    ),
    "target with neither index nor label": Case(
        lambda _ids: bert(text(TEXT, pb.Target())),
        INVALID,
        "target 0 of input 0 has neither index nor label",
        "inputs[0].targets[0]",
    ),
    "too many targets": Case(
        lambda _ids: bert(text(TEXT, *[pb.Target(index=0)] * 65)),
        INVALID,
        "input 0 asks for 65 targets, the limit is 64",
        "inputs[0].targets",
    ),
    "no inputs": Case(lambda _ids: bert(), INVALID, "the request has no inputs", "inputs"),
    "too many inputs": Case(
        lambda _ids: bert(*[text("Fine.")] * 257),
        INVALID,
        "the request has 257 inputs, the limit is 256",
        "inputs",
    ),
    "input with neither text nor ids": Case(
        lambda _ids: bert(text(), pb.Input()),
        INVALID,
        "input 1 has neither text nor token_ids",
        "inputs[1]",
    ),
    "empty string": Case(
        lambda _ids: bert(text("")), INVALID, "input 0 is an empty string", "inputs[0].text"
    ),
    "blank string": Case(
        lambda _ids: bert(text(), text(" \t\n")),
        INVALID,
        "input 1 is an empty string",
        "inputs[1].text",
    ),
    "only special tokens": Case(
        lambda ids: bert(ids_input([ids[0], ids[-1]])),
        INVALID,
        "input 0 has no word units to explain",
        "inputs[0]",
    ),
    "NaN parameter": Case(
        lambda _ids: bert(text(), lime=pb.Lime(n_perturbations=16, perturb_probability=math.nan)),
        INVALID,
        "lime.perturb_probability must be in (0, 1), got nan",
        "lime.perturb_probability",
    ),
    "probability out of range": Case(
        lambda _ids: bert(text(), lime=pb.Lime(perturb_probability=1.0)),
        INVALID,
        "lime.perturb_probability must be in (0, 1), got 1.0",
        "lime.perturb_probability",
    ),
    "negative alpha": Case(
        lambda _ids: bert(text(), lime=pb.Lime(alpha=-1.0)),
        INVALID,
        "lime.alpha must be a finite number >= 0, got -1.0",
        "lime.alpha",
    ),
    "negative kernel width": Case(
        lambda _ids: bert(text(), lime=pb.Lime(kernel_width=-0.5)),
        INVALID,
        "lime.kernel_width must be a finite number > 0, got -0.5",
        "lime.kernel_width",
    ),
    "negative noise": Case(
        lambda _ids: bert(text(), smooth_grad=pb.SmoothGrad(noise_std=-0.25)),
        INVALID,
        "smooth_grad.noise_std must be a finite number >= 0, got -0.25",
        "smooth_grad.noise_std",
    ),
    "infinite noise": Case(
        lambda _ids: bert(text(), gradient_shap=pb.GradientShap(noise_std=math.inf)),
        INVALID,
        "gradient_shap.noise_std must be a finite number >= 0, got inf",
        "gradient_shap.noise_std",
    ),
    # Far beyond the embeddings' scale: it used to overflow float32 into NaN scores.
    "huge noise": Case(
        lambda _ids: bert(text(), var_grad=pb.VarGrad(n_samples=2, noise_std=1e30)),
        INVALID,
        "var_grad.noise_std is relative to the embeddings' standard deviation and must be at most",
        "var_grad.noise_std",
    ),
    "one perturbation": Case(
        lambda _ids: bert(text(), kernel_shap=pb.KernelShap(n_perturbations=1)),
        INVALID,
        "kernel_shap.n_perturbations must be at least 2, got 1",
        "kernel_shap.n_perturbations",
    ),
    "too many perturbations": Case(
        lambda _ids: bert(text(), lime=pb.Lime(n_perturbations=5000)),
        INVALID,
        "input 0 would need 5000 forward passes, the limit is 1000",
        "inputs[0]",
    ),
    "too many steps": Case(
        lambda _ids: bert(
            text(), text(), integrated_gradients=pb.IntegratedGradients(n_steps=2**32 - 1)
        ),
        INVALID,
        "input 0 would need 4294967295 forward passes, the limit is 1000",
        "inputs[0]",
    ),
    "over-long text": Case(
        lambda _ids: bert(text("word " * 200)),
        INVALID,
        "input 0 has 202 tokens, more than the model's maximum of 128"
        ": shorten it, or set truncate to cut it",
        "inputs[0]",
    ),
    "over-long token ids": Case(
        lambda ids: bert(text(), ids_input(ids[:1] + ids[1:-1] * 10 + ids[-1:])),
        INVALID,
        f"input 1 has {2 + (N_IDS - 2) * 10} tokens, more than the model's maximum of 128"
        ": shorten it, or set truncate to cut it",
        "inputs[1]",
    ),
    "token id out of vocabulary": Case(
        lambda ids: bert(ids_input([*ids[:3], BERT_VOCAB, *ids[3:]])),
        INVALID,
        f"token id {BERT_VOCAB} is outside the vocabulary [0, {BERT_VOCAB})",
        "inputs[0].token_ids",
    ),
    "negative token id": Case(
        lambda ids: bert(ids_input([*ids[:3], -1, *ids[3:]])),
        INVALID,
        f"token id -1 is outside the vocabulary [0, {BERT_VOCAB})",
        "inputs[0].token_ids",
    ),
    "empty token ids": Case(
        lambda _ids: bert(ids_input([])), INVALID, "token_ids is empty", "inputs[0].token_ids.ids"
    ),
    "attention mask length mismatch": Case(
        lambda ids: bert(ids_input(ids, [1, 1, 1])),
        INVALID,
        f"attention_mask has 3 values for {N_IDS} ids",
        "inputs[0].token_ids.attention_mask",
    ),
    "attention mask values": Case(
        lambda ids: bert(ids_input(ids, [2] * len(ids))),
        INVALID,
        "attention_mask values must be 0 or 1",
        "inputs[0].token_ids.attention_mask",
    ),
    "unknown granularity": Case(
        lambda _ids: bert(text(), granularity=99),  # type: ignore[arg-type]
        INVALID,
        "unknown value 99 for granularity",
        "granularity",
    ),
    "unknown inference mode": Case(
        lambda _ids: bert(text(), inference_mode=7),  # type: ignore[arg-type]
        INVALID,
        "unknown value 7 for inference_mode",
        "inference_mode",
    ),
    "unknown aggregation": Case(
        lambda _ids: bert(text(), saliency=pb.Saliency(), aggregation=-3),  # type: ignore[arg-type]
        INVALID,
        "unknown value -3 for aggregation",
        "aggregation",
    ),
    "unknown reduction": Case(
        lambda _ids: bert(text(), saliency=pb.Saliency(reduction=42)),  # type: ignore[arg-type]
        INVALID,
        "unknown value 42 for saliency.reduction",
        "saliency.reduction",
    ),
    "unknown lime distance": Case(
        lambda _ids: bert(text(), lime=pb.Lime(distance=9)),  # type: ignore[arg-type]
        INVALID,
        "unknown value 9 for lime.distance",
        "lime.distance",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_its_status_and_the_server_keeps_serving(
    stub: explain_pb2_grpc.ExplainServiceStub,
    assert_serving: Callable[[], None],
    bert_tokenizer: Any,
    case: str,
) -> None:
    spec = CASES[case]
    ids = bert_tokenizer(TEXT)["input_ids"]
    assert len(ids) == N_IDS
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(spec.request(ids), timeout=30)
    error = err.value
    assert error.code() == spec.code, error.details()
    assert spec.message in error.details()
    assert "Traceback" not in error.details()

    status = rpc_status.from_call(error)
    assert status is not None
    assert status.message == error.details()
    violations = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad), detail.type_url
        violations.extend((v.field, v.description) for v in bad.field_violations)
    if spec.field is None:
        assert violations == []
    else:
        assert violations == [(spec.field, error.details())]

    assert_serving()


def test_bad_input_among_good_ones_fails_the_request_only(
    stub: explain_pb2_grpc.ExplainServiceStub, assert_serving: Callable[[], None]
) -> None:
    """A bad request sent while a good one is in flight does not harm the good one."""
    good = bert(
        text("The quick brown fox jumps over the lazy dog. " * 5),
        sobol=pb.Sobol(n_points=8),
        granularity=pb.GRANULARITY_TOKEN,
    )
    future = stub.Explain.future(good, timeout=60)
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(bert(text(TEXT, pb.Target(index=5))), timeout=30)
    assert err.value.code() == INVALID
    (explanation,) = future.result().explanations
    assert explanation.scores.cols == 50
    assert explanation.counters.forward_passes == (50 + 2) * 8 + 1
    assert_serving()


def test_the_longest_input_the_model_takes_is_accepted(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    """126 words + [CLS] + [SEP] = max_length (128) tokens: fine; one word more is refused."""
    reply = stub.Explain(bert(text("word " * 126), granularity=pb.GRANULARITY_TOKEN), timeout=60)
    (explanation,) = reply.explanations
    assert len(explanation.token_ids) == 128
    assert explanation.scores.cols == 126
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(bert(text("word " * 127)), timeout=30)
    assert err.value.code() == INVALID
    assert (
        "input 0 has 129 tokens, more than the model's maximum of 128"
        ": shorten it, or set truncate to cut it" in err.value.details()
    )


@pytest.mark.parametrize("method", ["smooth_grad", "square_grad", "var_grad", "gradient_shap"])
def test_the_largest_noise_gives_finite_scores(
    stub: explain_pb2_grpc.ExplainServiceStub, method: str
) -> None:
    message = {
        "smooth_grad": pb.SmoothGrad,
        "square_grad": pb.SquareGrad,
        "var_grad": pb.VarGrad,
        "gradient_shap": pb.GradientShap,
    }[method]
    reply = stub.Explain(
        bert(text(), **{method: message(n_samples=2, noise_std=100.0)}), timeout=30
    )
    values = reply.explanations[0].scores.values
    assert len(values) == 9
    assert all(math.isfinite(v) for v in values)
