"""The domain form of an Explain request: what to explain, how, and what comes back (the
methods and their parameters: `explain/methods/`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.params import ConceptTarget
from explainserve.explain.method import Method
from explainserve.vocabulary import (
    Aggregation,
    Granularity,
    InferenceMode,
    InputSpec,
    Priority,
    Units,
)


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
    #: Inputs -> concepts: a concept set's concepts explained instead of classes.
    concept_target: ConceptTarget | None = None


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
    #: With a concept target: every concept's activation on the unperturbed input (`targets`
    #: are then concepts).
    concept_activations: NDArray[np.float32] | None = None
