"""Proto messages <-> domain objects for ExplainService (explanations, activations, models)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf.message import Message

from explainserve.activations import params as act
from explainserve.activations.tensors import RawTensor, decode, encode
from explainserve.concepts import params as cpt
from explainserve.concepts.registry import BoundConceptSet
from explainserve.concepts.sets import ConceptInfo, ConceptSet, Encoder, EncoderKind, ModelBinding
from explainserve.errors import InvalidArgument
from explainserve.explain import params as dom
from explainserve.explain.method import Method, methods
from explainserve.models.registry import ServedModel
from explainserve.v1 import explain_pb2 as pb
from explainserve.vocabulary import (
    Aggregation,
    Granularity,
    InferenceMode,
    InputSpec,
    Priority,
    Units,
)

T = TypeVar("T")

GRANULARITY: dict[int, Granularity] = {
    pb.GRANULARITY_UNSPECIFIED: "word",
    pb.GRANULARITY_ALL_TOKENS: "all_tokens",
    pb.GRANULARITY_TOKEN: "token",
    pb.GRANULARITY_WORD: "word",
    pb.GRANULARITY_SENTENCE: "sentence",
}
AGGREGATION: dict[int, Aggregation] = {
    pb.AGGREGATION_UNSPECIFIED: "mean",
    pb.AGGREGATION_MEAN: "mean",
    pb.AGGREGATION_MAX: "max",
    pb.AGGREGATION_MIN: "min",
    pb.AGGREGATION_SUM: "sum",
    pb.AGGREGATION_SIGNED_MAX: "signed_max",
}
MODE: dict[int, InferenceMode] = {
    pb.INFERENCE_MODE_UNSPECIFIED: "logits",
    pb.INFERENCE_MODE_LOGITS: "logits",
    pb.INFERENCE_MODE_SOFTMAX: "softmax",
    pb.INFERENCE_MODE_LOG_SOFTMAX: "log_softmax",
}
PRIORITY: dict[int, Priority] = {
    pb.PRIORITY_UNSPECIFIED: "interactive",
    pb.PRIORITY_INTERACTIVE: "interactive",
    pb.PRIORITY_BATCH: "batch",
}
REDUCTION: dict[int, str] = {
    pb.GRADIENT_REDUCTION_SIGNED_SUM: "signed_sum",
    pb.GRADIENT_REDUCTION_L2_NORM: "l2_norm",
    pb.GRADIENT_REDUCTION_MEAN_ABS: "mean_abs",
}
BASELINE: dict[int, str] = {
    pb.BASELINE_ZERO: "zero",
    pb.BASELINE_REPLACEMENT: "replacement",
}
RULE: dict[int, str] = {
    pb.INTEGRATION_RULE_RIEMANN_LEFT: "riemann_left",
    pb.INTEGRATION_RULE_RIEMANN_RIGHT: "riemann_right",
    pb.INTEGRATION_RULE_RIEMANN_MIDDLE: "riemann_middle",
    pb.INTEGRATION_RULE_RIEMANN_TRAPEZOID: "riemann_trapezoid",
    pb.INTEGRATION_RULE_GAUSS_LEGENDRE: "gauss_legendre",
}
DISTANCE: dict[int, str] = {
    pb.LIME_DISTANCE_COSINE: "cosine",
    pb.LIME_DISTANCE_HAMMING: "hamming",
    pb.LIME_DISTANCE_EUCLIDEAN: "euclidean",
}
SAMPLER: dict[int, str] = {
    pb.SOBOL_SAMPLER_SOBOL: "sobol",
    pb.SOBOL_SAMPLER_HALTON: "halton",
    pb.SOBOL_SAMPLER_LATIN_HYPERCUBE: "latin_hypercube",
}
ACTIVATION_GRANULARITY: dict[int, act.ActivationGranularity] = {
    pb.ACTIVATION_GRANULARITY_UNSPECIFIED: "cls_token",
    pb.ACTIVATION_GRANULARITY_CLS_TOKEN: "cls_token",
    pb.ACTIVATION_GRANULARITY_ALL_TOKENS: "all_tokens",
    pb.ACTIVATION_GRANULARITY_TOKEN: "token",
    pb.ACTIVATION_GRANULARITY_WORD: "word",
    pb.ACTIVATION_GRANULARITY_SENTENCE: "sentence",
}
CONCEPT_ENCODER: dict[int, EncoderKind] = {
    pb.CONCEPT_ENCODER_LINEAR: "linear",
    pb.CONCEPT_ENCODER_RELU: "relu",
    pb.CONCEPT_ENCODER_TOPK: "topk",
    pb.CONCEPT_ENCODER_JUMPRELU: "jumprelu",
    pb.CONCEPT_ENCODER_NNLS: "nnls",
}
ORDER: dict[int, str] = {
    pb.SOBOL_ORDER_FIRST: "first",
    pb.SOBOL_ORDER_TOTAL: "total",
}


#: The enums of method and generation parameters, by proto enum name: value -> domain value. An
#: unset enum (UNSPECIFIED, 0) is not here: it leaves the parameter at its default.
PARAMETER_ENUMS: dict[str, dict[int, str]] = {
    "GradientReduction": REDUCTION,
    "Baseline": BASELINE,
    "IntegrationRule": RULE,
    "LimeDistance": DISTANCE,
    "SobolSampler": SAMPLER,
    "SobolOrder": ORDER,
}
#: The request's `method` oneof: each field's message converts to the method registered under the
#: field's name, parameter by parameter (`explain/methods/`).
METHODS: dict[str, type[Method]] = methods()


def _enum(table: Mapping[int, T], value: int, field: str) -> T:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"unknown value {value} for {field}", field=field) from None


def _parameters(message: Message, cls: type[Any], prefix: str) -> Any:
    """A parameter message to the dataclass `cls`, field by field of the same name: an unset
    field (absent, or proto3's zero) leaves the dataclass default, so defaults live there only."""
    values: dict[str, Any] = {}
    by_name = message.DESCRIPTOR.fields_by_name
    for f in dataclasses.fields(cls):
        desc = by_name.get(f.name)
        if desc is None:
            continue
        raw = getattr(message, f.name)
        if (desc.has_presence and not message.HasField(f.name)) or (
            not desc.has_presence and not raw
        ):
            continue
        if desc.enum_type is not None:
            values[f.name] = _enum(PARAMETER_ENUMS[desc.enum_type.name], raw, f"{prefix}.{f.name}")
        elif desc.type in (desc.TYPE_FLOAT, desc.TYPE_DOUBLE):
            values[f.name] = float(raw)
        else:
            values[f.name] = raw
    return cls(**values)


def method_from_proto(request: pb.ExplainRequest) -> Method:
    """The request's method oneof to the domain form (defaults for unset fields)."""
    which = request.WhichOneof("method")
    if which is None:
        names = [f.name for f in request.DESCRIPTOR.oneofs_by_name["method"].fields]
        raise InvalidArgument(f"no method set: choose one of {', '.join(names)}", field="method")
    method: Method = _parameters(getattr(request, which), METHODS[which], which)
    return method


def _input_from_proto(item: pb.Input, i: int, targets: list[int | str]) -> InputSpec:
    """One input's content (text or token ids) with the given targets and continuation."""
    content = item.WhichOneof("content")
    continuation_text = None
    continuation_ids = None
    if item.HasField("continuation"):
        which = item.continuation.WhichOneof("content")
        if which == "text":
            continuation_text = item.continuation.text
        elif which == "token_ids":
            if item.continuation.token_ids.attention_mask:
                raise InvalidArgument(
                    f"the continuation of input {i} has an attention_mask: every continuation "
                    "token is attended, leave it empty",
                    field=f"inputs[{i}].continuation.token_ids.attention_mask",
                )
            continuation_ids = list(item.continuation.token_ids.ids)
        else:
            raise InvalidArgument(
                f"the continuation of input {i} has neither text nor token_ids",
                field=f"inputs[{i}].continuation",
            )
    if content == "text":
        return InputSpec(
            text=item.text,
            targets=targets,
            continuation_text=continuation_text,
            continuation_ids=continuation_ids,
        )
    if content == "token_ids":
        return InputSpec(
            ids=list(item.token_ids.ids),
            attention=list(item.token_ids.attention_mask) or None,
            targets=targets,
            continuation_text=continuation_text,
            continuation_ids=continuation_ids,
        )
    raise InvalidArgument(f"input {i} has neither text nor token_ids", field=f"inputs[{i}]")


def _targets_from_proto(item: pb.Input, i: int) -> list[int | str]:
    """Input `i`'s targets: class indices or label names."""
    return [
        _target(t, f"target {j} of input {i}", f"inputs[{i}].targets[{j}]")
        for j, t in enumerate(item.targets)
    ]


def _target(t: pb.Target, what: str, field: str) -> int | str:
    """A Target message: its index or its label."""
    kind = t.WhichOneof("target")
    if kind == "index":
        return int(t.index)
    if kind == "label":
        return str(t.label)
    raise InvalidArgument(f"{what} has neither index nor label", field=field)


def generation_from_proto(request: pb.ExplainRequest) -> dom.Generation | None:
    """The request's generation parameters (defaults for unset fields), None when unset."""
    if not request.HasField("generation"):
        return None
    generation: dom.Generation = _parameters(request.generation, dom.Generation, "generation")
    return generation


def params_from_proto(request: pb.ExplainRequest) -> dom.ExplainParams:
    """A whole ExplainRequest to the domain form."""
    inputs = [
        _input_from_proto(item, i, _targets_from_proto(item, i))
        for i, item in enumerate(request.inputs)
    ]
    return dom.ExplainParams(
        model=request.model,
        inputs=inputs,
        method=method_from_proto(request),
        granularity=_enum(GRANULARITY, request.granularity, "granularity"),
        aggregation=_enum(AGGREGATION, request.aggregation, "aggregation"),
        mode=_enum(MODE, request.inference_mode, "inference_mode"),
        seed=int(request.seed),
        generation=generation_from_proto(request),
        target_context=not request.prompt_units_only,
        isolate=request.isolate_batches,
        priority=_enum(PRIORITY, request.priority, "priority"),
        concept_target=_concept_target_from_proto(request),
    )


def _concept_target_from_proto(request: pb.ExplainRequest) -> cpt.ConceptTarget | None:
    """The request's concept target (inputs -> concepts), None when unset."""
    if not request.HasField("concept_target"):
        return None
    target = request.concept_target
    field = "concept_target"
    return cpt.ConceptTarget(
        concepts=concept_ref_from_proto(target.concepts, request.model, f"{field}.concepts"),
        explained=tuple(
            _target(t, f"concept {j}", f"{field}.concepts_explained[{j}]")
            for j, t in enumerate(target.concepts_explained)
        ),
    )


def _add_units(target: Any, units: Units) -> None:
    """Appends units (text, character span, token positions) to a repeated Unit field (in place:
    about twice as fast as building Unit messages and copying them in)."""
    for text, (start, end), tokens in zip(
        units.texts, units.spans.tolist(), units.token_indices, strict=True
    ):
        target.add(text=text, char_start=start, char_end=end, token_indices=tokens)


def explanation_to_proto(e: dom.Explanation) -> pb.Explanation:
    """One domain explanation to its message."""
    rows, cols = e.scores.shape
    out = pb.Explanation(
        input_index=e.input_index,
        targets=[
            pb.ExplainedTarget(index=i, label=label)
            for i, label in zip(e.target_indices, e.target_labels, strict=True)
        ],
        scores=pb.Matrix(rows=rows, cols=cols, values=e.scores.ravel().tolist()),
        logits=e.logits.tolist(),
        counters=pb.Counters(forward_passes=e.forward_passes, elapsed_ms=e.elapsed_ms),
        token_ids=e.token_ids.tolist(),
        text=e.text,
    )
    _add_units(out.units, e.units)
    if e.target_units is not None:
        _add_units(out.target_units, e.target_units)
        out.continuation = e.continuation
        out.generated = e.generated
        out.prompt_token_count = e.prompt_tokens
        if e.valid is not None:
            out.valid.extend(e.valid.ravel().tolist())
        if e.continuation_ids is not None:
            out.continuation_token_ids.extend(e.continuation_ids.tolist())
        if e.continuation_scores is not None:
            out.continuation_scores.extend(e.continuation_scores.tolist())
    if e.concept_activations is not None:
        out.concept_activations.extend(e.concept_activations.tolist())
    return out


def model_to_proto(
    m: ServedModel, concept_sets: list[BoundConceptSet] | None = None
) -> pb.ModelInfo:
    """A served model's metadata, with the concept sets served for it."""
    return pb.ModelInfo(
        name=m.name,
        task=m.task,
        labels=m.labels,
        max_length=m.max_length,
        device=str(m.device),
        dtype=m.dtype_name,
        replacement=m.replacement.kind,
        replacement_token_id=m.replacement.token_id,
        split_points=[
            pb.SplitPoint(name=name, shape=shape, head_input=name == m.head_input)
            for name, shape in m.split_points
        ],
        concept_sets=[
            pb.ConceptSetInfo(
                name=b.name,
                split_point=b.concept_set.split_point,
                encoder=b.concept_set.encoder.kind,
                granularity=b.concept_set.granularity,
                method=b.concept_set.method,
                labels=b.labels,
            )
            for b in concept_sets or []
        ],
    )


def batching_to_proto(m: ServedModel) -> pb.BatchSizing:
    """How a served model's worker sizes its batches (GetModel)."""
    worker = m.worker
    done = worker.calibration
    return pb.BatchSizing(
        calibrate=worker.options.calibrate,
        batch_tokens=worker.options.batch_tokens,
        kinds=[
            pb.BatchKindSizing(
                kind=k.kind,
                cap_tokens=k.cap,
                memory_bound_tokens=k.memory_bound,
                time_bound_tokens=k.time_bound,
                optimum_tokens=k.optimum,
                rates=[
                    pb.BatchRate(
                        tokens=r.tokens, tokens_per_second=r.tokens_per_second, batches=r.batches
                    )
                    for r in k.rates
                ],
            )
            for k in worker.batch_sizes()
        ],
        calibration=(
            None
            if done is None
            else pb.BatchCalibration(batches=done.batches, seconds=done.seconds)
        ),
    )


def activation_params_from_proto(request: pb.GetActivationsRequest) -> act.ActivationParams:
    """A GetActivationsRequest to the domain form (the inputs' targets are ignored)."""
    return act.ActivationParams(
        model=request.model,
        inputs=[_input_from_proto(item, i, []) for i, item in enumerate(request.inputs)],
        split_points=list(request.split_points),
        granularity=_enum(ACTIVATION_GRANULARITY, request.granularity, "granularity"),
        aggregation=_enum(AGGREGATION, request.aggregation, "aggregation"),
        dtype=request.dtype,
        predictions=request.include_predictions,
        units=not request.omit_units,
    )


def tensor_to_proto(t: RawTensor) -> pb.Tensor:
    """A raw tensor to its message (the bytes are not copied again by the domain)."""
    return pb.Tensor(dtype=t.dtype, shape=t.shape, data=t.data)


def tensor_from_proto(t: pb.Tensor) -> RawTensor:
    """A Tensor message to the domain form."""
    return RawTensor(dtype=t.dtype, shape=tuple(int(d) for d in t.shape), data=t.data)


def activation_chunk_to_proto(c: act.ActivationChunk) -> pb.GetActivationsResponse:
    """One chunk of activations to its message."""
    out = pb.GetActivationsResponse(
        input_start=c.input_start,
        input_count=c.input_count,
        row_offsets=c.row_offsets.tolist(),
        activations=[
            pb.SplitPointActivations(split_point=name, values=tensor_to_proto(t))
            for name, t in c.activations
        ],
        logits=tensor_to_proto(c.logits) if c.logits is not None else None,
        predicted_classes=c.predicted,
    )
    for u in c.units:
        _add_units(out.units.add(input_index=u.input_index, text=u.text).units, u.units)
    return out


def head_params_from_proto(request: pb.PredictFromActivationsRequest) -> act.HeadParams:
    """A PredictFromActivationsRequest to the domain form."""
    return act.HeadParams(model=request.model, activations=tensor_from_proto(request.activations))


def head_prediction_to_proto(p: act.HeadPrediction) -> pb.PredictFromActivationsResponse:
    """The head's outputs to their message."""
    return pb.PredictFromActivationsResponse(
        logits=tensor_to_proto(encode(p.logits, "float32")),
        predicted_classes=p.predicted.tolist(),
    )


def _optional_tensor(message: pb.InlineConceptSet, name: str, field: str) -> Any:
    """An inline set's tensor field as a float32 array, None when unset."""
    if not message.HasField(name):
        return None
    return decode(tensor_from_proto(getattr(message, name)), f"{field}.{name}")


def concept_ref_from_proto(ref: pb.ConceptSetRef, model: str, field: str) -> cpt.ConceptRef:
    """A concept set reference: a name, or an inline set (unchecked: the domain fills in the
    head's input as its split point when none is given, then checks and binds it)."""
    which = ref.WhichOneof("set")
    if which == "name":
        return cpt.ConceptRef(name=ref.name, field=field)
    if which != "inline":
        return cpt.ConceptRef(field=field)
    inline = ref.inline
    where = f"{field}.inline"
    kind = _enum(CONCEPT_ENCODER, inline.encoder, f"{where}.encoder")
    weight = _optional_tensor(inline, "decoder_weight", where)
    if weight is None:
        raise InvalidArgument(
            "an inline concept set needs decoder_weight [concepts, features]",
            field=f"{where}.decoder_weight",
        )
    concept_set = ConceptSet(
        model=ModelBinding(name=model),
        split_point=inline.split_point,
        encoder=Encoder(
            kind=kind,
            weight=_optional_tensor(inline, "encoder_weight", where),
            bias=_optional_tensor(inline, "encoder_bias", where),
            center=_optional_tensor(inline, "encoder_center", where),
            threshold=_optional_tensor(inline, "encoder_threshold", where),
            top_k=int(inline.top_k),
            relu_input=inline.relu_input,
        ),
        decoder_weight=weight,
        decoder_bias=_optional_tensor(inline, "decoder_bias", where),
        concepts=tuple(ConceptInfo(label=label) for label in inline.labels),
        method="inline",
    )
    return cpt.ConceptRef(inline=concept_set, field=field)


def concept_params_from_proto(request: pb.ExplainConceptsRequest) -> cpt.ConceptParams:
    """An ExplainConceptsRequest to the domain form."""
    granularity: act.ActivationGranularity | None = None
    if request.granularity != pb.ACTIVATION_GRANULARITY_UNSPECIFIED:
        granularity = _enum(ACTIVATION_GRANULARITY, request.granularity, "granularity")
    return cpt.ConceptParams(
        model=request.model,
        inputs=[
            _input_from_proto(item, i, _targets_from_proto(item, i))
            for i, item in enumerate(request.inputs)
        ],
        concepts=concept_ref_from_proto(request.concepts, request.model, "concepts"),
        mode=_enum(MODE, request.inference_mode, "inference_mode"),
        concepts_x_gradients=(
            request.concepts_x_gradients if request.HasField("concepts_x_gradients") else True
        ),
        normalization=request.normalization if request.HasField("normalization") else True,
        granularity=granularity,
        aggregation=_enum(AGGREGATION, request.aggregation, "aggregation"),
        isolate=request.isolate_batches,
        priority=_enum(PRIORITY, request.priority, "priority"),
    )


def _matrix(values: Any) -> pb.Matrix:
    """A 2-D array as a Matrix message."""
    rows, cols = values.shape
    return pb.Matrix(rows=rows, cols=cols, values=values.ravel().tolist())


def concept_explanation_to_proto(e: cpt.ConceptExplanation) -> pb.ConceptExplanation:
    """One input's concept explanation to its message."""
    gap = e.gap
    out = pb.ConceptExplanation(
        input_index=e.input_index,
        concepts=_matrix(e.concepts),
        targets=[
            pb.ConceptContributions(
                target=pb.ExplainedTarget(index=index, label=label),
                contributions=_matrix(e.contributions[t]),
                output=float(e.outputs[t]),
                residual=float(e.residual[t]),
                bias=float(e.bias[t]),
                concept_sum=float(e.concept_sum[t]),
                gap=float(gap[t]),
            )
            for t, (index, label) in enumerate(zip(e.target_indices, e.target_labels, strict=True))
        ],
        logits=e.logits.tolist(),
        reconstruction_error=e.reconstruction_error,
        text=e.text,
        token_ids=e.token_ids.tolist(),
        counters=pb.Counters(forward_passes=e.forward_passes, elapsed_ms=e.elapsed_ms),
    )
    if e.units is not None:
        _add_units(out.units, e.units)
    return out
