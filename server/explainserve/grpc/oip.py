"""The Open Inference Protocol v2 (`inference.GRPCInferenceService`) on the server's port.

What a classifier serves through it:

- inputs: `text` (BYTES, shape `[batch]` or `[batch, 1]`: one text per row) or `input_ids`
  (INT64 or INT32, `[batch, tokens]`) with an optional `attention_mask` of the same shape;
- outputs: `logits` (FP32 `[batch, classes]`, the default when none is asked for) and, asked for
  by split point name (`classifier:input`, `bert.encoder.layer.3`, ...), activations: FP32
  `[batch, *features]`, the row the classification head reads (GetActivations' `cls_token`), or
  `[batch, tokens, *features]` with the request parameter `granularity: "all_tokens"` (then
  every input must have the same number of tokens: token ids always do);
- request parameters: `granularity` (string, `cls_token` or `all_tokens`) and `truncate` (bool:
  cut inputs over the token limit instead of refusing them).

ModelInfer is a GetActivations request underneath (`Activator.get_activations`): the same limits,
the same validation and the same per-model worker, batching OIP rows with every other request's.
Outputs travel as raw little-endian bytes (`raw_output_contents`), as Triton sends them; inputs
are read from either `raw_input_contents` or the typed `contents`. Errors are gRPC statuses with a
message saying what to change (INVALID_ARGUMENT, NOT_FOUND, ...), through the server's one status
table.
"""

from __future__ import annotations

import difflib
import math
import struct
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

import grpc
import numpy as np
from numpy.typing import NDArray

from explainserve import __version__
from explainserve.activations.params import ActivationGranularity, ActivationParams
from explainserve.activations.service import Activator, split_point_of
from explainserve.errors import InvalidArgument, NotFound, ResourceExhausted, quote
from explainserve.grpc.status import abort
from explainserve.inputs import fit_inputs
from explainserve.models.registry import Registry, ServedModel
from explainserve.oip import grpc_predict_v2_pb2 as oip
from explainserve.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from explainserve.vocabulary import InputSpec

#: The service's full name (health and reflection list it).
SERVICE_NAME = "inference.GRPCInferenceService"
#: The one version of every model.
MODEL_VERSION = "1"
#: `platform` in ModelMetadata: what serves the model.
PLATFORM = "explainserve_transformers"
TEXT_INPUT = "text"
IDS_INPUT = "input_ids"
MASK_INPUT = "attention_mask"
LOGITS_OUTPUT = "logits"
#: Request parameters understood (others are refused, so a typo does not pass unnoticed).
PARAMETERS = ("granularity", "truncate")
GRANULARITIES: tuple[ActivationGranularity, ...] = ("cls_token", "all_tokens")
#: numpy's little-endian dtype of each integer datatype accepted for token ids.
_ID_DTYPES = {"INT64": "<i8", "INT32": "<i4"}


@dataclass(frozen=True)
class _Tensor:
    """A request's input tensor: its name, datatype, shape, and where its values are."""

    index: int
    message: oip.ModelInferRequest.InferInputTensor
    raw: bytes | None

    @property
    def field(self) -> str:
        return f"inputs[{self.index}]"

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.message.shape]

    def count(self) -> int:
        """Elements the shape holds; InvalidArgument for a negative dimension."""
        if any(d < 0 for d in self.shape):
            raise InvalidArgument(
                f"input '{quote(self.message.name, 64)}' has shape {quote(self.shape)}: "
                "dimensions must not be negative",
                field=f"{self.field}.shape",
            )
        return math.prod(self.shape)


