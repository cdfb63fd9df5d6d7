"""Concept explanations through gRPC on the shared server (its concept sets: tests/concept_sets.py
`CONCEPT_SETS`): ExplainConcepts' reply is the domain's, field for field; Explain and
ExplainStream with a concept target; inline sets; and bad requests, each with its status, the
field at fault in a google.rpc.BadRequest, and the server still serving."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from explainserve.concepts.params import ConceptParams, ConceptRef
from explainserve.concepts.service import ConceptExplainer
from explainserve.explain.service import Explainer
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc
from explainserve.vocabulary import InputSpec

TEXTS = ["The food was cold.", "Lovely staff, lovely place!", "A line."]


def tensor(values: np.ndarray) -> pb.Tensor:
    """A float32 Tensor message."""
    x = np.ascontiguousarray(values, dtype="<f4")
    return pb.Tensor(dtype="float32", shape=list(x.shape), data=x.tobytes())


def matrix(m: pb.Matrix) -> np.ndarray:
    """A Matrix message as a float32 array."""
    return np.asarray(m.values, dtype=np.float32).reshape(m.rows, m.cols)


def test_explain_concepts_replies_with_the_domains_numbers(
    stub: explain_pb2_grpc.ExplainServiceStub, explainer: Explainer
) -> None:
    request = pb.ExplainConceptsRequest(
        model="bert",
        inputs=[
            pb.Input(text=t, targets=[pb.Target(label="positive"), pb.Target(index=0)])
            for t in TEXTS
        ],
        concepts=pb.ConceptSetRef(name="bert-relu"),
        normalization=False,
    )
    reply = stub.ExplainConcepts(request, timeout=60)
    assert reply.model == "bert"
    assert reply.concept_set == "bert-relu"
    assert list(reply.concept_labels) == [f"c{k}" for k in range(6)]
    domain = ConceptExplainer(explainer.registry, explainer.concepts)
    params = ConceptParams(
        model="bert",
        inputs=[InputSpec(text=t, targets=["positive", 0]) for t in TEXTS],
        concepts=ConceptRef(name="bert-relu"),
        normalization=False,
    )
    expected = sorted(domain.explain(params), key=lambda e: e.input_index)
    assert [e.input_index for e in reply.explanations] == [0, 1, 2]
    for got, want in zip(reply.explanations, expected, strict=True):
        assert got.text == want.text
        assert list(got.token_ids) == want.token_ids.tolist()
        np.testing.assert_array_equal(matrix(got.concepts), want.concepts)
        np.testing.assert_array_equal(np.asarray(got.logits, np.float32), want.logits)
        assert got.reconstruction_error == pytest.approx(want.reconstruction_error, rel=1e-6)
        assert got.counters.forward_passes == 1
        assert [(t.target.index, t.target.label) for t in got.targets] == [
            (2, "positive"),
            (0, "negative"),
        ]
        for t, target in enumerate(got.targets):
            np.testing.assert_array_equal(matrix(target.contributions), want.contributions[t])
            parts = (target.output, target.residual, target.bias, target.concept_sum, target.gap)
            wanted = (want.outputs, want.residual, want.bias, want.concept_sum, want.gap)
            for value, array in zip(parts, wanted, strict=True):
                assert value == pytest.approx(float(array[t]), rel=1e-6, abs=1e-7)
            # The tiny BERT's head is linear: everything adds up to the output.
            total = target.concept_sum + target.residual + target.bias
            assert total == pytest.approx(target.output, abs=1e-5)


def test_normalization_and_gradients_alone_are_the_requests_choices(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    def contributions(**options: bool) -> np.ndarray:
        request = pb.ExplainConceptsRequest(
            model="gpt2",
            inputs=[pb.Input(text=TEXTS[0], targets=[pb.Target(index=1)])],
            concepts=pb.ConceptSetRef(name="gpt2-nnls"),
            **options,
        )
        (e,) = stub.ExplainConcepts(request, timeout=60).explanations
        return matrix(e.targets[0].contributions)

    default, raw, gradient = (
        contributions(),
        contributions(normalization=False),
        contributions(concepts_x_gradients=False, normalization=False),
    )
    np.testing.assert_allclose(np.abs(default).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(default, raw / np.abs(raw).sum(), rtol=1e-6)
    assert not np.allclose(gradient, raw)


def test_explain_with_a_concept_target_explains_concepts(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=t) for t in TEXTS],
        occlusion=pb.Occlusion(),
        concept_target=pb.ConceptTarget(
            concepts=pb.ConceptSetRef(name="bert-relu"),
            concepts_explained=[pb.Target(index=2), pb.Target(label="c4")],
        ),
    )
    reply = stub.Explain(request, timeout=60)
    concepts = stub.ExplainConcepts(
        pb.ExplainConceptsRequest(
            model="bert",
            inputs=[pb.Input(text=t) for t in TEXTS],
            concepts=pb.ConceptSetRef(name="bert-relu"),
        ),
        timeout=60,
    )
    for e, c in zip(reply.explanations, concepts.explanations, strict=True):
        assert [(t.index, t.label) for t in e.targets] == [(2, "c2"), (4, "c4")]
        assert e.scores.rows == 2
        assert len(e.concept_activations) == 6
        np.testing.assert_allclose(
            e.concept_activations, matrix(c.concepts)[0], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(e.logits, c.logits, rtol=1e-5, atol=1e-6)
    # The stream: progress, then the same explanations.
    events = list(stub.ExplainStream(pb.ExplainStreamRequest(request=request), timeout=60))
    streamed = sorted(
        (ev.explanation for ev in events if ev.HasField("explanation")), key=lambda e: e.input_index
    )
    assert any(ev.HasField("progress") for ev in events)
    for a, b in zip(streamed, reply.explanations, strict=True):
        np.testing.assert_allclose(a.scores.values, b.scores.values, rtol=1e-5, atol=1e-6)


def test_an_inline_set_comes_with_the_request(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    """A concept activation vector: one direction v, encoded as x · v, decoded as C · v."""
    v = np.random.default_rng(3).normal(size=(1, 32)).astype(np.float32)
    inline = pb.InlineConceptSet(
        encoder=pb.CONCEPT_ENCODER_LINEAR,
        encoder_weight=tensor(v),
        decoder_weight=tensor(v / (v**2).sum()),
        labels=["cav"],
    )
    reply = stub.ExplainConcepts(
        pb.ExplainConceptsRequest(
            model="gpt2", inputs=[pb.Input(text=TEXTS[1])], concepts=pb.ConceptSetRef(inline=inline)
        ),
        timeout=60,
    )
    assert reply.concept_set == "inline"
    assert list(reply.concept_labels) == ["cav"]
    rows = stub.GetActivations(
        pb.GetActivationsRequest(model="gpt2", inputs=[pb.Input(text=TEXTS[1])]), timeout=60
    )
    (chunk,) = list(rows)
    h = np.frombuffer(chunk.activations[0].values.data, "<f4")
    (e,) = reply.explanations
    np.testing.assert_allclose(matrix(e.concepts)[0, 0], h @ v[0], rtol=1e-5)
    (target,) = e.targets
    np.testing.assert_allclose(
        matrix(target.contributions), [[1.0]] if target.concept_sum > 0 else [[-1.0]]
    )


def _inline(**fields: object) -> pb.ConceptSetRef:
    base: dict[str, object] = {
        "encoder": pb.CONCEPT_ENCODER_RELU,
        "encoder_weight": tensor(np.ones((3, 32))),
        "decoder_weight": tensor(np.ones((3, 32))),
    }
    base.update(fields)
    return pb.ConceptSetRef(inline=pb.InlineConceptSet(**base))  # type: ignore[arg-type]


BAD = {
    "unknown set": (
        pb.ConceptSetRef(name="nope"),
        grpc.StatusCode.NOT_FOUND,
        "no concept set named 'nope'; concept sets: bert-layer, bert-relu, gpt2-nnls",
        None,
    ),
    "another model's set": (
        pb.ConceptSetRef(name="gpt2-nnls"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "concept set 'gpt2-nnls' belongs to model 'gpt2', not 'bert'",
        "concepts.name",
    ),
    "no set": (
        pb.ConceptSetRef(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no concept set",
        "concepts",
    ),
    "wrong shape": (
        _inline(decoder_weight=tensor(np.ones((3, 31)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "encoder.weight has shape [3, 32], expected [3, 31]",
        "concepts.inline",
    ),
    "wrong size for the model": (
        _inline(encoder_weight=tensor(np.ones((3, 8))), decoder_weight=tensor(np.ones((3, 8)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the set's activations have 8 features",
        "concepts.inline",
    ),
    "NaN": (
        _inline(encoder_weight=tensor(np.full((3, 32), np.nan))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "encoder.weight has 96 NaN or infinite values",
        "concepts.inline",
    ),
    "infinity": (
        _inline(encoder_bias=tensor(np.array([0, np.inf, 0]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "encoder.bias has 1 NaN or infinite values",
        "concepts.inline",
    ),
    "over the limit": (
        _inline(
            encoder_weight=tensor(np.ones((5000, 32))), decoder_weight=tensor(np.ones((5000, 32)))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the inline concept set has 320000 values, the limit is 262144",
        "concepts.inline",
    ),
    "no encoder kind": (
        _inline(encoder=pb.CONCEPT_ENCODER_UNSPECIFIED),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown value 0 for concepts.inline.encoder",
        "concepts.inline.encoder",
    ),
    "bad tensor bytes": (
        _inline(decoder_weight=pb.Tensor(dtype="float32", shape=[3, 32], data=b"\x00" * 7)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "decoder_weight",
        None,
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_concept_sets_get_their_status_and_the_server_keeps_serving(
    stub: explain_pb2_grpc.ExplainServiceStub,
    assert_serving: Callable[[], None],
    case: str,
) -> None:
    ref, code, message, field = BAD[case]
    request = pb.ExplainConceptsRequest(model="bert", inputs=[pb.Input(text="x")], concepts=ref)
    with pytest.raises(grpc.RpcError) as err:
        stub.ExplainConcepts(request, timeout=30)
    error = err.value
    assert error.code() == code, error.details()
    assert message in error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    violations = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        violations.extend(v.field for v in bad.field_violations)
    if field is not None:
        assert violations == [field]
    assert_serving()


def test_bad_concept_targets_name_the_field(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text="x y")],
        saliency=pb.Saliency(),
        concept_target=pb.ConceptTarget(
            concepts=pb.ConceptSetRef(name="bert-relu"), concepts_explained=[pb.Target(index=9)]
        ),
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "concept 9 is out of range: concept set 'bert-relu' has 6 concepts" in err.value.details()
    )
    status = rpc_status.from_call(err.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["concept_target.concepts_explained[0]"]


def test_a_layers_set_gives_a_row_per_unit_with_its_units(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    request = pb.ExplainConceptsRequest(
        model="bert",
        inputs=[pb.Input(text="The food was cold. Rude staff!", targets=[pb.Target(index=1)])],
        concepts=pb.ConceptSetRef(name="bert-layer"),
        granularity=pb.ACTIVATION_GRANULARITY_WORD,
        aggregation=pb.AGGREGATION_SUM,
        normalization=False,
    )
    (e,) = stub.ExplainConcepts(request, timeout=60).explanations
    assert [u.text for u in e.units] == ["The", "food", "was", "cold", ".", "Rude", "staff", "!"]
    assert e.concepts.rows == 8
    assert e.concepts.cols == 5
    (target,) = e.targets
    assert target.contributions.rows == 8
    parts = target.concept_sum + target.residual + target.bias + target.gap
    assert parts == pytest.approx(target.output, abs=1e-5)
    # Not a concept target: a layer's set has a row per token.
    with pytest.raises(grpc.RpcError) as err:
        stub.Explain(
            pb.ExplainRequest(
                model="bert",
                inputs=[pb.Input(text="x")],
                occlusion=pb.Occlusion(),
                concept_target=pb.ConceptTarget(concepts=pb.ConceptSetRef(name="bert-layer")),
            ),
            timeout=30,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a concept target is a concept of a set at the classification head's input" in (
        err.value.details()
    )
