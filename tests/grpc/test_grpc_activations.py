"""GetActivations and PredictFromActivations through the live server: values decoded from the raw
bytes the way the proto documents, chunk reassembly, errors with their status codes and a
server that keeps serving."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from numpy.typing import NDArray
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from explainserve.explain.service import Explainer
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Dr. Smith arrived. He sat down! Did he eat?",
    "A short line.",
]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def decode(t: pb.Tensor) -> NDArray[np.float32]:
    """A client's decoding, following the recipes of the proto's Tensor comment."""
    shape = [int(d) for d in t.shape]
    if t.dtype == "float32":
        flat = np.frombuffer(t.data, "<f4")
    elif t.dtype == "float16":
        flat = np.frombuffer(t.data, "<f2").astype(np.float32)
    elif t.dtype == "bfloat16":
        flat = (np.frombuffer(t.data, "<u2").astype("<u4") << 16).view("<f4")
    else:
        raise AssertionError(t.dtype)
    return flat.reshape(shape).astype(np.float32)


def tensor(x: NDArray[np.float32]) -> pb.Tensor:
    """A float32 tensor message of `x`."""
    return pb.Tensor(dtype="float32", shape=list(x.shape), data=x.astype("<f4").tobytes())


def texts(*items: str) -> list[pb.Input]:
    return [pb.Input(text=t) for t in items]


class Reply:
    """A GetActivations stream reassembled by appending its chunks."""

    def __init__(self, chunks: list[pb.GetActivationsResponse]) -> None:
        self.chunks = chunks
        self.values: dict[str, NDArray[np.float32]] = {}
        self.offsets = [0]
        self.units: list[pb.InputUnits] = []
        logits = []
        self.predicted: list[int] = []
        parts: dict[str, list[NDArray[np.float32]]] = {}
        for chunk in chunks:
            assert chunk.input_start == len(self.offsets) - 1
            assert len(chunk.row_offsets) == chunk.input_count + 1
            assert chunk.row_offsets[0] == 0
            base = self.offsets[-1]
            self.offsets.extend([base + o for o in chunk.row_offsets[1:]])
            for activation in chunk.activations:
                rows = decode(activation.values)
                assert rows.shape[0] == chunk.row_offsets[-1]
                parts.setdefault(activation.split_point, []).append(rows)
            self.units.extend(chunk.units)
            if chunk.HasField("logits"):
                logits.append(decode(chunk.logits))
                self.predicted.extend(chunk.predicted_classes)
        self.values = {k: np.concatenate(v) for k, v in parts.items()}
        self.logits = np.concatenate(logits) if logits else None

    def rows(self, name: str, i: int) -> NDArray[np.float32]:
        return self.values[name][self.offsets[i] : self.offsets[i + 1]]


def get(stub: explain_pb2_grpc.ExplainServiceStub, **fields: Any) -> Reply:
    return Reply(list(stub.GetActivations(pb.GetActivationsRequest(**fields), timeout=60)))


class Reference:
    """The tiny models loaded directly, one unpadded input at a time."""

    def __init__(self, path: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, dtype=torch.float32
        ).eval()

    def run(self, text: str) -> Any:
        ids = torch.as_tensor([self.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            return self.model(input_ids=ids, output_hidden_states=True)


@pytest.fixture(scope="module")
def reference(tiny_bert_dir: Path, tiny_gpt2_dir: Path) -> dict[str, Reference]:
    return {"bert": Reference(tiny_bert_dir), "gpt2": Reference(tiny_gpt2_dir)}


def close(actual: Any, expected: Any) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_get_model_marks_the_head_input(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    expected = {"bert": ("classifier:input", [-1, 32]), "gpt2": ("score:input", [-1, -1, 32])}
    for name, (point, shape) in expected.items():
        points = stub.GetModel(pb.GetModelRequest(name=name), timeout=10).model.split_points
        flagged = [p for p in points if p.head_input]
        assert [(p.name, list(p.shape)) for p in flagged] == [(point, shape)]
        names = [p.name for p in points]
        assert names.index(point) == names.index(point.split(":")[0]) - 1


def test_default_is_the_head_input(
    stub: explain_pb2_grpc.ExplainServiceStub, reference: dict[str, Reference]
) -> None:
    bert = reference["bert"].model
    lone = get(stub, model="bert", inputs=texts(TEXTS[1]))
    with torch.no_grad():
        pooled = bert.bert.pooler(reference["bert"].run(TEXTS[1]).hidden_states[-1]).numpy()
    # The same arithmetic in the same shapes, but not the same call (the server passes an attention
    # mask, the reference none): equal to float32 rounding through the two layers.
    np.testing.assert_allclose(lone.values["classifier:input"], pooled, rtol=1e-5, atol=1e-6)
    batch = get(stub, model="bert", inputs=texts(*TEXTS))
    ((chunk),) = batch.chunks
    assert [a.split_point for a in chunk.activations] == ["classifier:input"]
    assert chunk.activations[0].values.dtype == "float32"
    assert list(chunk.activations[0].values.shape) == [len(TEXTS), 32]
    assert not chunk.units  # CLS_TOKEN: one row per input, nothing to describe
    for i, text in enumerate(TEXTS):
        with torch.no_grad():
            expected = bert.bert.pooler(reference["bert"].run(text).hidden_states[-1]).numpy()
        close(batch.rows("classifier:input", i), expected)


def test_gpt2_head_input_is_the_last_token(
    stub: explain_pb2_grpc.ExplainServiceStub, reference: dict[str, Reference]
) -> None:
    reply = get(stub, model="gpt2", inputs=texts(*TEXTS), include_predictions=True)
    for i, text in enumerate(TEXTS):
        out = reference["gpt2"].run(text)
        close(reply.rows("score:input", i), out.hidden_states[-1][0, -1:].numpy())
        close(reply.logits[i], out.logits[0].numpy())  # type: ignore[index]
    assert reply.predicted == reply.logits.argmax(axis=1).tolist()  # type: ignore[union-attr]


def test_all_tokens_are_ragged_with_offsets(
    stub: explain_pb2_grpc.ExplainServiceStub, reference: dict[str, Reference]
) -> None:
    reply = get(
        stub,
        model="bert",
        inputs=texts(*TEXTS),
        split_points=["bert.encoder.layer.1", "bert.embeddings"],
        granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
    )
    assert len(reply.chunks) == 1
    for i, text in enumerate(TEXTS):
        hidden = reference["bert"].run(text).hidden_states
        n = hidden[0].shape[1]
        assert reply.offsets[i + 1] - reply.offsets[i] == n
        close(reply.rows("bert.encoder.layer.1", i), hidden[2][0].numpy())
        close(reply.rows("bert.embeddings", i), hidden[0][0].numpy())
        units = reply.units[i]
        assert units.input_index == i
        assert len(units.units) == n
        assert units.units[0].text == units.units[-1].text == ""  # [CLS], [SEP]: no characters
        assert units.units[-1].char_start == units.units[-2].char_end
        assert [list(u.token_indices) for u in units.units] == [[k] for k in range(n)]


def test_omit_units(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    fields = {
        "model": "bert",
        "inputs": texts(*TEXTS),
        "split_points": ["bert.encoder.layer.0"],
        "granularity": pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
    }
    described = get(stub, **fields)
    bare = get(stub, omit_units=True, **fields)
    assert len(described.units) == len(TEXTS)
    assert bare.units == []
    assert bare.offsets == described.offsets


def test_word_units_describe_the_rows(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    reply = get(
        stub,
        model="bert",
        inputs=texts(TEXTS[0], TEXTS[2]),
        split_points=["bert.encoder.layer.0"],
        granularity=pb.ACTIVATION_GRANULARITY_WORD,
        aggregation=pb.AGGREGATION_MAX,
    )
    first, second = reply.units
    assert [u.text for u in first.units] == ["Hello", ",", "world", "!"]
    assert first.text == TEXTS[0]
    assert [(u.char_start, u.char_end) for u in first.units][:2] == [(0, 5), (5, 6)]
    assert second.input_index == 1
    assert reply.offsets == [0, 4, 4 + len(second.units)]
    sentences = get(
        stub,
        model="bert",
        inputs=texts(TEXTS[2]),
        split_points=["bert.encoder.layer.0"],
        granularity=pb.ACTIVATION_GRANULARITY_SENTENCE,
    )
    assert [u.text for u in sentences.units[0].units] == [
        "Dr. Smith arrived.",
        "He sat down!",
        "Did he eat?",
    ]
    assert sentences.values["bert.encoder.layer.0"].shape == (3, 32)


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_reduced_precision_decodes_to_the_rounded_values(
    stub: explain_pb2_grpc.ExplainServiceStub, dtype: str, torch_dtype: torch.dtype
) -> None:
    fields = {
        "model": "gpt2",
        "inputs": texts(TEXTS[1]),
        "split_points": ["transformer.h.1"],
        "granularity": pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
    }
    full = get(stub, **fields)
    half = get(stub, dtype=dtype, **fields)
    assert half.chunks[0].activations[0].values.dtype == dtype
    rounded = torch.from_numpy(full.values["transformer.h.1"]).to(torch_dtype).float().numpy()
    np.testing.assert_array_equal(half.values["transformer.h.1"], rounded)


def test_many_inputs_come_in_chunks_in_order(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    items = [TEXTS[i % len(TEXTS)] for i in range(600)]
    reply = get(stub, model="bert", inputs=texts(*items))
    assert [(c.input_start, c.input_count) for c in reply.chunks] == [
        (0, 256),
        (256, 256),
        (512, 88),
    ]
    values = reply.values["classifier:input"]
    assert values.shape == (600, 32)
    for i in range(len(TEXTS), 600):  # the same text gives the same row, wherever it is
        close(values[i], values[i % len(TEXTS)])


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_predict_from_activations_reproduces_the_logits(
    stub: explain_pb2_grpc.ExplainServiceStub, model: str
) -> None:
    reply = get(stub, model=model, inputs=texts(*TEXTS), include_predictions=True)
    (point,) = reply.values
    head = stub.PredictFromActivations(
        pb.PredictFromActivationsRequest(model=model, activations=tensor(reply.values[point])),
        timeout=30,
    )
    assert head.logits.dtype == "float32"
    assert list(head.logits.shape) == [len(TEXTS), 3]
    close(decode(head.logits), reply.logits)
    assert list(head.predicted_classes) == reply.predicted
    # An intervention: scale the activations; the logits follow the head.
    edited = reply.values[point] * 3.0
    changed = stub.PredictFromActivations(
        pb.PredictFromActivationsRequest(model=model, activations=tensor(edited)), timeout=30
    )
    assert not np.allclose(decode(changed.logits), decode(head.logits))


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        out.extend((v.field, v.description) for v in bad.field_violations)
    return out


BAD: dict[str, tuple[Callable[[], Any], grpc.StatusCode, str, str | None]] = {
    "unknown split point": (
        lambda: pb.GetActivationsRequest(
            model="bert", inputs=texts("x"), split_points=["bert.encoder.layer.7"]
        ),
        NOT_FOUND,
        "model 'bert' has no split point 'bert.encoder.layer.7' (did you mean "
        "'bert.encoder.layer.1', 'bert.encoder.layer.0', 'bert.encoder.layer.1.output'?); "
        "split points are: bert.embeddings, bert.embeddings.word_embeddings,",
        None,
    ),
    "unsupported dtype": (
        lambda: pb.GetActivationsRequest(model="bert", inputs=texts("x"), dtype="float64"),
        INVALID,
        "unsupported dtype 'float64': choose one of float32, float16, bfloat16",
        "dtype",
    ),
    "empty inputs": (
        lambda: pb.GetActivationsRequest(model="bert"),
        INVALID,
        "the request has no inputs",
        "inputs",
    ),
    "unknown granularity": (
        lambda: pb.GetActivationsRequest(model="bert", inputs=texts("x"), granularity=42),  # type: ignore[arg-type]
        INVALID,
        "unknown value 42 for granularity",
        "granularity",
    ),
    "word rows of a pooled split point": (
        lambda: pb.GetActivationsRequest(
            model="bert", inputs=texts("x"), granularity=pb.ACTIVATION_GRANULARITY_WORD
        ),
        INVALID,
        "split point 'classifier:input' has no token dimension",
        "granularity",
    ),
    "unknown model": (
        lambda: pb.GetActivationsRequest(model="nope", inputs=texts("x")),
        NOT_FOUND,
        "no model named 'nope'; loaded models: bert, gpt2",
        None,
    ),
    "empty text": (
        lambda: pb.GetActivationsRequest(model="gpt2", inputs=texts("ok", "")),
        INVALID,
        "input 1 is an empty string",
        "inputs[1].text",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_get_activations(
    stub: explain_pb2_grpc.ExplainServiceStub, assert_serving: Callable[[], None], case: str
) -> None:
    make, code, message, field = BAD[case]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GetActivations(make(), timeout=30))
    assert err.value.code() == code
    assert message in err.value.details()
    assert "Traceback" not in err.value.details()
    expected = [] if field is None else [(field, err.value.details())]
    assert field_violations(err.value) == expected
    assert_serving()
    assert get(stub, model="bert", inputs=texts("still fine")).offsets == [0, 1]


HEAD_BAD: dict[str, tuple[pb.Tensor, str, str]] = {
    "shape mismatch": (
        tensor(np.zeros((2, 16), np.float32)),
        "activations have shape [2, 16]; the head of model 'bert' takes its input "
        "'classifier:input' as [rows, 32]",
        "activations.shape",
    ),
    "byte count": (
        pb.Tensor(dtype="float16", shape=[2, 32], data=b"\x00" * 64),
        "activations.data has 64 bytes; shape [2, 32] of float16 needs 128",
        "activations.data",
    ),
    "dtype": (
        pb.Tensor(dtype="int8", shape=[2, 32], data=b"\x00" * 64),
        "unsupported dtype 'int8': choose one of float32, float16, bfloat16",
        "activations.dtype",
    ),
    "no rows": (
        tensor(np.zeros((0, 32), np.float32)),
        "activations have no rows",
        "activations.shape",
    ),
}


@pytest.mark.parametrize("case", list(HEAD_BAD))
def test_bad_predict_from_activations(
    stub: explain_pb2_grpc.ExplainServiceStub, assert_serving: Callable[[], None], case: str
) -> None:
    activations, message, field = HEAD_BAD[case]
    with pytest.raises(grpc.RpcError) as err:
        stub.PredictFromActivations(
            pb.PredictFromActivationsRequest(model="bert", activations=activations), timeout=30
        )
    assert err.value.code() == INVALID
    assert err.value.details() == message
    assert field_violations(err.value) == [(field, message)]
    assert_serving()


def test_client_cancellation_mid_stream(
    live_server: Any,
    stub: explain_pb2_grpc.ExplainServiceStub,
    explainer: Explainer,
    assert_serving: Callable[[], None],
) -> None:
    """The client reads one chunk and cancels: the server stops computing chunks soon after
    (the look-ahead is bounded: 5 chunks of 256 inputs), far from the 5000 inputs asked for."""
    worker = explainer.registry.get("bert").worker
    stats = worker.stats
    before = stats.rows
    items = [TEXTS[i % len(TEXTS)] for i in range(5000)]
    call = stub.GetActivations(
        pb.GetActivationsRequest(
            model="bert",
            inputs=texts(*items),
            split_points=["bert.encoder.layer.1"],
            granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
        ),
        timeout=60,
    )
    first = next(call)
    assert first.input_start == 0
    call.cancel()
    with pytest.raises(grpc.RpcError) as err:
        list(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    # The server's handler ends (a server that went on would end only after all 5000
    # inputs), then its queued work is dropped or run: what it computed is then final.
    deadline = time.monotonic() + 60
    while live_server.running.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live_server.running.state.in_flight == 0
    worker.wait_idle()
    done = stats.rows - before
    print("rows computed before the cancellation took effect:", done)
    assert done < 2500
    assert_serving()