def decode_bytes(raw: bytes, count: int, field: str) -> list[bytes]:
    """The `count` elements of a raw BYTES tensor: each a 4-byte little-endian length, then
    that many bytes. InvalidArgument when the data does not hold exactly `count` elements."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InvalidArgument(
                f"raw BYTES data ends inside the length of element {len(out)}", field=field
            )
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidArgument(
                f"raw BYTES element {len(out)} says {n} bytes, {len(raw) - pos} are left",
                field=field,
            )
        out.append(raw[pos : pos + n])
        pos += n
        if len(out) > count:
            break
    if len(out) != count:
        raise InvalidArgument(
            f"raw BYTES data holds {len(out)}{'+' if pos < len(raw) else ''} elements, the "
            f"shape says {count}",
            field=field,
        )
    return out


class OipServicer(oip_grpc.GRPCInferenceServiceServicer):
    """The OIP face of an `Activator` (see the module doc). `is_ready` tells whether the
    server takes work (models loaded, not draining)."""

    def __init__(
        self,
        activator: Activator,
        is_ready: Callable[[], bool],
        max_tokens_per_input: int = 0,
        max_response_bytes: int = 0,
    ) -> None:
        self.activator = activator
        self.registry: Registry = activator.registry
        self.is_ready = is_ready
        #: The server's token limit per input (0 = each model's maximum).
        self.max_tokens_per_input = max_tokens_per_input
        #: The largest message the server sends (its max_message_bytes; 0 = unchecked here).
        self.max_response_bytes = max_response_bytes

    # -- health and metadata -----------------------------------------------------------------

    def ServerLive(  # noqa: N802 (gRPC method name)
        self, request: oip.ServerLiveRequest, context: grpc.ServicerContext
    ) -> oip.ServerLiveResponse:
        """Live whenever it answers."""
        return oip.ServerLiveResponse(live=True)

    def ServerReady(  # noqa: N802 (gRPC method name)
        self, request: oip.ServerReadyRequest, context: grpc.ServicerContext
    ) -> oip.ServerReadyResponse:
        """Ready once the models are loaded, until the server drains."""
        return oip.ServerReadyResponse(ready=self.is_ready())

    def ModelReady(  # noqa: N802 (gRPC method name)
        self, request: oip.ModelReadyRequest, context: grpc.ServicerContext
    ) -> oip.ModelReadyResponse:
        """Ready when the server is and the model is loaded; NOT_FOUND for an unknown model,
        INVALID_ARGUMENT for a causal LM (not served through this protocol)."""
        try:
            self._classifier(request.name, request.version)
            return oip.ModelReadyResponse(ready=self.is_ready())
        except Exception as exc:
            abort(context, exc)

    def ServerMetadata(  # noqa: N802 (gRPC method name)
        self, request: oip.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ServerMetadataResponse:
        """Name and version; no protocol extension."""
        return oip.ServerMetadataResponse(name="explainserve", version=__version__, extensions=[])

    def ModelMetadata(  # noqa: N802 (gRPC method name)
        self, request: oip.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ModelMetadataResponse:
        """The model's inputs and outputs: logits, then every split point (shapes of the default
        `cls_token` granularity; -1 = any size)."""
        try:
            model = self._classifier(request.name, request.version)
            tensor = oip.ModelMetadataResponse.TensorMetadata
            outputs = [tensor(name=LOGITS_OUTPUT, datatype="FP32", shape=[-1, len(model.labels)])]
            for name, shape in model.split_points:
                point = split_point_of(name, shape)
                outputs.append(tensor(name=name, datatype="FP32", shape=[-1, *point.features]))
            return oip.ModelMetadataResponse(
                name=model.name,
                versions=[MODEL_VERSION],
                platform=PLATFORM,
                inputs=[
                    tensor(name=TEXT_INPUT, datatype="BYTES", shape=[-1]),
                    tensor(name=IDS_INPUT, datatype="INT64", shape=[-1, -1]),
                    tensor(name=MASK_INPUT, datatype="INT64", shape=[-1, -1]),
                ],
                outputs=outputs,
            )
        except Exception as exc:
            abort(context, exc)

    # -- inference ---------------------------------------------------------------------------

    def ModelInfer(  # noqa: N802 (gRPC method name)
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        """Logits and activations of a batch of texts or token ids (see the module doc)."""
        try:
            model = self._classifier(request.model_name, request.model_version)
            granularity, truncate = _parameters(request)
            outputs = _requested_outputs(model, request)
            specs = _inputs(request)
            points = [name for name in outputs if name != LOGITS_OUTPUT]
            params = ActivationParams(
                model=model.name,
                inputs=fit_inputs(model, specs, self.max_tokens_per_input, truncate=truncate),
                # No split point: the head's input is captured (and dropped) on the way to the
                # logits, one row per input whatever the granularity asked for.
                split_points=points,
                granularity=granularity if points else "cls_token",
                predictions=LOGITS_OUTPUT in outputs,
                units=False,
            )
            return self._infer(request, model, params, outputs, context)
        except Exception as exc:
            abort(context, exc)

    def _infer(
        self,
        request: oip.ModelInferRequest,
        model: ServedModel,
        params: ActivationParams,
        outputs: list[str],
        context: grpc.ServicerContext,
    ) -> oip.ModelInferResponse:
        """Runs the activation request and lays its chunks out as OIP output tensors."""
        batch = len(params.inputs)
        data: dict[str, list[bytes]] = {name: [] for name in outputs}
        features: dict[str, tuple[int, ...]] = {}
        tokens: int | None = None
        size = 0
        chunks = self.activator.get_activations(
            params, is_cancelled=lambda: not context.is_active()
        )
        with closing(chunks):
            for chunk in chunks:
                if params.granularity == "all_tokens":
                    counts = np.diff(chunk.row_offsets)
                    lengths = {int(c) for c in counts} | ({tokens} if tokens is not None else set())
                    if len(lengths) > 1:
                        raise InvalidArgument(
                            "granularity all_tokens needs inputs of one length, these have "
                            f"{sorted(lengths)[:2]} tokens and more: send input_ids "
                            "[batch, tokens] (padded, with attention_mask)",
                            field="parameters.granularity",
                        )
                    tokens = lengths.pop()
                for name, tensor in chunk.activations:
                    if name in data:
                        data[name].append(tensor.data)
                        features[name] = tensor.shape[1:]
                        size += len(tensor.data)
                if chunk.logits is not None and LOGITS_OUTPUT in data:
                    data[LOGITS_OUTPUT].append(chunk.logits.data)
                    features[LOGITS_OUTPUT] = chunk.logits.shape[1:]
                    size += len(chunk.logits.data)
                # Checked as the chunks come: a reply that cannot be sent stops its work early
                # (GetActivations streams the same rows in chunks, without this bound).
                if self.max_response_bytes and size > self.max_response_bytes:
                    raise ResourceExhausted(
                        f"the outputs take more than {self.max_response_bytes} bytes, the "
                        "server's max_message_bytes: send fewer inputs per request, ask for "
                        "fewer outputs or granularity cls_token, or use GetActivations (it "
                        "streams them in chunks)"
                    )
        response = oip.ModelInferResponse(
            model_name=model.name, model_version=MODEL_VERSION, id=request.id
        )
        for name in outputs:
            shape = [batch, *features[name]]
            if name != LOGITS_OUTPUT and tokens is not None:
                shape.insert(1, tokens)
            response.outputs.add(name=name, datatype="FP32", shape=shape)
            response.raw_output_contents.append(b"".join(data[name]))
        return response

    # -- helpers -----------------------------------------------------------------------------

    def _model(self, name: str, version: str) -> ServedModel:
        """The model `name` (NotFound lists the loaded ones) at `version` ("" or "1")."""
        model = self.registry.get(name)
        if version not in ("", MODEL_VERSION):
            raise NotFound(
                f"model '{model.name}' has no version '{quote(version, 64)}': its only version "
                f"is '{MODEL_VERSION}' (or leave the version empty)",
                field="model_version",
            )
        return model

    def _classifier(self, name: str, version: str) -> ServedModel:
        """`_model`, refusing causal LMs (ModelInfer serves classifiers)."""
        model = self._model(name, version)
        if model.is_causal_lm:
            raise InvalidArgument(
                f"model '{model.name}' is a causal LM: the Open Inference Protocol serves "
                "classifiers here; explain or capture a causal LM with ExplainService",
                field="model_name",
            )
        return model


def _parameters(request: oip.ModelInferRequest) -> tuple[ActivationGranularity, bool]:
    """The request parameters `granularity` and `truncate`, checked."""
    granularity: ActivationGranularity = "cls_token"
    truncate = False
    for key, value in request.parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if key == "granularity":
            text = value.string_param
            if kind != "string_param" or text not in GRANULARITIES:
                raise InvalidArgument(
                    f"parameter granularity must be a string, one of {', '.join(GRANULARITIES)}",
                    field="parameters.granularity",
                )
            granularity = next(g for g in GRANULARITIES if g == text)
        elif key == "truncate":
            if kind != "bool_param":
                raise InvalidArgument(
                    "parameter truncate must be a bool", field="parameters.truncate"
                )
            truncate = value.bool_param
        else:
            raise InvalidArgument(
                f"unknown parameter '{quote(key, 64)}': the parameters are {', '.join(PARAMETERS)}",
                field=f"parameters.{quote(key, 64)}",
            )
    return granularity, truncate


def _requested_outputs(model: ServedModel, request: oip.ModelInferRequest) -> list[str]:
    """The outputs asked for, in request order (none = `logits`); InvalidArgument for an
    unknown or repeated name, suggesting close split point names."""
    if not request.outputs:
        return [LOGITS_OUTPUT]
    valid = [LOGITS_OUTPUT, *(name for name, _ in model.split_points)]
    out: list[str] = []
    for j, requested in enumerate(request.outputs):
        name = requested.name
        field = f"outputs[{j}].name"
        if requested.parameters:
            raise InvalidArgument(
                "output parameters are not supported (give granularity as a request parameter)",
                field=f"outputs[{j}].parameters",
            )
        if name in out:
            raise InvalidArgument(f"output '{quote(name, 64)}' is asked for twice", field=field)
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise InvalidArgument(
                f"model '{model.name}' has no output '{quote(name, 64)}': the outputs are "
                f"'{LOGITS_OUTPUT}' and its split points (ModelMetadata lists them){hint}",
                field=field,
            )
        out.append(name)
    return out


def _tensors(request: oip.ModelInferRequest) -> dict[str, _Tensor]:
    """The input tensors by name, with their raw data when the request uses raw contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
            "give one per input, in order",
            field="raw_input_contents",
        )
    known = (TEXT_INPUT, IDS_INPUT, MASK_INPUT)
    out: dict[str, _Tensor] = {}
    for i, message in enumerate(request.inputs):
        if message.name not in known:
            raise InvalidArgument(
                f"unknown input '{quote(message.name, 64)}': the inputs are {TEXT_INPUT} "
                f"(BYTES [batch]), or {IDS_INPUT} (INT64 [batch, tokens]) with an optional "
                f"{MASK_INPUT}",
                field=f"inputs[{i}].name",
            )
        if message.name in out:
            raise InvalidArgument(
                f"input '{message.name}' is given twice", field=f"inputs[{i}].name"
            )
        if raw and message.HasField("contents"):
            raise InvalidArgument(
                f"input '{message.name}' has contents while the request uses "
                "raw_input_contents: use one or the other",
                field=f"inputs[{i}].contents",
            )
        out[message.name] = _Tensor(i, message, raw[i] if raw else None)
    return out


