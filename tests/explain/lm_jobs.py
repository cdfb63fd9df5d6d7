"""Helpers of the causal-LM tests that call the worker directly (prefix reuse, packed suffixes,
the reference pass) or compare two servings of one LM: a forward job of rows made from a
reference and scored by teacher forcing, and the scale of the float-rounding tolerance."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from explainserve.scheduling.jobs import ForwardJob


def causal_job(
    rows: NDArray[np.int64],
    reference: NDArray[np.int64],
    p: int,
    *,
    targets: NDArray[np.int64] | None = None,
    mode: str = "logits",
    replaced: NDArray[np.bool_] | None = None,
) -> ForwardJob:
    """`rows` `(r, n)` made from `reference` `(n,)`, every position attended, scored by
    teacher forcing from position `p` on: the logits at position `k - 1` score the `k - p`-th
    target, by default the reference's own token `k` (its continuation)."""
    n = len(reference)
    return ForwardJob(
        ids=rows,
        attention=np.ones(n, dtype=np.int64),
        targets=reference[p:].copy() if targets is None else targets,
        mode=mode,  # type: ignore[arg-type]
        replaced=replaced,
        positions=np.arange(p - 1, n - 1, dtype=np.int64),
        reference=reference,
    )


def scale(x: NDArray[np.floating]) -> float:
    """The magnitude tolerances are taken relative to."""
    return max(1.0, float(np.abs(x).max()))
