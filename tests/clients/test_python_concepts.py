"""The light Python client's concept calls against a real server ("pca4" on the tiny BERT, see
conftest.py): ExplainConcepts' numbers as numpy arrays exactly as the server sent them, the
requests its options build, inline sets, the concept sets GetModel lists, and Explain with a
concept target."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from client_server import ClientServer, assert_same, handler_server, raw_call

from explainserve_client import (
    Client,
    ConceptExplanation,
    ConceptSetInfo,
    InlineConceptSet,
    concept_set_ref,
    pb,
)
from explainserve_client.client import SERVICE

SET = "pca4"
LABELS = ("pc0", "pc1", "pc2", "pc3")
TEXTS = ["The food was cold.", "Great service, friendly staff!", "It was fine."]


@pytest.fixture
def client(client_server: ClientServer) -> Client:
    return Client(client_server.target, token=client_server.token)


class Recorder(grpc.GenericRpcHandler):
    """A server that records the ExplainConcepts requests it gets and answers them with no
    explanations (GetModel: a model of that name)."""

    def __init__(self) -> None:
        self.requests: list[pb.ExplainConceptsRequest] = []

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        def get_model(request: pb.GetModelRequest, _: Any) -> pb.GetModelResponse:
            return pb.GetModelResponse(model=pb.ModelInfo(name=request.name))

        def explain_concepts(
            request: pb.ExplainConceptsRequest, _: Any
        ) -> pb.ExplainConceptsResponse:
            self.requests.append(request)
            return pb.ExplainConceptsResponse(model=request.model)

        methods: dict[str, tuple[Any, Any]] = {
            f"/{SERVICE}/GetModel": (get_model, pb.GetModelRequest),
            f"/{SERVICE}/ExplainConcepts": (explain_concepts, pb.ExplainConceptsRequest),
        }
        entry = methods.get(handler_call_details.method)  # type: ignore[attr-defined]
        if entry is None:
            return None
        function, request_type = entry
        return grpc.unary_unary_rpc_method_handler(
            function,
            request_deserializer=request_type.FromString,
            response_serializer=lambda reply: reply.SerializeToString(),
        )


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    handler = Recorder()
    with handler_server(handler) as target:
        yield handler, target


def served_inline(server: ClientServer) -> InlineConceptSet:
    """The served "pca4" set's parameters, sent inline."""
    cs = server.explainer.concepts.get("bert", SET, "test").concept_set
    return InlineConceptSet(
        encoder="linear",
        encoder_weight=cs.encoder.weight,
        encoder_center=cs.encoder.center,
        decoder_weight=cs.decoder_weight,
        decoder_bias=cs.decoder_bias,
        labels=LABELS,
    )


def assert_same_concepts(
    e: ConceptExplanation, proto: pb.ConceptExplanation, reply: pb.ExplainConceptsResponse
) -> None:
    """The dataclass holds exactly what the message holds (float32 values, bit for bit)."""
    assert e.input_index == proto.input_index
    assert e.text == proto.text
    assert e.token_ids.tolist() == list(proto.token_ids)
    assert (e.concept_set, e.concept_labels) == (reply.concept_set, tuple(reply.concept_labels))
    assert e.concepts.dtype == np.float32
    assert e.concepts.shape == (proto.concepts.rows, proto.concepts.cols)
    assert e.concepts.ravel().tolist() == list(proto.concepts.values)
    assert [(t.index, t.label) for t in e.targets] == [
        (t.target.index, t.target.label) for t in proto.targets
    ]
    assert e.contributions.dtype == np.float32
    assert e.contributions.shape == (len(proto.targets), *e.concepts.shape)
    for t, target in enumerate(proto.targets):
        assert e.contributions[t].ravel().tolist() == list(target.contributions.values)
        assert e.outputs[t] == np.float32(target.output)
        assert e.residuals[t] == np.float32(target.residual)
        assert e.biases[t] == np.float32(target.bias)
        assert e.concept_sums[t] == np.float32(target.concept_sum)
        assert e.gaps[t] == np.float32(target.gap)
    assert e.logits.tolist() == list(proto.logits)
    assert e.reconstruction_error == pytest.approx(proto.reconstruction_error, abs=0)
    assert e.forward_passes == proto.counters.forward_passes
    assert [(u.text, u.start, u.end, list(u.token_indices)) for u in e.units] == [
        (u.text, u.char_start, u.char_end, list(u.token_indices)) for u in proto.units
    ]


