"""KServe's V1 protocol, so that ExplainServe can be the explainer of a KServe InferenceService
(KServe sends `:explain` to the explainer, `:predict` to the predictor):

    GET  /v1/models                       {"models": [name, ...]}
    GET  /v1/models/{model}               {"name": ..., "ready": true}
    POST /v1/models/{model}:predict       {"instances": [text, ...], "parameters": {...}}
                                          -> {"predictions": [prediction, ...]}
    POST /v1/models/{model}:explain       {"instances": [...], "parameters": {...}}
                                          -> {"predictions": [...], "explanations": [...]}

An instance is a text, or an ExplainService `Input` in JSON (`{"text": ..., "targets": [...]}`,
`{"tokenIds": {"ids": [...]}}`, a causal LM's `continuation`). `:explain`'s `parameters` are
the fields of ExplainRequest but `model` and `inputs` (any spelling, enums by their short names
too: `"granularity": "word"`), plus `method` (the method's field name, default `occlusion`,
whose own parameters go under that name: `"lime": {"nPerturbations": 64}`) and `targets` (class
indices or labels for every instance). An explanation is ExplainService's `Explanation` (units
with their text and character spans, scores, targets, ...). A prediction of a classifier is
`{"label", "index", "probabilities", "logits"}`; of a causal LM `{"continuation",
"generated"}`. `:predict` serves classifiers through the Open Inference Protocol's servicer
(`parameters`: its `truncate`). Errors are KServe's `{"error": message}` with grpc-gateway's
HTTP status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from explainserve.errors import InvalidArgument, quote
from explainserve.grpc.oip import LOGITS_OUTPUT, TEXT_INPUT, OipServicer
from explainserve.grpc.servicer import ExplainServicer
from explainserve.http.calls import HttpRequest, Operation, Reply, error_body, json_reply
from explainserve.http.json_mapping import load_object, parse, short_enum_names, to_dict
from explainserve.oip import grpc_predict_v2_pb2 as oip
from explainserve.v1 import explain_pb2 as pb

#: Used when `:explain`'s parameters name no method: the cheapest perturbation method.
DEFAULT_METHOD = "occlusion"
_METHODS = [f.name for f in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields]
#: ExplainRequest's fields that `:explain` takes from the route and the instances.
_OWN = {"model", "inputs"}


def operations(explainer: ExplainServicer, inference: OipServicer) -> list[Operation]:
    """The V1 routes."""
    return [
        Operation(
            "KServeListModels", "GET", "/v1/models", _list(explainer), work=True, errors=error_body
        ),
        Operation(
            "KServeGetModel",
            "GET",
            "/v1/models/{model}",
            _model(explainer, inference),
            work=True,
            errors=error_body,
        ),
        Operation(
            "KServePredict",
            "POST",
            "/v1/models/{model}:predict",
            _predict(inference),
            work=True,
            errors=error_body,
        ),
        Operation(
            "KServeExplain",
            "POST",
            "/v1/models/{model}:explain",
            _explain(explainer),
            work=True,
            errors=error_body,
        ),
    ]


def _list(explainer: ExplainServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        response = explainer.ListModels(pb.ListModelsRequest(), request.context)
        return json_reply({"models": [m.name for m in response.models]})

    return handle


def _model(explainer: ExplainServicer, inference: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        request.message = pb.GetModelRequest(name=request.params["model"])
        response = explainer.GetModel(request.message, request.context)
        return json_reply({"name": response.model.name, "ready": inference.is_ready()})

    return handle


def _instances(document: dict[str, Any]) -> list[Any]:
    """The request's `instances`: a non-empty array."""
    instances = document.get("instances")
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument(
            "instances must be a non-empty array of texts (or Input objects)", field="instances"
        )
    return instances