def _inputs(request: oip.ModelInferRequest) -> list[InputSpec]:
    """The batch's inputs: one per text, or one per row of token ids."""
    tensors = _tensors(request)
    text, ids, mask = (tensors.get(n) for n in (TEXT_INPUT, IDS_INPUT, MASK_INPUT))
    if (text is None) == (ids is None):
        raise InvalidArgument(
            f"give either {TEXT_INPUT} (BYTES) or {IDS_INPUT} (INT64), "
            f"{'not both' if text is not None else 'neither was given'}",
            field="inputs",
        )
    if text is not None:
        if mask is not None:
            raise InvalidArgument(
                f"{MASK_INPUT} goes with {IDS_INPUT}, not with {TEXT_INPUT}",
                field=f"{mask.field}.name",
            )
        return [InputSpec(text=t) for t in _texts(text)]
    assert ids is not None
    rows = _id_rows(ids)
    if mask is None:
        return [InputSpec(ids=r.tolist()) for r in rows]
    if mask.shape != ids.shape:
        raise InvalidArgument(
            f"{MASK_INPUT} has shape {quote(mask.shape)}, {IDS_INPUT} {quote(ids.shape)}: "
            "they must be the same",
            field=f"{mask.field}.shape",
        )
    masks = _id_rows(mask)
    return [
        InputSpec(ids=r.tolist(), attention=m.tolist()) for r, m in zip(rows, masks, strict=True)
    ]


