"""The domain form of concept requests: which concept set (a served one, or a request's own),
ExplainConcepts' choices, and what comes back per input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.sets import ConceptSet, FitGranularity
from explainserve.vocabulary import Aggregation, InferenceMode, InputSpec, Priority, Units

#: The rows of ExplainConcepts (GetActivations' granularities).
ActivationGranularity = FitGranularity


@dataclass(frozen=True)
class ConceptRef:
    """A concept set: one the server serves, by `name`, or the request's own (`inline`, for
    small sets: a CAV, a few directions)."""

    name: str = ""
    inline: ConceptSet | None = None
    #: The request field it came from (errors name it).
    field: str = "concepts"


@dataclass(frozen=True)
class ConceptTarget:
    """Inputs -> concepts (Explain): the concept set whose concepts are explained instead of
    classes, and which (indices or labels, for every input; none: each input's most activated
    concept)."""

    concepts: ConceptRef
    explained: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class ConceptParams:
    """An ExplainConcepts request."""

    model: str
    inputs: list[InputSpec]
    concepts: ConceptRef
    mode: InferenceMode = "logits"
    #: Contributions are C ⊙ ∂(g∘t⁻¹)/∂C (Interpreto's default); False: the gradient alone.
    concepts_x_gradients: bool = True
    #: Each target's contributions divided by the sum of their absolute values (Interpreto's
    #: default); False: raw.
    normalization: bool = True
    #: The rows concepts are read at: None = one row at the head's input, or the set's fit
    #: granularity at a split point with a token dimension.
    granularity: ActivationGranularity | None = None
    #: How a WORD or SENTENCE row is made of its tokens' rows.
    aggregation: Aggregation = "mean"
    isolate: bool = False
    priority: Priority = "interactive"


@dataclass(frozen=True)
class ConceptExplanation:
    """The concept explanation of one input, for each of its targets `t` (T of them).

    With f = g∘h (h: the model up to the head's input, g: the head) and the set's encoder t and
    decoder t⁻¹, C = t(h(x)) and ĥ = t⁻¹(C): `outputs[t]` = f(x)_t (under the inference mode),
    `residual[t]` = g(h)_t - g(ĥ)_t (what the reconstruction loses), `bias[t]` = g(t⁻¹(0))_t
    (the output with every concept off) and `concept_sum[t]` = Σ_k C_k ∂g(t⁻¹(C))_t/∂C_k. So
    concept_sum + residual + bias = outputs exactly when g∘t⁻¹ is linear in C (a linear head in
    logits mode); `gap` is what is left otherwise.
    """

    input_index: int
    target_indices: list[int]
    target_labels: list[str]
    #: `(rows, K)` concept activations C.
    concepts: NDArray[np.float32]
    #: `(T, rows, K)`: as the request asked (C ⊙ gradient or the gradient; normalized or raw).
    contributions: NDArray[np.float32]
    outputs: NDArray[np.float32]
    residual: NDArray[np.float32]
    bias: NDArray[np.float32]
    concept_sum: NDArray[np.float32]
    #: The model's logits for the input.
    logits: NDArray[np.float32]
    #: ‖h - ĥ‖ / ‖h‖: how much of the activations the set does not reconstruct.
    reconstruction_error: float
    token_ids: NDArray[np.int64]
    text: str
    forward_passes: int
    elapsed_ms: float
    #: What each row is (granularities other than CLS_TOKEN); None for one row per input.
    units: Units | None = None

    @property
    def gap(self) -> NDArray[np.float32]:
        """outputs - (concept_sum + residual + bias): 0 for a linear head in logits mode."""
        return self.outputs - (self.concept_sum + self.residual + self.bias)
