"""The domain form of GetActivations and PredictFromActivations requests and replies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from explainserve.activations.tensors import RawTensor
from explainserve.vocabulary import Aggregation, InputSpec, Units

#: Rows per input: the token the head reads (one row), every token, tokens without the special
#: ones, or words / sentences (their tokens' rows aggregated).
ActivationGranularity = Literal["cls_token", "all_tokens", "token", "word", "sentence"]


@dataclass(frozen=True)
class ActivationParams:
    """A whole GetActivations request; no split points = the classification head's input."""

    model: str
    inputs: list[InputSpec]
    split_points: list[str] = field(default_factory=list)
    granularity: ActivationGranularity = "cls_token"
    aggregation: Aggregation = "mean"
    dtype: str = "float32"
    predictions: bool = False
    #: Describe each input's rows (units: text, span, tokens); False leaves them out.
    units: bool = True


@dataclass(frozen=True)
class InputUnits:
    """What the rows of one input are (every granularity but cls_token)."""

    input_index: int
    units: Units
    #: The text the units' spans index into (decoded for token-id inputs).
    text: str


@dataclass(frozen=True)
class ActivationChunk:
    """Consecutive inputs' activations: `[input_start, input_start + input_count)`."""

    input_start: int
    input_count: int
    #: `(input_count + 1,)` from 0: input `input_start + i` owns rows `[o[i], o[i + 1])`.
    row_offsets: NDArray[np.int64]
    #: One `(split point name, rows x features tensor)` per split point, in request order.
    activations: list[tuple[str, RawTensor]]
    #: One per input, empty for cls_token or when units were not asked for.
    units: list[InputUnits]
    #: `[input_count, classes]` float32 logits, when predictions were asked for.
    logits: RawTensor | None = None
    #: Argmax of each input's logits, when predictions were asked for.
    predicted: list[int] = field(default_factory=list)

    @property
    def n_bytes(self) -> int:
        """Bytes of tensor data in the chunk."""
        out = sum(len(t.data) for _, t in self.activations)
        return out + (len(self.logits.data) if self.logits is not None else 0)


@dataclass(frozen=True)
class HeadParams:
    """PredictFromActivations: rows of activations at the model's classification head input."""

    model: str
    activations: RawTensor


@dataclass(frozen=True)
class HeadPrediction:
    """The head's `(rows, classes)` float32 logits and each row's argmax."""

    logits: NDArray[np.float32]
    predicted: NDArray[np.int64]