def _texts(tensor: _Tensor) -> list[str]:
    """A BYTES tensor `[batch]` or `[batch, 1]` as texts (UTF-8)."""
    message = tensor.message
    if message.datatype != "BYTES":
        raise InvalidArgument(
            f"input {TEXT_INPUT} must be BYTES, not '{quote(message.datatype, 32)}'",
            field=f"{tensor.field}.datatype",
        )
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or tensor.count() == 0:
        raise InvalidArgument(
            f"input {TEXT_INPUT} has shape {quote(shape)}: give [batch] or [batch, 1] texts, "
            "at least one",
            field=f"{tensor.field}.shape",
        )
    count = tensor.count()
    if tensor.raw is not None:
        values = decode_bytes(tensor.raw, count, f"raw_input_contents[{tensor.index}]")
    else:
        values = list(message.contents.bytes_contents)
        if len(values) != count:
            raise InvalidArgument(
                f"input {TEXT_INPUT} has {len(values)} bytes_contents, the shape says {count}",
                field=f"{tensor.field}.contents",
            )
    texts = []
    for k, value in enumerate(values):
        try:
            texts.append(value.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise InvalidArgument(
                f"text {k} is not valid UTF-8 (byte {e.start})", field=f"{tensor.field}.contents"
            ) from None
    return texts


def _id_rows(tensor: _Tensor) -> NDArray[np.int64]:
    """An INT64 (or INT32) tensor `[batch, tokens]` as an int64 array of that shape."""
    message = tensor.message
    name = message.name
    if message.datatype not in _ID_DTYPES:
        raise InvalidArgument(
            f"input {name} must be INT64 (or INT32), not '{quote(message.datatype, 32)}'",
            field=f"{tensor.field}.datatype",
        )
    shape = tensor.shape
    if len(shape) != 2 or tensor.count() == 0:
        raise InvalidArgument(
            f"input {name} has shape {quote(shape)}: give [batch, tokens], not empty",
            field=f"{tensor.field}.shape",
        )
    count = tensor.count()
    dtype = _ID_DTYPES[message.datatype]
    if tensor.raw is not None:
        expected = count * np.dtype(dtype).itemsize
        if len(tensor.raw) != expected:
            raise InvalidArgument(
                f"raw data of input {name} has {len(tensor.raw)} bytes, shape {shape} of "
                f"{message.datatype} needs {expected}",
                field=f"raw_input_contents[{tensor.index}]",
            )
        values = np.frombuffer(tensor.raw, dtype=dtype).astype(np.int64)
    else:
        contents = message.contents
        typed = contents.int64_contents if message.datatype == "INT64" else contents.int_contents
        if len(typed) != count:
            raise InvalidArgument(
                f"input {name} has {len(typed)} {message.datatype} contents, the shape says "
                f"{count}",
                field=f"{tensor.field}.contents",
            )
        values = np.asarray(typed, dtype=np.int64)
    return values.reshape(shape)
