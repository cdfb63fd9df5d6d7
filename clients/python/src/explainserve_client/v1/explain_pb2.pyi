from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_ALL_TOKENS: _ClassVar[Granularity]
    GRANULARITY_TOKEN: _ClassVar[Granularity]
    GRANULARITY_WORD: _ClassVar[Granularity]
    GRANULARITY_SENTENCE: _ClassVar[Granularity]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_MEAN: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_MIN: _ClassVar[Aggregation]
    AGGREGATION_SUM: _ClassVar[Aggregation]
    AGGREGATION_SIGNED_MAX: _ClassVar[Aggregation]

class InferenceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INFERENCE_MODE_UNSPECIFIED: _ClassVar[InferenceMode]
    INFERENCE_MODE_LOGITS: _ClassVar[InferenceMode]
    INFERENCE_MODE_SOFTMAX: _ClassVar[InferenceMode]
    INFERENCE_MODE_LOG_SOFTMAX: _ClassVar[InferenceMode]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_BATCH: _ClassVar[Priority]

class GradientReduction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRADIENT_REDUCTION_UNSPECIFIED: _ClassVar[GradientReduction]
    GRADIENT_REDUCTION_SIGNED_SUM: _ClassVar[GradientReduction]
    GRADIENT_REDUCTION_L2_NORM: _ClassVar[GradientReduction]
    GRADIENT_REDUCTION_MEAN_ABS: _ClassVar[GradientReduction]

