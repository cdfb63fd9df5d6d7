"""Proto messages <-> domain objects for ExplainService (explanations, activations, models)."""

from __future__ import annotations

from typing import Any, TypeVar

from explainserve.activations import params as act
from explainserve.activations.tensors import RawTensor, encode
from explainserve.errors import InvalidArgument
from explainserve.explain import params as dom
from explainserve.explain.units import Granularity, Units
from explainserve.models.registry import ServedModel
from explainserve.scheduling.jobs import InferenceMode, Priority
from explainserve.v1 import explain_pb2 as pb

T = TypeVar("T")

GRANULARITY: dict[int, Granularity] = {
    pb.GRANULARITY_UNSPECIFIED: "word",
    pb.GRANULARITY_ALL_TOKENS: "all_tokens",
    pb.GRANULARITY_TOKEN: "token",
    pb.GRANULARITY_WORD: "word",
    pb.GRANULARITY_SENTENCE: "sentence",
}
AGGREGATION: dict[int, dom.Aggregation] = {
    pb.AGGREGATION_UNSPECIFIED: "mean",
    pb.AGGREGATION_MEAN: "mean",
    pb.AGGREGATION_MAX: "max",
    pb.AGGREGATION_MIN: "min",
    pb.AGGREGATION_SUM: "sum",
    pb.AGGREGATION_SIGNED_MAX: "signed_max",
}
PRIORITY: dict[int, Priority] = {
    pb.PRIORITY_UNSPECIFIED: "interactive",
    pb.PRIORITY_INTERACTIVE: "interactive",
    pb.PRIORITY_BATCH: "batch",
}
MODE: dict[int, InferenceMode] = {
    pb.INFERENCE_MODE_UNSPECIFIED: "logits",
    pb.INFERENCE_MODE_LOGITS: "logits",
    pb.INFERENCE_MODE_SOFTMAX: "softmax",
    pb.INFERENCE_MODE_LOG_SOFTMAX: "log_softmax",
}
REDUCTION: dict[int, dom.Reduction | None] = {
    pb.GRADIENT_REDUCTION_UNSPECIFIED: None,
    pb.GRADIENT_REDUCTION_SIGNED_SUM: "signed_sum",
    pb.GRADIENT_REDUCTION_L2_NORM: "l2_norm",
    pb.GRADIENT_REDUCTION_MEAN_ABS: "mean_abs",
}
BASELINE: dict[int, str] = {
    pb.BASELINE_UNSPECIFIED: "zero",
    pb.BASELINE_ZERO: "zero",
    pb.BASELINE_REPLACEMENT: "replacement",
}
RULE: dict[int, dom.IntegrationRule] = {
    pb.INTEGRATION_RULE_UNSPECIFIED: "gauss_legendre",
    pb.INTEGRATION_RULE_RIEMANN_LEFT: "riemann_left",
    pb.INTEGRATION_RULE_RIEMANN_RIGHT: "riemann_right",
    pb.INTEGRATION_RULE_RIEMANN_MIDDLE: "riemann_middle",
    pb.INTEGRATION_RULE_RIEMANN_TRAPEZOID: "riemann_trapezoid",
    pb.INTEGRATION_RULE_GAUSS_LEGENDRE: "gauss_legendre",
}
DISTANCE: dict[int, str] = {
    pb.LIME_DISTANCE_UNSPECIFIED: "cosine",
    pb.LIME_DISTANCE_COSINE: "cosine",
    pb.LIME_DISTANCE_HAMMING: "hamming",
    pb.LIME_DISTANCE_EUCLIDEAN: "euclidean",
}
SAMPLER: dict[int, str] = {
    pb.SOBOL_SAMPLER_UNSPECIFIED: "sobol",
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
ORDER: dict[int, str] = {
    pb.SOBOL_ORDER_UNSPECIFIED: "total",
    pb.SOBOL_ORDER_FIRST: "first",
    pb.SOBOL_ORDER_TOTAL: "total",
}


def _enum(table: dict[int, T], value: int, field: str) -> T:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"unknown value {value} for {field}", field=field) from None


def _opt(message: object, name: str, default: float) -> float:
    return float(getattr(message, name)) if message.HasField(name) else default  # type: ignore[attr-defined]