def test_models_list_their_concept_sets(client: Client) -> None:
    expected = ConceptSetInfo(
        name=SET,
        split_point="classifier:input",
        encoder="linear",
        granularity="cls_token",
        method="sklearn.decomposition.PCA",
        labels=LABELS,
    )
    assert client.get_model("bert").concept_sets == (expected,)
    models = {m.name: m for m in client.list_models()}
    assert models["bert"].concept_sets == (expected,)
    assert models["gpt2-lm"].concept_sets == ()


def test_explain_concepts_returns_what_the_server_sent(
    client: Client, client_server: ClientServer
) -> None:
    explanations = client.explain_concepts(
        "bert", TEXTS, concepts=SET, targets=[0, "positive"], isolate_batches=True
    )
    request = pb.ExplainConceptsRequest(
        model="bert",
        inputs=[
            pb.Input(text=t, targets=[pb.Target(index=0), pb.Target(label="positive")])
            for t in TEXTS
        ],
        concepts=pb.ConceptSetRef(name=SET),
        isolate_batches=True,
    )
    # isolate_batches: the same request gets the same numbers, bit for bit.
    reply = raw_call(client_server, "ExplainConcepts", request)
    assert len(explanations) == len(TEXTS)
    for e, proto in zip(explanations, reply.explanations, strict=True):
        assert_same_concepts(e, proto, reply)
    first = explanations[0]
    assert first.concept_set == SET
    assert first.concept_labels == LABELS
    assert first.concepts.shape == (1, 4)
    assert first.contributions.shape == (2, 1, 4)
    assert [t.label for t in first.targets] == ["negative", "positive"]
    assert first.labels == ("negative", "neutral", "positive")
    assert first.predicted_index == int(np.argmax(first.logits))
    # The terms add up to the output (a linear head in logits mode: the gap is rounding).
    total = first.concept_sums + first.residuals + first.biases + first.gaps
    np.testing.assert_allclose(total, first.outputs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(first.gaps, 0, atol=1e-4)
    # Normalized by default: a unit absolute sum per target.
    np.testing.assert_allclose(np.abs(first.contributions).sum(axis=(1, 2)), 1, atol=1e-5)
    assert 0 < first.reconstruction_error < 1


def test_top_concepts_rank_by_absolute_contribution(client: Client) -> None:
    (e,) = client.explain_concepts("bert", TEXTS[0], concepts=SET, targets=[0, 2])
    for t in range(2):
        values = e.contributions[t, 0]
        top = e.top_concepts(t)
        assert sorted(top, key=lambda item: -abs(item[1])) == top
        assert dict(top) == pytest.approx(dict(zip(LABELS, values.tolist(), strict=True)))
        assert e.top_concepts(t, 2) == top[:2]


def test_the_options_are_sent(recorder: tuple[Recorder, str]) -> None:
    handler, target = recorder
    with Client(target) as client:
        assert client.explain_concepts("m", "a", concepts=SET) == []
        client.explain_concepts(
            "m",
            ["a", pb.Input(text="b")],
            concepts=InlineConceptSet(decoder_weight=np.eye(2)),
            targets=["neutral", 2],
            inference_mode="softmax",
            concepts_x_gradients=False,
            normalization=False,
            granularity="sentence",
            aggregation="max",
            truncate=True,
            isolate_batches=True,
            priority="batch",
        )
    default, request = handler.requests
    assert default.model == "m"
    assert [i.text for i in default.inputs] == ["a"]
    assert default.concepts.name == SET
    # Sent explicitly (both fields are optional: unset means true too).
    assert (default.HasField("concepts_x_gradients"), default.concepts_x_gradients) == (True, True)
    assert (default.HasField("normalization"), default.normalization) == (True, True)
    assert default.inference_mode == pb.INFERENCE_MODE_UNSPECIFIED
    assert default.priority == pb.PRIORITY_UNSPECIFIED
    assert default.granularity == pb.ACTIVATION_GRANULARITY_UNSPECIFIED
    assert default.aggregation == pb.AGGREGATION_UNSPECIFIED
    assert (default.truncate, default.isolate_batches) == (False, False)

    assert request.concepts.WhichOneof("set") == "inline"
    assert list(request.concepts.inline.decoder_weight.shape) == [2, 2]
    assert (request.HasField("concepts_x_gradients"), request.concepts_x_gradients) == (True, False)
    assert (request.HasField("normalization"), request.normalization) == (True, False)
    assert request.inference_mode == pb.INFERENCE_MODE_SOFTMAX
    assert request.priority == pb.PRIORITY_BATCH
    assert request.granularity == pb.ACTIVATION_GRANULARITY_SENTENCE
    assert request.aggregation == pb.AGGREGATION_MAX
    assert (request.truncate, request.isolate_batches) == (True, True)
    # `targets` go to the plain-text inputs; an Input message is sent as it is.
    assert [(t.label, t.index) for t in request.inputs[0].targets] == [("neutral", 0), ("", 2)]
    assert list(request.inputs[1].targets) == []


def test_the_options_reach_the_server(client: Client) -> None:
    # Raw C * gradient: the contributions sum to concept_sum; the gradient alone times C too.
    (raw,) = client.explain_concepts("bert", TEXTS[0], concepts=SET, normalization=False)
    np.testing.assert_allclose(raw.contributions.sum(axis=(1, 2)), raw.concept_sums, atol=1e-5)
    (grad,) = client.explain_concepts(
        "bert", TEXTS[0], concepts=SET, normalization=False, concepts_x_gradients=False
    )
    np.testing.assert_allclose(grad.contributions * grad.concepts, raw.contributions, atol=1e-5)
    (soft,) = client.explain_concepts("bert", TEXTS[0], concepts=SET, inference_mode="softmax")
    assert soft.outputs[0] == pytest.approx(float(soft.probabilities[soft.targets[0].index]))


def test_an_inline_set_gives_the_served_sets_numbers(
    client: Client, client_server: ClientServer
) -> None:
    inline = served_inline(client_server)
    served = client.explain_concepts("bert", TEXTS, concepts=SET, isolate_batches=True)
    for concepts in (inline, inline.to_proto()):
        sent = client.explain_concepts("bert", TEXTS, concepts=concepts, isolate_batches=True)
        for a, b in zip(sent, served, strict=True):
            assert (a.concept_set, a.concept_labels) == ("inline", LABELS)
            np.testing.assert_allclose(a.concepts, b.concepts, atol=1e-5)
            np.testing.assert_allclose(a.contributions, b.contributions, atol=1e-5)
            np.testing.assert_allclose(a.residuals, b.residuals, atol=1e-5)
    message = inline.to_proto()
    assert message.encoder == pb.CONCEPT_ENCODER_LINEAR
    assert list(message.decoder_weight.shape) == [4, 32]
    assert not message.HasField("encoder_bias")
    assert not message.split_point  # the server reads it as the head's input
    relu = InlineConceptSet(
        encoder="topk", encoder_weight=np.eye(2), decoder_weight=np.eye(2), top_k=1
    ).to_proto()
    assert (relu.encoder, relu.top_k, relu.encoder_weight.dtype) == (
        pb.CONCEPT_ENCODER_TOPK,
        1,
        "float32",
    )
    with pytest.raises(ValueError, match="unknown concept_encoder 'sae'"):
        InlineConceptSet(encoder="sae", decoder_weight=np.eye(2)).to_proto()
    with pytest.raises(TypeError, match="concepts must be a set's name"):
        concept_set_ref(np.eye(2))  # type: ignore[arg-type]


def test_a_layers_set_gives_a_row_per_word_with_its_units(
    client: Client, client_server: ClientServer
) -> None:
    # Six orthonormal directions of the first layer's 32 features, sent inline.
    directions = np.linalg.qr(np.random.default_rng(0).normal(size=(32, 6)))[0].T
    inline = InlineConceptSet(
        encoder_weight=directions, decoder_weight=directions, split_point="bert.encoder.layer.0"
    )
    explanations = client.explain_concepts(
        "bert", TEXTS[:2], concepts=inline, granularity="word", isolate_batches=True
    )
    request = pb.ExplainConceptsRequest(
        model="bert",
        inputs=[pb.Input(text=t) for t in TEXTS[:2]],
        concepts=pb.ConceptSetRef(inline=inline.to_proto()),
        granularity=pb.ACTIVATION_GRANULARITY_WORD,
        isolate_batches=True,
    )
    reply = raw_call(client_server, "ExplainConcepts", request)
    for e, proto in zip(explanations, reply.explanations, strict=True):
        assert_same_concepts(e, proto, reply)
    e = explanations[0]
    assert [u.text for u in e.units] == ["The", "food", "was", "cold", "."]
    assert e.concepts.shape == (5, 6)
    assert e.contributions.shape == (1, 5, 6)
    # Normalized over the rows and concepts together.
    assert float(np.abs(e.contributions).sum()) == pytest.approx(1, abs=1e-5)
    top = e.top_concepts(0)
    assert dict(top) == pytest.approx(
        dict(zip(e.concept_labels, e.contributions[0].sum(axis=0).tolist(), strict=True))
    )
    (sentence,) = client.explain_concepts(
        "bert", TEXTS[0], concepts=inline, granularity="sentence", aggregation="max"
    )
    assert [u.text for u in sentence.units] == [TEXTS[0]]


def test_explain_with_a_concept_target(client: Client, client_server: ClientServer) -> None:
    explanations = client.explain(
        "bert", TEXTS, concepts=SET, concepts_explained=["pc1", 0], isolate_batches=True
    )
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=t) for t in TEXTS],
        occlusion=pb.Occlusion(),
        isolate_batches=True,
        concept_target=pb.ConceptTarget(
            concepts=pb.ConceptSetRef(name=SET),
            concepts_explained=[pb.Target(label="pc1"), pb.Target(index=0)],
        ),
    )
    reply = raw_call(client_server, "Explain", request)
    for e, proto in zip(explanations, reply.explanations, strict=True):
        assert_same(e, proto)
    concept = client.explain_concepts("bert", TEXTS, concepts=SET, isolate_batches=True)
    for e, c in zip(explanations, concept, strict=True):
        assert [(t.index, t.label) for t in e.targets] == [(1, "pc1"), (0, "pc0")]
        assert e.concept_activations.shape == (4,)
        np.testing.assert_allclose(e.concept_activations, c.concepts[0], atol=1e-5)

    # No concept named: each input's most activated one; an inline set works the same.
    inline = client.explain("bert", TEXTS[:1], concepts=served_inline(client_server))
    (e,) = client.explain("bert", TEXTS[:1], concepts=SET)
    assert e.targets[0].index == int(np.argmax(e.concept_activations))
    assert inline[0].targets == e.targets
    (plain,) = client.explain("bert", TEXTS[:1])
    assert plain.concept_activations.size == 0
    assert not client.explain_request("bert", "a").HasField("concept_target")
    with pytest.raises(ValueError, match="concepts_explained needs concepts"):
        client.explain_request("bert", "a", concepts_explained=[0])


def test_concept_errors_are_rpc_errors(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as unknown:
        client.explain_concepts("bert", "a", concepts="nope")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert SET in (unknown.value.details() or "")
    with pytest.raises(grpc.RpcError) as other:
        client.explain_concepts("gpt2-lm", "a", concepts=SET)
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as label:
        client.explain("bert", "a", concepts=SET, concepts_explained=["pc9"])
    assert label.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pc9" in (label.value.details() or "")
