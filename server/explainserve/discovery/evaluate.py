"""How good a fitted concept set is, each number named for what it is (they are stored in the
file's `fit` and printed):

- `relative_squared_error`: ‖X - X̂‖²_F / ‖X‖²_F, the share of the activations' energy the
  reconstruction misses; `r2`: 1 - ‖X - X̂‖²_F / ‖X - X̄‖²_F, the share of their variance it
  keeps. (Interpreto's "MSE" metric is the Frobenius norm ‖X - X̂‖_F itself.)
- `sparsity`: the mean share of a row's concept activations that are exactly 0;
  `mean_active_concepts`: the mean count of those that are not.
- `prediction_agreement`: at the head's input, the share of rows whose predicted class on the
  reconstruction X̂ (the head run by PredictFromActivations) is the one on X: how much of the
  prediction the dictionary keeps.
- `importance`: over a probe set, the mean |C ⊙ ∂(g∘t⁻¹)/∂C| per class x concept
  (ExplainConcepts with the set sent inline, raw contributions).
- `stability`: the mean |cosine| between the dictionary's atoms and those of a second fit with
  another seed, matched one to one (the Hungarian algorithm).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from explainserve.concepts.codec import Codec


def reconstruction(codec: Codec, blocks: Iterator[NDArray[np.float32]]) -> dict[str, float]:
    """Reconstruction and sparsity over every row (streamed)."""
    residual = energy = 0.0
    total = np.zeros(codec.concept_set.n_features, dtype=np.float64)
    rows = 0
    zeros = active = 0.0
    for block in blocks:
        with torch.no_grad():
            x = torch.from_numpy(block)
            c = codec.encode(x)
            x_hat = codec.decode(c)
        x64 = block.astype(np.float64)
        residual += float(((x64 - x_hat.double().numpy()) ** 2).sum())
        energy += float((x64**2).sum())
        total += x64.sum(axis=0)
        rows += len(block)
        nonzero = (c != 0).double()
        active += float(nonzero.sum())
        zeros += float((1 - nonzero).mean(dim=1).sum())
    mean = total / max(rows, 1)
    variance = energy - rows * float(mean @ mean)
    return {
        "relative_squared_error": residual / energy if energy > 0 else 0.0,
        "r2": 1.0 - residual / variance if variance > 0 else 0.0,
        "sparsity": zeros / max(rows, 1),
        "mean_active_concepts": active / max(rows, 1),
        "rows": float(rows),
    }


def stability(first: NDArray[np.float32], second: NDArray[np.float32]) -> float:
    """The mean |cosine| of two dictionaries' atoms `(K, d)`, matched one to one."""
    a = first / np.maximum(np.linalg.norm(first, axis=1, keepdims=True), 1e-12)
    b = second / np.maximum(np.linalg.norm(second, axis=1, keepdims=True), 1e-12)
    similarity = np.abs(a @ b.T)
    rows, cols = linear_sum_assignment(-similarity)
    return float(similarity[rows, cols].mean())


def agreement(predicted: NDArray[np.int64], reconstructed_logits: NDArray[np.float32]) -> float:
    """The share of rows whose class on the reconstruction is the one predicted."""
    return float((reconstructed_logits.argmax(axis=1) == predicted).mean())


def importance(contributions: list[Any], labels: list[str]) -> dict[str, list[float]]:
    """Per class, the mean |contribution| of each concept: `contributions` is one `(classes, K)`
    array of raw contributions per probe input."""
    stacked = np.abs(np.stack(contributions))  # (inputs, classes, K)
    mean = stacked.mean(axis=0)
    return {label: [float(v) for v in mean[i]] for i, label in enumerate(labels)}