def _gradient(kind: dom.GradientKind, m: object) -> dom.Gradient:
    """A gradient method message (any of the seven) to the domain form."""
    fields = {f.name for f in m.DESCRIPTOR.fields}  # type: ignore[attr-defined]
    n_samples = int(getattr(m, "n_samples", 0)) or 32
    return dom.Gradient(
        kind=kind,
        n_steps=int(getattr(m, "n_steps", 0)) or 64,
        n_samples=n_samples,
        noise_std=_opt(m, "noise_std", 0.1) if "noise_std" in fields else 0.1,
        baseline=_enum(BASELINE, int(getattr(m, "baseline", 0)), f"{kind}.baseline"),  # type: ignore[arg-type]
        rule=_enum(RULE, int(getattr(m, "rule", 0)), f"{kind}.rule"),
        reduction=_enum(REDUCTION, int(getattr(m, "reduction", 0)), f"{kind}.reduction"),
    )


def method_from_proto(request: pb.ExplainRequest) -> dom.Method:
    """The request's method oneof to the domain form (defaults for unset fields)."""
    which = request.WhichOneof("method")
    if which is None:
        raise InvalidArgument(
            "no method set: choose one of occlusion, lime, kernel_shap, sobol, saliency, "
            "input_x_gradient, integrated_gradients, smooth_grad, square_grad, var_grad, "
            "gradient_shap",
            field="method",
        )
    m = getattr(request, which)
    if which == "occlusion":
        return dom.Occlusion()
    if which == "lime":
        return dom.Lime(
            n_perturbations=m.n_perturbations or 256,
            perturb_probability=_opt(m, "perturb_probability", 0.5),
            distance=_enum(DISTANCE, m.distance, "lime.distance"),  # type: ignore[arg-type]
            kernel_width=float(m.kernel_width) if m.HasField("kernel_width") else None,
            alpha=_opt(m, "alpha", 1.0),
        )
    if which == "kernel_shap":
        return dom.KernelShap(n_perturbations=m.n_perturbations or 256)
    if which == "sobol":
        return dom.Sobol(
            n_points=m.n_points or 32,
            order=_enum(ORDER, m.order, "sobol.order"),  # type: ignore[arg-type]
            sampler=_enum(SAMPLER, m.sampler, "sobol.sampler"),  # type: ignore[arg-type]
        )
    return _gradient(which, m)


def _input_from_proto(item: pb.Input, i: int, targets: list[int | str]) -> dom.InputSpec:
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
        return dom.InputSpec(
            text=item.text,
            targets=targets,
            continuation_text=continuation_text,
            continuation_ids=continuation_ids,
        )
    if content == "token_ids":
        return dom.InputSpec(
            ids=list(item.token_ids.ids),
            attention=list(item.token_ids.attention_mask) or None,
            targets=targets,
            continuation_text=continuation_text,
            continuation_ids=continuation_ids,
        )
    raise InvalidArgument(f"input {i} has neither text nor token_ids", field=f"inputs[{i}]")


def generation_from_proto(request: pb.ExplainRequest) -> dom.Generation | None:
    """The request's generation parameters (defaults for unset fields), None when unset."""
    if not request.HasField("generation"):
        return None
    g = request.generation
    return dom.Generation(
        max_new_tokens=g.max_new_tokens or None,
        do_sample=g.do_sample,
        temperature=_opt(g, "temperature", 1.0),
        top_p=_opt(g, "top_p", 1.0),
    )


def params_from_proto(request: pb.ExplainRequest) -> dom.ExplainParams:
    """A whole ExplainRequest to the domain form."""
    inputs = []
    for i, item in enumerate(request.inputs):
        targets: list[int | str] = []
        for j, t in enumerate(item.targets):
            kind = t.WhichOneof("target")
            if kind == "index":
                targets.append(int(t.index))
            elif kind == "label":
                targets.append(str(t.label))
            else:
                raise InvalidArgument(
                    f"target {j} of input {i} has neither index nor label",
                    field=f"inputs[{i}].targets[{j}]",
                )
        inputs.append(_input_from_proto(item, i, targets))
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
    return out


def model_to_proto(m: ServedModel) -> pb.ModelInfo:
    """A served model's metadata."""
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
