"""What the fitting methods share (`discovery.fit`, `discovery.sae`): the options, the fitted
dictionary, and how rows are read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.sets import Array, Encoder


class FitError(ValueError):
    """A fit that cannot be done as asked: what to change, in one line."""


@dataclass(frozen=True)
class FitOptions:
    """How a dictionary is fitted."""

    method: str
    concepts: int
    seed: int = 0
    #: Bytes of float32 rows that may be held at once.
    max_memory: int = 2 << 30
    #: NMF on signed activations: "relu" or "shift" (None: refused).
    nonneg: str | None = None
    #: Sparse autoencoders.
    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float = 1e-3
    l1: float = 1e-3
    top_k: int = 0
    #: JumpReLU: the L0 penalty and the pseudo-gradient's bandwidth.
    l0: float = 1e-3
    bandwidth: float = 1e-3


@dataclass(frozen=True)
class Fitted:
    """A fitted dictionary: the set's encoder and decoder, and what the fit says of itself."""

    encoder: Encoder
    decoder_weight: Array
    decoder_bias: Array | None
    #: Notes (which algorithm ran, why) and the fit's own numbers.
    notes: dict[str, Any]


#: Rows of an activation store, shard by shard (`(rows, d)` float32 each).
Rows = Callable[[], Iterator[NDArray[np.float32]]]
