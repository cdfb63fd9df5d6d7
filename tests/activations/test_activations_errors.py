"""Bad GetActivations and PredictFromActivations requests: domain errors with clear messages,
raised before any work is queued, and a registry that keeps serving."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from activation_refs import TEXTS, run_texts

from explainserve.activations.limits import ActivationLimits
from explainserve.activations.params import ActivationParams, HeadParams
from explainserve.activations.service import Activator
from explainserve.activations.tensors import RawTensor, encode
from explainserve.errors import InvalidArgument, NotFound
from explainserve.models.registry import Registry
from explainserve.vocabulary import InputSpec


def request(*texts: str, model: str = "bert", **fields: Any) -> ActivationParams:
    return ActivationParams(
        model=model, inputs=[InputSpec(text=t) for t in texts or TEXTS[:2]], **fields
    )


def fails(activator: Activator, params: ActivationParams, registry: Registry) -> Exception:
    """The error get_activations raises at once, having queued nothing."""
    stats = registry.get(params.model).worker.stats if params.model == "bert" else None
    before = stats.rows if stats is not None else 0
    with pytest.raises((InvalidArgument, NotFound)) as err:
        activator.get_activations(params)
    if stats is not None:
        assert stats.rows == before
    return err.value


def test_unknown_split_point_lists_the_valid_ones(activator: Activator, registry: Registry) -> None:
    err = fails(activator, request(split_points=["bert.encoder.layer.9"]), registry)
    assert isinstance(err, NotFound)
    names = [n for n, _ in registry.get("bert").split_points]
    assert len(names) > 20
    assert err.message == (
        "model 'bert' has no split point 'bert.encoder.layer.9' (did you mean "
        "'bert.encoder.layer.1', 'bert.encoder.layer.0', 'bert.encoder.layer.1.output'?); "
        "split points are: "
        f"{', '.join(names[:20])}, ... and {len(names) - 20} more (GetModel lists them all)"
    )


def test_unknown_split_point_of_a_small_model_lists_all(registry: Registry) -> None:
    listing_all = Activator(registry, ActivationLimits(listed_split_points=1000))
    err = fails(listing_all, request(split_points=["nothing.like.it"]), registry)
    names = [n for n, _ in registry.get("bert").split_points]
    assert err.message == (
        f"model 'bert' has no split point 'nothing.like.it'; split points are: {', '.join(names)}"
    )


def test_unknown_model(activator: Activator, registry: Registry) -> None:
    err = fails(activator, request(model="nope"), registry)
    assert isinstance(err, NotFound)
    assert err.message.startswith("no model named 'nope'; loaded models: bert, distilbert")


@pytest.mark.parametrize(
    ("params", "message", "field"),
    [
        (
            ActivationParams(model="bert", inputs=[]),
            "the request has no inputs",
            "inputs",
        ),
        (
            request(dtype="int8"),
            "unsupported dtype 'int8': choose one of float32, float16, bfloat16",
            "dtype",
        ),
        (
            request(split_points=["bert.pooler", "bert.pooler"]),
            "split point 'bert.pooler' is asked for twice",
            "split_points[1]",
        ),
        (
            request(granularity="word"),
            "split point 'classifier:input' has no token dimension (rows of shape [32], one per "
            "input): only granularity cls_token applies to it, not word",
            "granularity",
        ),
        (
            request(split_points=["bert.encoder.layer.0", "bert.pooler"], granularity="all_tokens"),
            "split point 'bert.pooler' has no token dimension (rows of shape [32], one per "
            "input): only granularity cls_token applies to it, not all_tokens",
            "split_points[1]",
        ),
        (
            request("fine", "   "),
            "input 1 is an empty string",
            "inputs[1].text",
        ),
        (
            ActivationParams(model="bert", inputs=[InputSpec(ids=[])]),
            "token_ids is empty",
            "inputs[0].token_ids.ids",
        ),
        (
            ActivationParams(model="bert", inputs=[InputSpec()]),
            "input 0 has neither text nor token_ids",
            "inputs[0]",
        ),
        (
            request("word " * 200),
            "input 0 has 202 tokens, more than the model's maximum of 128"
            ": shorten it, or set truncate to cut it",
            "inputs[0]",
        ),
    ],
)
def test_bad_requests(
    activator: Activator,
    registry: Registry,
    params: ActivationParams,
    message: str,
    field: str,
) -> None:
    err = fails(activator, params, registry)
    assert isinstance(err, InvalidArgument)
    assert err.message == message
    assert err.field == field
    assert run_texts(activator, "bert", TEXTS[:2]).offsets.tolist() == [0, 1, 2]


def test_limits(registry: Registry) -> None:
    tight = Activator(registry, ActivationLimits(max_inputs=3, max_input_bytes=1000))
    err = fails(tight, request(*TEXTS[:4]), registry)
    assert err.message == "the request has 4 inputs, the limit is 3"
    err = fails(
        tight,
        request(TEXTS[0], TEXTS[5], split_points=["bert.encoder.layer.0"], granularity="word"),
        registry,
    )
    # 23 tokens (an upper bound of its words) x 32 floats x 4 bytes.
    assert err.message == (
        "input 1's activations would take 2944 bytes, more than the limit of 1000: ask for "
        "fewer split points or a coarser granularity"
    )
    assert isinstance(err, InvalidArgument)
    assert err.field == "inputs[1]"


def test_a_model_without_head_needs_split_points(registry: Registry) -> None:
    served = registry.get("bert")
    activator = Activator(registry)
    head = served.head
    served.head = None
    try:
        err = fails(activator, request(), registry)
        assert err.message == (
            "model 'bert' has no classification head (no module classifier, "
            "classification_head, score): name the split points to capture"
        )
        assert run_texts(activator, "bert", TEXTS[:1], split_points=["bert.pooler"]).values
    finally:
        served.head = head


def head(model: str, tensor: RawTensor) -> HeadParams:
    return HeadParams(model=model, activations=tensor)


@pytest.mark.parametrize(
    ("model", "tensor", "message", "field"),
    [
        (
            "bert",
            encode(np.zeros((2, 16), np.float32), "float32"),
            "activations have shape [2, 16]; the head of model 'bert' takes its input "
            "'classifier:input' as [rows, 32]",
            "activations.shape",
        ),
        (
            "gpt2",
            encode(np.zeros((2, 5, 32), np.float32), "float32"),
            "activations have shape [2, 5, 32]; the head of model 'gpt2' takes its input "
            "'score:input' as [rows, 32]",
            "activations.shape",
        ),
        (
            "roberta",
            encode(np.zeros(32, np.float32), "float32"),
            "activations have shape [32]; the head of model 'roberta' takes its input "
            "'classifier:input' as [rows, 32]",
            "activations.shape",
        ),
        (
            "bert",
            encode(np.zeros((0, 32), np.float32), "float32"),
            "activations have no rows",
            "activations.shape",
        ),
        (
            "bert",
            RawTensor("float32", (2, 32), b"\x00" * 100),
            "activations.data has 100 bytes; shape [2, 32] of float32 needs 256",
            "activations.data",
        ),
        (
            "bert",
            RawTensor("int8", (2, 32), b"\x00" * 64),
            "unsupported dtype 'int8': choose one of float32, float16, bfloat16",
            "activations.dtype",
        ),
    ],
)
def test_bad_head_requests(
    activator: Activator, model: str, tensor: RawTensor, message: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        activator.predict_from_activations(head(model, tensor))
    assert err.value.message == message
    assert err.value.field == field
    good = activator.predict_from_activations(
        head(model, encode(np.zeros((1, 32), np.float32), "float32"))
    )
    assert good.logits.shape == (1, 3)


def test_head_row_limit(registry: Registry) -> None:
    tight = Activator(registry, ActivationLimits(max_head_rows=4))
    with pytest.raises(InvalidArgument, match="activations have 5 rows, the limit is 4"):
        tight.predict_from_activations(
            head("bert", encode(np.zeros((5, 32), np.float32), "float32"))
        )
