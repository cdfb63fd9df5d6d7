"""The Open Inference Protocol v2 over REST, as Triton and KServe serve it: the same servicer as
OIP's gRPC form (`explainserve.grpc.oip.OipServicer`), so the same inputs, outputs, limits and
errors; only the JSON (and binary) form of the tensors is made here.

    GET  /v2/health/live, /v2/health/ready            200, or 503 when not ready
    GET  /v2                                          server metadata
    GET  /v2/models/{model}[/versions/{v}]            model metadata
    GET  /v2/models/{model}[/versions/{v}]/ready      200, or 503 when not ready
    POST /v2/models/{model}[/versions/{v}]/infer      inference

Tensors in JSON are `{"name", "shape", "datatype", "data"}` with `data` flat or nested in row
order (BYTES as strings). The binary tensor extension, which `tritonclient.http` uses: the body
is the JSON header (`Inference-Header-Content-Length` bytes) followed by the inputs' raw data,
each input saying its size in `parameters.binary_data_size`; an output is sent raw the same way
when its `parameters.binary_data` is true or the request's `parameters.binary_data_output` is.
Errors are the protocol's `{"error": message}` with grpc-gateway's HTTP status of the gRPC
code the servicer answers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from explainserve.errors import InvalidArgument, quote
from explainserve.grpc.oip import OipServicer
from explainserve.http.calls import HttpRequest, Operation, Reply, error_body, json_reply
from explainserve.http.json_mapping import dumps, load_object
from explainserve.oip import grpc_predict_v2_pb2 as oip

#: The binary tensor extension's header: the JSON part's length in bytes.
HEADER_LENGTH = "inference-header-content-length"
BINARY_SIZE = "binary_data_size"
#: Transport parameters this module consumes (the servicer never sees them).
BINARY_OUTPUT = "binary_data_output"
BINARY_DATA = "binary_data"
#: What the REST form adds to the protocol (server metadata).
EXTENSIONS = ["binary_tensor_data"]

#: numpy's little-endian dtype of each numeric datatype, and its typed `contents` field.
_NUMERIC: dict[str, tuple[str, str]] = {
    "BOOL": ("?", "bool_contents"),
    "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
}


def operations(servicer: OipServicer) -> list[Operation]:
    """The protocol's routes, with and without a model version."""
    ops = [
        Operation(
            "ServerLive", "GET", "/v2/health/live", _live(servicer), open=True, errors=error_body
        ),
        Operation(
            "ServerReady", "GET", "/v2/health/ready", _ready(servicer), open=True, errors=error_body
        ),
        Operation("ServerMetadata", "GET", "/v2", _server_metadata(servicer), errors=error_body),
    ]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        ops += [
            Operation("ModelMetadata", "GET", base, _model_metadata(servicer), errors=error_body),
            Operation(
                "ModelReady", "GET", f"{base}/ready", _model_ready(servicer), errors=error_body
            ),
            Operation(
                "ModelInfer",
                "POST",
                f"{base}/infer",
                _infer(servicer),
                work=True,
                errors=error_body,
            ),
        ]
    return ops