def _predict(inference: OipServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        document = load_object(request.body)
        texts = []
        for i, item in enumerate(_instances(document)):
            text = item.get("text") if isinstance(item, dict) and len(item) == 1 else item
            if not isinstance(text, str):
                raise InvalidArgument(
                    f'instance {i} is not a text: :predict takes texts (or {{"text": ...}}); '
                    "send token ids to /v2/models/{model}/infer",
                    field=f"instances[{i}]",
                )
            texts.append(text.encode("utf-8", "surrogatepass"))
        message = oip.ModelInferRequest(model_name=request.params["model"])
        tensor = message.inputs.add(name=TEXT_INPUT, datatype="BYTES", shape=[len(texts)])
        tensor.contents.bytes_contents.extend(texts)
        parameters = document.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgument("parameters must be a JSON object", field="parameters")
        for key, value in parameters.items():
            if key != "truncate" or not isinstance(value, bool):
                raise InvalidArgument(
                    f"parameter '{quote(key, 64)}': :predict takes truncate (a boolean)",
                    field=f"parameters.{quote(key, 64)}",
                )
            message.parameters["truncate"].bool_param = value
        message.outputs.add(name=LOGITS_OUTPUT)
        request.message = message
        response = inference.ModelInfer(message, request.context)
        logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(
            [int(d) for d in response.outputs[0].shape]
        )
        labels = inference.registry.get(response.model_name).labels
        return json_reply({"predictions": [_classification(row, labels) for row in logits]})

    return handle


def _classification(logits: Any, labels: list[str]) -> dict[str, Any]:
    """A classifier's prediction from its logits: the label, its index, the probabilities."""
    shifted = np.exp(logits - logits.max())
    index = int(logits.argmax())
    return {
        "label": labels[index],
        "index": index,
        "probabilities": (shifted / shifted.sum()).tolist(),
        "logits": logits.tolist(),
    }


def explain_request(model: str, document: dict[str, Any]) -> pb.ExplainRequest:
    """The ExplainRequest of a V1 `:explain` body (see the module doc)."""
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument("parameters must be a JSON object", field="parameters")
    parameters = dict(parameters)
    method = parameters.pop("method", None)
    targets = parameters.pop("targets", None)
    own = _OWN | {pb.ExplainRequest.DESCRIPTOR.fields_by_name[k].json_name for k in _OWN}
    for key in parameters:
        if key in own:
            raise InvalidArgument(
                f"parameters.{key} comes from the route and the instances",
                field=f"parameters.{key}",
            )
    request = parse(
        short_enum_names(parameters, pb.ExplainRequest.DESCRIPTOR), pb.ExplainRequest, "parameters"
    )
    request.model = model
    chosen = request.WhichOneof("method")
    if method is not None:
        if method not in _METHODS:
            raise InvalidArgument(
                f"parameters.method '{quote(method, 64)}' is not a method: choose one of "
                f"{', '.join(_METHODS)}",
                field="parameters.method",
            )
        if chosen not in (None, method):
            raise InvalidArgument(
                f"parameters.method is {method} but parameters.{chosen} is given",
                field="parameters.method",
            )
        chosen = method
    getattr(request, chosen or DEFAULT_METHOD).SetInParent()
    shared = _targets(targets)
    for i, item in enumerate(_instances(document)):
        where = f"instances[{i}]"
        if isinstance(item, str):
            request.inputs.add(text=item)
        else:
            request.inputs.append(
                parse(short_enum_names(item, pb.Input.DESCRIPTOR), pb.Input, where)
            )
        if shared and not request.inputs[-1].targets:
            request.inputs[-1].targets.extend(shared)
    return request


def _targets(value: Any) -> list[pb.Target]:
    """`parameters.targets`: class indices or labels, for every instance without its own."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument("parameters.targets must be an array", field="parameters.targets")
    out = []
    for j, target in enumerate(value):
        if isinstance(target, str):
            out.append(pb.Target(label=target))
        elif (
            isinstance(target, int) and not isinstance(target, bool) and -(2**31) <= target < 2**31
        ):
            out.append(pb.Target(index=target))
        else:
            raise InvalidArgument(
                f"parameters.targets[{j}] must be a class index or a label",
                field=f"parameters.targets[{j}]",
            )
    return out


def _explain(explainer: ExplainServicer) -> Callable[[HttpRequest], Reply]:
    def handle(request: HttpRequest) -> Reply:
        message = explain_request(request.params["model"], load_object(request.body))
        request.message = message
        response = explainer.Explain(message, request.context)
        labels = explainer.explainer.registry.get(response.model).labels
        predictions = []
        for e in response.explanations:
            if e.target_units or not e.logits:
                predictions.append({"continuation": e.continuation, "generated": e.generated})
            else:
                predictions.append(_classification(np.asarray(e.logits, np.float64), labels))
        return json_reply(
            {
                "predictions": predictions,
                "explanations": [to_dict(e) for e in response.explanations],
            }
        )

    return handle
