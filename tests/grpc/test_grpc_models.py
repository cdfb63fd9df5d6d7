"""ListModels and GetModel: the loaded models' metadata."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from concept_sets import CONCEPT_SETS

from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

LABELS = ["negative", "neutral", "positive"]


def expected_info(name: str, tokenizer: Any) -> pb.ModelInfo:
    """What the server must say about the tiny model `name`."""
    if name == "bert":
        replacement, token_id = "mask_token", tokenizer.mask_token_id
    else:
        replacement, token_id = "unk_token", tokenizer.unk_token_id
    # The concept sets the shared server serves for it (tests/concept_sets.py), by name, with
    # their concepts' labels.
    concept_sets = [
        pb.ConceptSetInfo(
            name=set_name,
            split_point=point or ("classifier:input" if model == "bert" else "score:input"),
            encoder=kind,
            granularity="cls_token",
            method="random",
            labels=[f"c{k}" for k in range(n)],
        )
        for set_name, (model, kind, n, point) in sorted(CONCEPT_SETS.items())
        if model == name
    ]
    return pb.ModelInfo(
        name=name,
        task="sequence-classification",
        labels=LABELS,
        max_length=128,
        device="cpu",
        dtype="float32",
        replacement=replacement,
        replacement_token_id=token_id,
        concept_sets=concept_sets,
    )


def without_split_points(info: pb.ModelInfo) -> pb.ModelInfo:
    out = pb.ModelInfo()
    out.CopyFrom(info)
    del out.split_points[:]
    return out


def test_list_models_gives_both_models(
    stub: explain_pb2_grpc.ExplainServiceStub, bert_tokenizer: Any, bpe_tokenizer: Any
) -> None:
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.name for m in reply.models] == ["bert", "gpt2"]
    bert, gpt2 = reply.models
    assert without_split_points(bert) == expected_info("bert", bert_tokenizer)
    assert without_split_points(gpt2) == expected_info("gpt2", bpe_tokenizer)
    # The tokenizers' own replacement ids: BERT has a mask token, the BPE only <unk>.
    assert bert.replacement_token_id == 103
    assert bpe_tokenizer.mask_token_id is None
    assert gpt2.replacement_token_id == bpe_tokenizer.convert_tokens_to_ids("<unk>")


@pytest.mark.parametrize(
    ("name", "tokenizer_fixture"), [("bert", "bert_tokenizer"), ("gpt2", "bpe_tokenizer")]
)
def test_get_model_equals_its_list_entry(
    stub: explain_pb2_grpc.ExplainServiceStub,
    request: pytest.FixtureRequest,
    name: str,
    tokenizer_fixture: str,
) -> None:
    reply = stub.GetModel(pb.GetModelRequest(name=name), timeout=10)
    assert without_split_points(reply.model) == expected_info(
        name, request.getfixturevalue(tokenizer_fixture)
    )
    listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert reply.model == listed[name]


@pytest.mark.parametrize("name", ["nope", "", "BERT"])
def test_get_model_unknown_is_not_found_listing_the_loaded_models(
    stub: explain_pb2_grpc.ExplainServiceStub, name: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(pb.GetModelRequest(name=name), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == f"no model named '{name}'; loaded models: bert, gpt2"
    assert stub.GetModel(pb.GetModelRequest(name="bert"), timeout=10).model.name == "bert"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "bert",
            {
                "bert.embeddings": [-1, -1, 32],
                "bert.encoder.layer.0": [-1, -1, 32],
                "bert.encoder.layer.1.intermediate": [-1, -1, 64],
                "bert.pooler": [-1, 32],
                "classifier": [-1, 3],
            },
        ),
        (
            "gpt2",
            {
                "transformer.wte": [-1, -1, 32],
                "transformer.h.1": [-1, -1, 32],
                "transformer.h.0.mlp.c_fc": [-1, -1, 128],
                "score": [-1, -1, 3],
            },
        ),
    ],
)
def test_split_points_are_the_modules_with_their_output_shapes(
    stub: explain_pb2_grpc.ExplainServiceStub, name: str, expected: dict[str, list[int]]
) -> None:
    points = stub.GetModel(pb.GetModelRequest(name=name), timeout=10).model.split_points
    shapes = {p.name: list(p.shape) for p in points}
    assert len(shapes) == len(points), "a split point is listed twice"
    for module, shape in expected.items():
        assert shapes[module] == shape, module
    # Module order: the classifier head comes last.
    assert points[-1].name == list(expected)[-1]