def _live(servicer: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        response = servicer.ServerLive(oip.ServerLiveRequest(), request.context)
        return json_reply({"live": response.live}, 200 if response.live else 503)

    return handle


def _ready(servicer: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        response = servicer.ServerReady(oip.ServerReadyRequest(), request.context)
        return json_reply({"ready": response.ready}, 200 if response.ready else 503)

    return handle


def _server_metadata(servicer: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        response = servicer.ServerMetadata(oip.ServerMetadataRequest(), request.context)
        extensions = [*response.extensions, *EXTENSIONS]
        return json_reply(
            {"name": response.name, "version": response.version, "extensions": extensions}
        )

    return handle


def _model_metadata(servicer: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        response = servicer.ModelMetadata(
            oip.ModelMetadataRequest(
                name=request.params["model"], version=request.params.get("version", "")
            ),
            request.context,
        )

        def tensors(items: Any) -> list[dict[str, Any]]:
            return [
                {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
                for t in items
            ]

        return json_reply(
            {
                "name": response.name,
                "versions": list(response.versions),
                "platform": response.platform,
                "inputs": tensors(response.inputs),
                "outputs": tensors(response.outputs),
            }
        )

    return handle


def _model_ready(servicer: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        name = request.params["model"]
        response = servicer.ModelReady(
            oip.ModelReadyRequest(name=name, version=request.params.get("version", "")),
            request.context,
        )
        return json_reply({"name": name, "ready": response.ready}, 200 if response.ready else 503)

    return handle


def _infer(servicer: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        message, binary = infer_request(request)
        request.message = message
        response = servicer.ModelInfer(message, request.context)
        return infer_reply(response, binary)

    return handle


# -- requests ----------------------------------------------------------------------------------


def infer_request(request: HttpRequest) -> tuple[oip.ModelInferRequest, set[str] | bool]:
    """The ModelInferRequest of a REST infer call, and which outputs go back raw (True: all)."""
    body = request.body
    header_length = request.header(HEADER_LENGTH)
    raw = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise InvalidArgument(
                f"header Inference-Header-Content-Length is '{quote(header_length, 32)}': give "
                f"the JSON part's length in bytes, at most the body's ({len(body)})",
                field=HEADER_LENGTH,
            )
        cut = int(header_length)
        body, raw = body[:cut], body[cut:]
    document = load_object(body)
    message = oip.ModelInferRequest(
        model_name=request.params["model"], model_version=request.params.get("version", "")
    )
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("id must be a string", field="id")
    message.id = request_id
    parameters = _object(document.get("parameters", {}), "parameters")
    all_binary = bool(parameters.pop(BINARY_OUTPUT, False))
    _set_parameters(message.parameters, parameters, "parameters")
    inputs = _array(document.get("inputs"), "inputs")
    if not inputs:
        raise InvalidArgument(
            "inputs is missing or empty: give at least one tensor", field="inputs"
        )
    _add_inputs(message, inputs, raw)
    binary: set[str] = set()
    for j, item in enumerate(_array(document.get("outputs", []), "outputs")):
        where = f"outputs[{j}]"
        output = _object(item, where)
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"{where}.name must be a string", field=f"{where}.name")
        out_parameters = _object(output.get("parameters", {}), f"{where}.parameters")
        if out_parameters.pop(BINARY_DATA, all_binary):
            binary.add(name)
        requested = message.outputs.add(name=name)
        _set_parameters(requested.parameters, out_parameters, f"{where}.parameters")
    return message, (True if all_binary and not message.outputs else binary)


def _add_inputs(message: oip.ModelInferRequest, inputs: list[Any], raw: bytes) -> None:
    """The input tensors, from JSON `data` or from the binary part; when any is binary, all
    travel as raw contents (the protocol's message holds either kind, not both)."""
    tensors = []
    position = 0
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        tensor = _object(item, where)
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidArgument(f"{where} needs a string name and a string datatype", field=where)
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and -(2**63) <= d < 2**63 for d in shape
        ):
            raise InvalidArgument(f"{where}.shape must be an array of integers", field=where)
        parameters = _object(tensor.get("parameters", {}), f"{where}.parameters")
        size = parameters.pop(BINARY_SIZE, None)
        data: bytes | list[Any]
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(
                    f"{where}.parameters.binary_data_size must be a non-negative integer",
                    field=f"{where}.parameters",
                )
            if position + size > len(raw):
                raise InvalidArgument(
                    f"{where} says {size} binary bytes, the body has {len(raw) - position} "
                    "left after the JSON header",
                    field=f"{where}.parameters",
                )
            data = raw[position : position + size]
            position += size
        else:
            data = _flat(tensor.get("data"), f"{where}.data")
        tensors.append((name, datatype, shape, parameters, data, where))
    if position != len(raw):
        raise InvalidArgument(
            f"the body has {len(raw) - position} bytes after the inputs' binary data",
            field=HEADER_LENGTH,
        )
    binary = any(isinstance(t[4], bytes) for t in tensors)
    for name, datatype, shape, parameters, data, where in tensors:
        added = message.inputs.add(name=name, datatype=datatype, shape=shape)
        _set_parameters(added.parameters, parameters, f"{where}.parameters")
        if binary:
            message.raw_input_contents.append(
                data if isinstance(data, bytes) else _raw(datatype, data, where)
            )
        else:
            assert isinstance(data, list)
            _set_contents(added.contents, datatype, data, where)


def _raw(datatype: str, values: list[Any], where: str) -> bytes:
    """JSON values as the raw little-endian bytes of `datatype` (BYTES: length-prefixed)."""
    if datatype == "BYTES":
        parts = []
        for value in _bytes_values(values, where):
            parts += [struct.pack("<I", len(value)), value]
        return b"".join(parts)
    if datatype not in _NUMERIC:
        raise InvalidArgument(f"{where}.datatype '{quote(datatype, 32)}' is unknown", field=where)
    try:
        return np.asarray(values, dtype=_NUMERIC[datatype][0]).tobytes()
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(
            f"{where}.data does not hold {datatype} values", field=where
        ) from None


def _set_contents(contents: Any, datatype: str, values: list[Any], where: str) -> None:
    """JSON values into the typed contents field of `datatype`."""
    try:
        if datatype == "BYTES":
            contents.bytes_contents.extend(_bytes_values(values, where))
        elif datatype in _NUMERIC:
            getattr(contents, _NUMERIC[datatype][1]).extend(values)
        else:
            raise InvalidArgument(
                f"{where}.datatype '{quote(datatype, 32)}' is unknown", field=where
            )
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(
            f"{where}.data does not hold {datatype} values", field=where
        ) from None


def _bytes_values(values: list[Any], where: str) -> list[bytes]:
    """BYTES elements given as JSON strings (UTF-8)."""
    if not all(isinstance(v, str) for v in values):
        raise InvalidArgument(f"{where}.data of a BYTES tensor must be strings", field=where)
    return [v.encode("utf-8", "surrogatepass") for v in values]


def _flat(data: Any, where: str) -> list[Any]:
    """A tensor's `data`, flat or nested arrays, as one flat list in row order."""
    if not isinstance(data, list):
        raise InvalidArgument(
            f"{where} must be an array (or give the data in binary: parameters.binary_data_size)",
            field=where,
        )
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _set_parameters(target: Any, parameters: dict[str, Any], where: str) -> None:
    """JSON parameters into a protocol parameters map (bool, integer, float or string)."""
    for key, value in parameters.items():
        entry = target[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            entry.int64_param = value
        elif isinstance(value, float):
            entry.double_param = value
        elif isinstance(value, str):
            entry.string_param = value
        else:
            raise InvalidArgument(
                f"{where}.{quote(key, 64)} must be a boolean, an integer, a number or a string",
                field=f"{where}.{quote(key, 64)}",
            )


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object", field=where)
    return dict(value)


def _array(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be an array", field=where)
    return value


# -- replies -----------------------------------------------------------------------------------


def infer_reply(response: oip.ModelInferResponse, binary: set[str] | bool) -> Reply:
    """The REST form of a ModelInferResponse: JSON data, or the binary extension for the outputs
    in `binary` (True: all)."""
    outputs = []
    blobs = []
    for tensor, data in zip(response.outputs, response.raw_output_contents, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": [int(d) for d in tensor.shape],
        }
        if binary is True or (not isinstance(binary, bool) and tensor.name in binary):
            entry["parameters"] = {BINARY_SIZE: len(data)}
            blobs.append(data)
        else:
            entry["data"] = np.frombuffer(data, _NUMERIC[tensor.datatype][0]).tolist()
        outputs.append(entry)
    header = dumps(
        {
            "model_name": response.model_name,
            "model_version": response.model_version,
            "id": response.id,
            "outputs": outputs,
        }
    )
    if not blobs:
        return Reply(body=header)
    return Reply(
        body=header + b"".join(blobs),
        content_type="application/octet-stream",
        headers=[(HEADER_LENGTH, str(len(header)))],
    )
