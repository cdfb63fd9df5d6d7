"""Fuzz of the JSON routes: hypothesis sends every POST route (ExplainService's RPCs, OIP's infer,
KServe's :predict and :explain) malformed JSON, arbitrary JSON, good requests with a field
replaced by a value of any type, and bodies over the bound. Each gets a result or a 4xx with the
route's error body, never a 5xx; the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format
from http_calls import MAX_BODY_BYTES, SAMPLES, HttpLive
from hypothesis import event, given
from hypothesis import strategies as st

from explainserve.http.paths import rpc_path

INFER = {
    "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["Good.", "Bad."]}],
    "outputs": [{"name": "logits"}],
}
IDS = {
    "inputs": [
        {"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": [101, 7592, 2088, 102]},
        {"name": "attention_mask", "shape": [1, 4], "datatype": "INT32", "data": [[1, 1, 1, 1]]},
    ],
    "parameters": {"granularity": "all_tokens"},
}
KSERVE = {"instances": ["Good.", {"text": "Bad."}], "parameters": {"granularity": "token"}}
#: Every POST route with a good body for it (gpt2's samples need no concept set).
GOOD: dict[str, dict[str, Any]] = {
    **{rpc_path(rpc): json_format.MessageToDict(request) for rpc, request in SAMPLES.items()},
    "/v2/models/bert/infer": INFER,
    "/v2/models/bert/versions/1/infer": IDS,
    "/v1/models/bert:predict": {"instances": ["Good.", "Bad."]},
    "/v1/models/bert:explain": KSERVE,
}
ROUTES = sorted(GOOD)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["bert", "gpt2", "", "nope", "GRANULARITY_WORD", "word", "-1", "1e9"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutated(document: Any, data: st.DataObject) -> Any:
    """`document` with one value somewhere in it (any depth) replaced by any JSON value, or one
    key added or removed."""
    if isinstance(document, dict) and document and data.draw(st.integers(0, 3)) > 0:
        key = data.draw(st.sampled_from(sorted(document)))
        out = dict(document)
        action = data.draw(st.sampled_from(["deeper", "replace", "drop", "add"]))
        if action == "deeper":
            out[key] = mutated(out[key], data)
        elif action == "replace":
            out[key] = data.draw(values)
        elif action == "drop":
            del out[key]
        else:
            out[data.draw(st.text(max_size=8))] = data.draw(values)
        return out
    if isinstance(document, list) and document and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(document) - 1))
        return [*document[:i], mutated(document[i], data), *document[i + 1 :]]
    return data.draw(values)


def answered(live: HttpLive, path: str, body: bytes) -> None:
    reply = live.post(path, body)
    event(str(reply.status))  # pytest --hypothesis-show-statistics: the spread of outcomes
    assert 200 <= reply.status < 500, (path, reply.status, reply.body[:500])
    if reply.status >= 400:
        error = reply.json()
        if path.startswith(("/v2/", "/v1/models/")):
            assert isinstance(error["error"], str)
        else:
            assert isinstance(error["code"], int)
            assert isinstance(error["message"], str)


@given(path=st.sampled_from(ROUTES), data=st.data())
def test_wrong_types_and_shapes_get_a_4xx(live: HttpLive, path: str, data: st.DataObject) -> None:
    answered(live, path, json.dumps(mutated(GOOD[path], data)).encode())


datatypes = st.sampled_from(
    ["BYTES", "INT64", "INT32", "INT8", "UINT64", "FP32", "FP64", "BOOL", "FP16", "int64", ""]
)


@given(
    name=st.sampled_from(["text", "input_ids", "attention_mask", "x"]),
    datatype=datatypes,
    shape=st.lists(st.integers(-2, 5), max_size=3),
    data=st.lists(values, max_size=6) | values,
    binary=st.none() | st.integers(-1, 40),
)
def test_any_tensor_gets_a_result_or_a_4xx(
    live: HttpLive, name: str, datatype: str, shape: list[int], data: Any, binary: int | None
) -> None:
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    if binary is not None:
        tensor["parameters"] = {"binary_data_size": binary}
    answered(live, "/v2/models/bert/infer", json.dumps({"inputs": [tensor]}).encode())


@given(path=st.sampled_from(ROUTES), body=values)
def test_arbitrary_json_gets_a_4xx(live: HttpLive, path: str, body: Any) -> None:
    answered(live, path, json.dumps(body).encode())


@given(
    path=st.sampled_from(ROUTES),
    cut=st.integers(0, 400),
    noise=st.binary(max_size=30),
)
def test_malformed_json_gets_a_4xx(live: HttpLive, path: str, cut: int, noise: bytes) -> None:
    good = json.dumps(GOOD[path]).encode()
    answered(live, path, good[: cut % (len(good) + 1)] + noise)


@pytest.mark.parametrize("path", ROUTES)
def test_a_huge_body_gets_413(live: HttpLive, path: str) -> None:
    body = json.dumps({"padding": "x" * (MAX_BODY_BYTES + 1)}).encode()
    reply = live.post(path, body)
    assert reply.status == 413


def test_the_server_still_serves_after_the_fuzz(assert_serving: Callable[[], None]) -> None:
    assert_serving()