class Baseline(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BASELINE_UNSPECIFIED: _ClassVar[Baseline]
    BASELINE_ZERO: _ClassVar[Baseline]
    BASELINE_REPLACEMENT: _ClassVar[Baseline]

class IntegrationRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTEGRATION_RULE_UNSPECIFIED: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_LEFT: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_RIGHT: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_MIDDLE: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_RIEMANN_TRAPEZOID: _ClassVar[IntegrationRule]
    INTEGRATION_RULE_GAUSS_LEGENDRE: _ClassVar[IntegrationRule]

class LimeDistance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIME_DISTANCE_UNSPECIFIED: _ClassVar[LimeDistance]
    LIME_DISTANCE_COSINE: _ClassVar[LimeDistance]
    LIME_DISTANCE_HAMMING: _ClassVar[LimeDistance]
    LIME_DISTANCE_EUCLIDEAN: _ClassVar[LimeDistance]

class SobolSampler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOBOL_SAMPLER_UNSPECIFIED: _ClassVar[SobolSampler]
    SOBOL_SAMPLER_SOBOL: _ClassVar[SobolSampler]
    SOBOL_SAMPLER_HALTON: _ClassVar[SobolSampler]
    SOBOL_SAMPLER_LATIN_HYPERCUBE: _ClassVar[SobolSampler]

class SobolOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOBOL_ORDER_UNSPECIFIED: _ClassVar[SobolOrder]
    SOBOL_ORDER_FIRST: _ClassVar[SobolOrder]
    SOBOL_ORDER_TOTAL: _ClassVar[SobolOrder]

class ActivationGranularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVATION_GRANULARITY_UNSPECIFIED: _ClassVar[ActivationGranularity]
    ACTIVATION_GRANULARITY_CLS_TOKEN: _ClassVar[ActivationGranularity]
    ACTIVATION_GRANULARITY_ALL_TOKENS: _ClassVar[ActivationGranularity]
    ACTIVATION_GRANULARITY_TOKEN: _ClassVar[ActivationGranularity]
    ACTIVATION_GRANULARITY_WORD: _ClassVar[ActivationGranularity]
    ACTIVATION_GRANULARITY_SENTENCE: _ClassVar[ActivationGranularity]

class ConceptEncoder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONCEPT_ENCODER_UNSPECIFIED: _ClassVar[ConceptEncoder]
    CONCEPT_ENCODER_LINEAR: _ClassVar[ConceptEncoder]
    CONCEPT_ENCODER_RELU: _ClassVar[ConceptEncoder]
    CONCEPT_ENCODER_TOPK: _ClassVar[ConceptEncoder]
    CONCEPT_ENCODER_JUMPRELU: _ClassVar[ConceptEncoder]
    CONCEPT_ENCODER_NNLS: _ClassVar[ConceptEncoder]
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_ALL_TOKENS: Granularity
GRANULARITY_TOKEN: Granularity
GRANULARITY_WORD: Granularity
GRANULARITY_SENTENCE: Granularity
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_MEAN: Aggregation
AGGREGATION_MAX: Aggregation
AGGREGATION_MIN: Aggregation
AGGREGATION_SUM: Aggregation
AGGREGATION_SIGNED_MAX: Aggregation
INFERENCE_MODE_UNSPECIFIED: InferenceMode
INFERENCE_MODE_LOGITS: InferenceMode
INFERENCE_MODE_SOFTMAX: InferenceMode
INFERENCE_MODE_LOG_SOFTMAX: InferenceMode
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_BATCH: Priority
GRADIENT_REDUCTION_UNSPECIFIED: GradientReduction
GRADIENT_REDUCTION_SIGNED_SUM: GradientReduction
GRADIENT_REDUCTION_L2_NORM: GradientReduction
GRADIENT_REDUCTION_MEAN_ABS: GradientReduction
BASELINE_UNSPECIFIED: Baseline
BASELINE_ZERO: Baseline
BASELINE_REPLACEMENT: Baseline
INTEGRATION_RULE_UNSPECIFIED: IntegrationRule
INTEGRATION_RULE_RIEMANN_LEFT: IntegrationRule
INTEGRATION_RULE_RIEMANN_RIGHT: IntegrationRule
INTEGRATION_RULE_RIEMANN_MIDDLE: IntegrationRule
INTEGRATION_RULE_RIEMANN_TRAPEZOID: IntegrationRule
INTEGRATION_RULE_GAUSS_LEGENDRE: IntegrationRule
LIME_DISTANCE_UNSPECIFIED: LimeDistance
LIME_DISTANCE_COSINE: LimeDistance
LIME_DISTANCE_HAMMING: LimeDistance
LIME_DISTANCE_EUCLIDEAN: LimeDistance
SOBOL_SAMPLER_UNSPECIFIED: SobolSampler
SOBOL_SAMPLER_SOBOL: SobolSampler
SOBOL_SAMPLER_HALTON: SobolSampler
SOBOL_SAMPLER_LATIN_HYPERCUBE: SobolSampler
SOBOL_ORDER_UNSPECIFIED: SobolOrder
SOBOL_ORDER_FIRST: SobolOrder
SOBOL_ORDER_TOTAL: SobolOrder
ACTIVATION_GRANULARITY_UNSPECIFIED: ActivationGranularity
ACTIVATION_GRANULARITY_CLS_TOKEN: ActivationGranularity
ACTIVATION_GRANULARITY_ALL_TOKENS: ActivationGranularity
ACTIVATION_GRANULARITY_TOKEN: ActivationGranularity
ACTIVATION_GRANULARITY_WORD: ActivationGranularity
ACTIVATION_GRANULARITY_SENTENCE: ActivationGranularity
CONCEPT_ENCODER_UNSPECIFIED: ConceptEncoder
CONCEPT_ENCODER_LINEAR: ConceptEncoder
CONCEPT_ENCODER_RELU: ConceptEncoder
CONCEPT_ENCODER_TOPK: ConceptEncoder
CONCEPT_ENCODER_JUMPRELU: ConceptEncoder
CONCEPT_ENCODER_NNLS: ConceptEncoder

class TokenIds(_message.Message):
    __slots__ = ("ids", "attention_mask")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    attention_mask: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., attention_mask: _Optional[_Iterable[int]] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("index", "label")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class Continuation(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class Input(_message.Message):
    __slots__ = ("text", "token_ids", "targets", "continuation")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    continuation: Continuation
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., continuation: _Optional[_Union[Continuation, _Mapping]] = ...) -> None: ...

class Generation(_message.Message):
    __slots__ = ("max_new_tokens", "do_sample", "temperature", "top_p")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    def __init__(self, max_new_tokens: _Optional[int] = ..., do_sample: _Optional[bool] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ...) -> None: ...

class Occlusion(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Lime(_message.Message):
    __slots__ = ("n_perturbations", "perturb_probability", "distance", "kernel_width", "alpha")
    N_PERTURBATIONS_FIELD_NUMBER: _ClassVar[int]
    PERTURB_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    n_perturbations: int
    perturb_probability: float
    distance: LimeDistance
    kernel_width: float
    alpha: float
    def __init__(self, n_perturbations: _Optional[int] = ..., perturb_probability: _Optional[float] = ..., distance: _Optional[_Union[LimeDistance, str]] = ..., kernel_width: _Optional[float] = ..., alpha: _Optional[float] = ...) -> None: ...

class KernelShap(_message.Message):
    __slots__ = ("n_perturbations",)
    N_PERTURBATIONS_FIELD_NUMBER: _ClassVar[int]
    n_perturbations: int
    def __init__(self, n_perturbations: _Optional[int] = ...) -> None: ...

class Sobol(_message.Message):
    __slots__ = ("n_points", "order", "sampler")
    N_POINTS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    n_points: int
    order: SobolOrder
    sampler: SobolSampler
    def __init__(self, n_points: _Optional[int] = ..., order: _Optional[_Union[SobolOrder, str]] = ..., sampler: _Optional[_Union[SobolSampler, str]] = ...) -> None: ...

class Saliency(_message.Message):
    __slots__ = ("reduction",)
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    reduction: GradientReduction
    def __init__(self, reduction: _Optional[_Union[GradientReduction, str]] = ...) -> None: ...

class InputXGradient(_message.Message):
    __slots__ = ("reduction",)
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    reduction: GradientReduction
    def __init__(self, reduction: _Optional[_Union[GradientReduction, str]] = ...) -> None: ...

class IntegratedGradients(_message.Message):
    __slots__ = ("n_steps", "baseline", "rule", "reduction")
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    n_steps: int
    baseline: Baseline
    rule: IntegrationRule
    reduction: GradientReduction
    def __init__(self, n_steps: _Optional[int] = ..., baseline: _Optional[_Union[Baseline, str]] = ..., rule: _Optional[_Union[IntegrationRule, str]] = ..., reduction: _Optional[_Union[GradientReduction, str]] = ...) -> None: ...

class SmoothGrad(_message.Message):
    __slots__ = ("n_samples", "noise_std", "reduction")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    noise_std: float
    reduction: GradientReduction
    def __init__(self, n_samples: _Optional[int] = ..., noise_std: _Optional[float] = ..., reduction: _Optional[_Union[GradientReduction, str]] = ...) -> None: ...

class SquareGrad(_message.Message):
    __slots__ = ("n_samples", "noise_std", "reduction")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    noise_std: float
    reduction: GradientReduction
    def __init__(self, n_samples: _Optional[int] = ..., noise_std: _Optional[float] = ..., reduction: _Optional[_Union[GradientReduction, str]] = ...) -> None: ...

class VarGrad(_message.Message):
    __slots__ = ("n_samples", "noise_std", "reduction")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    noise_std: float
    reduction: GradientReduction
    def __init__(self, n_samples: _Optional[int] = ..., noise_std: _Optional[float] = ..., reduction: _Optional[_Union[GradientReduction, str]] = ...) -> None: ...

class GradientShap(_message.Message):
    __slots__ = ("n_samples", "noise_std", "baseline", "reduction")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    noise_std: float
    baseline: Baseline
    reduction: GradientReduction
    def __init__(self, n_samples: _Optional[int] = ..., noise_std: _Optional[float] = ..., baseline: _Optional[_Union[Baseline, str]] = ..., reduction: _Optional[_Union[GradientReduction, str]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "inputs", "occlusion", "lime", "kernel_shap", "sobol", "saliency", "input_x_gradient", "integrated_gradients", "smooth_grad", "square_grad", "var_grad", "gradient_shap", "granularity", "aggregation", "inference_mode", "seed", "generation", "prompt_units_only", "truncate", "isolate_batches", "priority", "concept_target")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OCCLUSION_FIELD_NUMBER: _ClassVar[int]
    LIME_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SHAP_FIELD_NUMBER: _ClassVar[int]
    SOBOL_FIELD_NUMBER: _ClassVar[int]
    SALIENCY_FIELD_NUMBER: _ClassVar[int]
    INPUT_X_GRADIENT_FIELD_NUMBER: _ClassVar[int]
    INTEGRATED_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    SMOOTH_GRAD_FIELD_NUMBER: _ClassVar[int]
    SQUARE_GRAD_FIELD_NUMBER: _ClassVar[int]
    VAR_GRAD_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_SHAP_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MODE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_UNITS_ONLY_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    ISOLATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_TARGET_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    occlusion: Occlusion
    lime: Lime
    kernel_shap: KernelShap
    sobol: Sobol
    saliency: Saliency
    input_x_gradient: InputXGradient
    integrated_gradients: IntegratedGradients
    smooth_grad: SmoothGrad
    square_grad: SquareGrad
    var_grad: VarGrad
    gradient_shap: GradientShap
    granularity: Granularity
    aggregation: Aggregation
    inference_mode: InferenceMode
    seed: int
    generation: Generation
    prompt_units_only: bool
    truncate: bool
    isolate_batches: bool
    priority: Priority
    concept_target: ConceptTarget
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., occlusion: _Optional[_Union[Occlusion, _Mapping]] = ..., lime: _Optional[_Union[Lime, _Mapping]] = ..., kernel_shap: _Optional[_Union[KernelShap, _Mapping]] = ..., sobol: _Optional[_Union[Sobol, _Mapping]] = ..., saliency: _Optional[_Union[Saliency, _Mapping]] = ..., input_x_gradient: _Optional[_Union[InputXGradient, _Mapping]] = ..., integrated_gradients: _Optional[_Union[IntegratedGradients, _Mapping]] = ..., smooth_grad: _Optional[_Union[SmoothGrad, _Mapping]] = ..., square_grad: _Optional[_Union[SquareGrad, _Mapping]] = ..., var_grad: _Optional[_Union[VarGrad, _Mapping]] = ..., gradient_shap: _Optional[_Union[GradientShap, _Mapping]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., inference_mode: _Optional[_Union[InferenceMode, str]] = ..., seed: _Optional[int] = ..., generation: _Optional[_Union[Generation, _Mapping]] = ..., prompt_units_only: _Optional[bool] = ..., truncate: _Optional[bool] = ..., isolate_batches: _Optional[bool] = ..., priority: _Optional[_Union[Priority, str]] = ..., concept_target: _Optional[_Union[ConceptTarget, _Mapping]] = ...) -> None: ...

class ConceptTarget(_message.Message):
    __slots__ = ("concepts", "concepts_explained")
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_EXPLAINED_FIELD_NUMBER: _ClassVar[int]
    concepts: ConceptSetRef
    concepts_explained: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, concepts: _Optional[_Union[ConceptSetRef, _Mapping]] = ..., concepts_explained: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class ExplainStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: ExplainRequest
    def __init__(self, request: _Optional[_Union[ExplainRequest, _Mapping]] = ...) -> None: ...

class Unit(_message.Message):
    __slots__ = ("text", "char_start", "char_end", "token_indices")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAR_START_FIELD_NUMBER: _ClassVar[int]
    CHAR_END_FIELD_NUMBER: _ClassVar[int]
    TOKEN_INDICES_FIELD_NUMBER: _ClassVar[int]
    text: str
    char_start: int
    char_end: int
    token_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., char_start: _Optional[int] = ..., char_end: _Optional[int] = ..., token_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class ExplainedTarget(_message.Message):
    __slots__ = ("index", "label")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class Matrix(_message.Message):
    __slots__ = ("rows", "cols", "values")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("forward_passes", "elapsed_ms")
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    forward_passes: int
    elapsed_ms: float
    def __init__(self, forward_passes: _Optional[int] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("input_index", "units", "targets", "scores", "logits", "counters", "token_ids", "text", "target_units", "valid", "continuation", "continuation_token_ids", "generated", "prompt_token_count", "continuation_scores", "concept_activations")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_UNITS_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_SCORES_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    targets: _containers.RepeatedCompositeFieldContainer[ExplainedTarget]
    scores: Matrix
    logits: _containers.RepeatedScalarFieldContainer[float]
    counters: Counters
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    target_units: _containers.RepeatedCompositeFieldContainer[Unit]
    valid: _containers.RepeatedScalarFieldContainer[bool]
    continuation: str
    continuation_token_ids: _containers.RepeatedScalarFieldContainer[int]
    generated: bool
    prompt_token_count: int
    continuation_scores: _containers.RepeatedScalarFieldContainer[float]
    concept_activations: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, input_index: _Optional[int] = ..., units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ..., targets: _Optional[_Iterable[_Union[ExplainedTarget, _Mapping]]] = ..., scores: _Optional[_Union[Matrix, _Mapping]] = ..., logits: _Optional[_Iterable[float]] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., target_units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ..., valid: _Optional[_Iterable[bool]] = ..., continuation: _Optional[str] = ..., continuation_token_ids: _Optional[_Iterable[int]] = ..., generated: _Optional[bool] = ..., prompt_token_count: _Optional[int] = ..., continuation_scores: _Optional[_Iterable[float]] = ..., concept_activations: _Optional[_Iterable[float]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "explanations")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    def __init__(self, model: _Optional[str] = ..., explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("forward_passes_done", "forward_passes_total")
    FORWARD_PASSES_DONE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    forward_passes_done: int
    forward_passes_total: int
    def __init__(self, forward_passes_done: _Optional[int] = ..., forward_passes_total: _Optional[int] = ...) -> None: ...

class ExplainStreamResponse(_message.Message):
    __slots__ = ("progress", "explanation")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    explanation: Explanation
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model", "batching")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    batching: BatchSizing
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., batching: _Optional[_Union[BatchSizing, _Mapping]] = ...) -> None: ...

class BatchSizing(_message.Message):
    __slots__ = ("calibrate", "batch_tokens", "kinds", "calibration")
    CALIBRATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    calibrate: bool
    batch_tokens: int
    kinds: _containers.RepeatedCompositeFieldContainer[BatchKindSizing]
    calibration: BatchCalibration
    def __init__(self, calibrate: _Optional[bool] = ..., batch_tokens: _Optional[int] = ..., kinds: _Optional[_Iterable[_Union[BatchKindSizing, _Mapping]]] = ..., calibration: _Optional[_Union[BatchCalibration, _Mapping]] = ...) -> None: ...

class BatchKindSizing(_message.Message):
    __slots__ = ("kind", "cap_tokens", "memory_bound_tokens", "time_bound_tokens", "optimum_tokens", "rates")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BOUND_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_BOUND_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OPTIMUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    cap_tokens: int
    memory_bound_tokens: int
    time_bound_tokens: int
    optimum_tokens: int
    rates: _containers.RepeatedCompositeFieldContainer[BatchRate]
    def __init__(self, kind: _Optional[str] = ..., cap_tokens: _Optional[int] = ..., memory_bound_tokens: _Optional[int] = ..., time_bound_tokens: _Optional[int] = ..., optimum_tokens: _Optional[int] = ..., rates: _Optional[_Iterable[_Union[BatchRate, _Mapping]]] = ...) -> None: ...

class BatchRate(_message.Message):
    __slots__ = ("tokens", "tokens_per_second", "batches")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    tokens_per_second: float
    batches: int
    def __init__(self, tokens: _Optional[int] = ..., tokens_per_second: _Optional[float] = ..., batches: _Optional[int] = ...) -> None: ...

class BatchCalibration(_message.Message):
    __slots__ = ("batches", "seconds")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    batches: int
    seconds: float
    def __init__(self, batches: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class SplitPoint(_message.Message):
    __slots__ = ("name", "shape", "head_input")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    HEAD_INPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    head_input: bool
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., head_input: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "task", "labels", "max_length", "device", "dtype", "replacement", "replacement_token_id", "split_points", "concept_sets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    REPLACEMENT_FIELD_NUMBER: _ClassVar[int]
    REPLACEMENT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINTS_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_SETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    device: str
    dtype: str
    replacement: str
    replacement_token_id: int
    split_points: _containers.RepeatedCompositeFieldContainer[SplitPoint]
    concept_sets: _containers.RepeatedCompositeFieldContainer[ConceptSetInfo]
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., replacement: _Optional[str] = ..., replacement_token_id: _Optional[int] = ..., split_points: _Optional[_Iterable[_Union[SplitPoint, _Mapping]]] = ..., concept_sets: _Optional[_Iterable[_Union[ConceptSetInfo, _Mapping]]] = ...) -> None: ...

class ConceptSetInfo(_message.Message):
    __slots__ = ("name", "split_point", "encoder", "granularity", "method", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    split_point: str
    encoder: str
    granularity: str
    method: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., split_point: _Optional[str] = ..., encoder: _Optional[str] = ..., granularity: _Optional[str] = ..., method: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetActivationsRequest(_message.Message):
    __slots__ = ("model", "inputs", "split_points", "granularity", "aggregation", "dtype", "include_predictions", "omit_units", "truncate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINTS_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    OMIT_UNITS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    split_points: _containers.RepeatedScalarFieldContainer[str]
    granularity: ActivationGranularity
    aggregation: Aggregation
    dtype: str
    include_predictions: bool
    omit_units: bool
    truncate: bool
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., split_points: _Optional[_Iterable[str]] = ..., granularity: _Optional[_Union[ActivationGranularity, str]] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., dtype: _Optional[str] = ..., include_predictions: _Optional[bool] = ..., omit_units: _Optional[bool] = ..., truncate: _Optional[bool] = ...) -> None: ...

class SplitPointActivations(_message.Message):
    __slots__ = ("split_point", "values")
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    split_point: str
    values: Tensor
    def __init__(self, split_point: _Optional[str] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class InputUnits(_message.Message):
    __slots__ = ("input_index", "units", "text")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    text: str
    def __init__(self, input_index: _Optional[int] = ..., units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ..., text: _Optional[str] = ...) -> None: ...

class GetActivationsResponse(_message.Message):
    __slots__ = ("input_start", "input_count", "row_offsets", "activations", "units", "logits", "predicted_classes")
    INPUT_START_FIELD_NUMBER: _ClassVar[int]
    INPUT_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROW_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASSES_FIELD_NUMBER: _ClassVar[int]
    input_start: int
    input_count: int
    row_offsets: _containers.RepeatedScalarFieldContainer[int]
    activations: _containers.RepeatedCompositeFieldContainer[SplitPointActivations]
    units: _containers.RepeatedCompositeFieldContainer[InputUnits]
    logits: Tensor
    predicted_classes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, input_start: _Optional[int] = ..., input_count: _Optional[int] = ..., row_offsets: _Optional[_Iterable[int]] = ..., activations: _Optional[_Iterable[_Union[SplitPointActivations, _Mapping]]] = ..., units: _Optional[_Iterable[_Union[InputUnits, _Mapping]]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., predicted_classes: _Optional[_Iterable[int]] = ...) -> None: ...

class PredictFromActivationsRequest(_message.Message):
    __slots__ = ("model", "activations")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    activations: Tensor
    def __init__(self, model: _Optional[str] = ..., activations: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictFromActivationsResponse(_message.Message):
    __slots__ = ("logits", "predicted_classes")
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASSES_FIELD_NUMBER: _ClassVar[int]
    logits: Tensor
    predicted_classes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, logits: _Optional[_Union[Tensor, _Mapping]] = ..., predicted_classes: _Optional[_Iterable[int]] = ...) -> None: ...

class InlineConceptSet(_message.Message):
    __slots__ = ("split_point", "encoder", "encoder_weight", "encoder_bias", "encoder_center", "encoder_threshold", "top_k", "relu_input", "decoder_weight", "decoder_bias", "labels")
    SPLIT_POINT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    ENCODER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_BIAS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_CENTER_FIELD_NUMBER: _ClassVar[int]
    ENCODER_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RELU_INPUT_FIELD_NUMBER: _ClassVar[int]
    DECODER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DECODER_BIAS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    split_point: str
    encoder: ConceptEncoder
    encoder_weight: Tensor
    encoder_bias: Tensor
    encoder_center: Tensor
    encoder_threshold: Tensor
    top_k: int
    relu_input: bool
    decoder_weight: Tensor
    decoder_bias: Tensor
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, split_point: _Optional[str] = ..., encoder: _Optional[_Union[ConceptEncoder, str]] = ..., encoder_weight: _Optional[_Union[Tensor, _Mapping]] = ..., encoder_bias: _Optional[_Union[Tensor, _Mapping]] = ..., encoder_center: _Optional[_Union[Tensor, _Mapping]] = ..., encoder_threshold: _Optional[_Union[Tensor, _Mapping]] = ..., top_k: _Optional[int] = ..., relu_input: _Optional[bool] = ..., decoder_weight: _Optional[_Union[Tensor, _Mapping]] = ..., decoder_bias: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ConceptSetRef(_message.Message):
    __slots__ = ("name", "inline")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    inline: InlineConceptSet
    def __init__(self, name: _Optional[str] = ..., inline: _Optional[_Union[InlineConceptSet, _Mapping]] = ...) -> None: ...

class ExplainConceptsRequest(_message.Message):
    __slots__ = ("model", "inputs", "concepts", "inference_mode", "concepts_x_gradients", "normalization", "granularity", "aggregation", "truncate", "isolate_batches", "priority")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MODE_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_X_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    ISOLATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedCompositeFieldContainer[Input]
    concepts: ConceptSetRef
    inference_mode: InferenceMode
    concepts_x_gradients: bool
    normalization: bool
    granularity: ActivationGranularity
    aggregation: Aggregation
    truncate: bool
    isolate_batches: bool
    priority: Priority
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Input, _Mapping]]] = ..., concepts: _Optional[_Union[ConceptSetRef, _Mapping]] = ..., inference_mode: _Optional[_Union[InferenceMode, str]] = ..., concepts_x_gradients: _Optional[bool] = ..., normalization: _Optional[bool] = ..., granularity: _Optional[_Union[ActivationGranularity, str]] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., truncate: _Optional[bool] = ..., isolate_batches: _Optional[bool] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class ConceptContributions(_message.Message):
    __slots__ = ("target", "contributions", "output", "residual", "bias", "concept_sum", "gap")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_SUM_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    target: ExplainedTarget
    contributions: Matrix
    output: float
    residual: float
    bias: float
    concept_sum: float
    gap: float
    def __init__(self, target: _Optional[_Union[ExplainedTarget, _Mapping]] = ..., contributions: _Optional[_Union[Matrix, _Mapping]] = ..., output: _Optional[float] = ..., residual: _Optional[float] = ..., bias: _Optional[float] = ..., concept_sum: _Optional[float] = ..., gap: _Optional[float] = ...) -> None: ...

class ConceptExplanation(_message.Message):
    __slots__ = ("input_index", "concepts", "targets", "logits", "reconstruction_error", "text", "token_ids", "counters", "units")
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_ERROR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    input_index: int
    concepts: Matrix
    targets: _containers.RepeatedCompositeFieldContainer[ConceptContributions]
    logits: _containers.RepeatedScalarFieldContainer[float]
    reconstruction_error: float
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    counters: Counters
    units: _containers.RepeatedCompositeFieldContainer[Unit]
    def __init__(self, input_index: _Optional[int] = ..., concepts: _Optional[_Union[Matrix, _Mapping]] = ..., targets: _Optional[_Iterable[_Union[ConceptContributions, _Mapping]]] = ..., logits: _Optional[_Iterable[float]] = ..., reconstruction_error: _Optional[float] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., units: _Optional[_Iterable[_Union[Unit, _Mapping]]] = ...) -> None: ...

class ExplainConceptsResponse(_message.Message):
    __slots__ = ("model", "concept_set", "concept_labels", "explanations")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_SET_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    concept_set: str
    concept_labels: _containers.RepeatedScalarFieldContainer[str]
    explanations: _containers.RepeatedCompositeFieldContainer[ConceptExplanation]
    def __init__(self, model: _Optional[str] = ..., concept_set: _Optional[str] = ..., concept_labels: _Optional[_Iterable[str]] = ..., explanations: _Optional[_Iterable[_Union[ConceptExplanation, _Mapping]]] = ...) -> None: ...
