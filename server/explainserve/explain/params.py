"""The domain form of an Explain request: what to explain, how, and what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from explainserve.explain.units import Granularity, Units
from explainserve.scheduling.jobs import InferenceMode, Priority

Aggregation = Literal["mean", "max", "min", "sum", "signed_max"]
Reduction = Literal["signed_sum", "l2_norm", "mean_abs"]
GradientKind = Literal[
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smooth_grad",
    "square_grad",
    "var_grad",
    "gradient_shap",
]
IntegrationRule = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre"
]


@dataclass(frozen=True)
class Occlusion:
    """Replace each unit alone: score = f(x) - f(x without the unit)."""


@dataclass(frozen=True)
class Lime:
    """Weighted ridge regression on random unit masks."""

    n_perturbations: int = 256
    perturb_probability: float = 0.5
    distance: Literal["cosine", "hamming", "euclidean"] = "cosine"
    kernel_width: float | None = None
    alpha: float = 1.0


@dataclass(frozen=True)
class KernelShap:
    """Shapley values by constrained weighted regression."""

    n_perturbations: int = 256


@dataclass(frozen=True)
class Sobol:
    """Sobol indices (Fel et al. 2021)."""

    n_points: int = 32
    order: Literal["first", "total"] = "total"
    sampler: Literal["sobol", "halton", "latin_hypercube"] = "sobol"


@dataclass(frozen=True)
class Gradient:
    """Every gradient method; fields a method does not use are ignored."""

    kind: GradientKind = "saliency"
    n_steps: int = 64
    n_samples: int = 32
    noise_std: float = 0.1
    baseline: Literal["zero", "replacement"] = "zero"
    rule: IntegrationRule = "gauss_legendre"
    reduction: Reduction | None = None


Method = Occlusion | Lime | KernelShap | Sobol | Gradient


@dataclass(frozen=True)
class InputSpec:
    """One input: text, or token ids (+ optional attention mask); targets by index or label.

    Causal LMs: the input is the prompt, and the target is a continuation given as text or token
    ids (at most one of the two); with neither, the model's own continuation is generated.
    """

    text: str | None = None
    ids: list[int] | None = None
    attention: list[int] | None = None
    targets: list[int | str] = field(default_factory=list)
    continuation_text: str | None = None
    continuation_ids: list[int] | None = None

    @property
    def has_continuation(self) -> bool:
        """True when a continuation is given (text or ids)."""
        return self.continuation_text is not None or self.continuation_ids is not None


@dataclass(frozen=True)
class Generation:
    """How a causal LM's continuation is generated when an input has none (the seed is the
    request's): greedy by default, or sampled with `temperature` and nucleus `top_p`.
    `max_new_tokens` None = 32, or the server's limit when lower."""

    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class ExplainParams:
    """A whole Explain request."""

    model: str
    inputs: list[InputSpec]
    method: Method
    granularity: Granularity = "word"
    aggregation: Aggregation = "mean"
    mode: InferenceMode = "logits"
    seed: int = 0
    #: Causal LMs: how continuations are generated for inputs without one.
    generation: Generation | None = None
    #: Causal LMs: the continuation's tokens before the explained one are units too (as in
    #: Interpreto); False = prompt units only.
    target_context: bool = True
    #: Batch this request's rows apart from other requests' (bit-exact under any traffic).
    isolate: bool = False
    #: "interactive" rows are batched before queued "batch" rows (`scheduling.jobs.RequestTag`).
    priority: Priority = "interactive"


@dataclass(frozen=True)
class Explanation:
    """The explanation of one input."""

    input_index: int
    units: Units
    target_indices: list[int]
    target_labels: list[str]
    #: targets x units, float32.
    scores: NDArray[np.float32]
    #: The model's logits for the unperturbed input.
    logits: NDArray[np.float32]
    token_ids: NDArray[np.int64]
    #: What the units' character spans index into (decoded text for token-id inputs).
    text: str
    forward_passes: int
    elapsed_ms: float
    #: Causal LMs: the continuation's units, one per row of `scores` (token indices and spans
    #: into `token_ids` and `text`, which hold prompt + continuation); None for classifiers.
    target_units: Units | None = None
    #: Causal LMs: `scores`' shape; False where the unit is at or after the row's target unit
    #: (it cannot influence it: its score is 0 and meaningless).
    valid: NDArray[np.bool_] | None = None
    #: Causal LMs: the continuation's text and token ids, and whether the server generated it.
    continuation: str = ""
    continuation_ids: NDArray[np.int64] | None = None
    generated: bool = False
    #: Causal LMs: tokens of the prompt at the start of `token_ids`.
    prompt_tokens: int = 0
    #: Causal LMs: the explained function (inference mode of the logits) of each continuation
    #: token, teacher-forced on the unperturbed input.
    continuation_scores: NDArray[np.float32] | None = None
