"""Helpers of the causal-LM tests that call the worker directly (prefix reuse, packed suffixes,
the reference pass) or compare two servings of one LM (reuse on and off, the target head's rows
or the whole head): a forward job of rows made from a reference and scored by teacher forcing,
an Explain request on a registry, and the scale of the float-rounding tolerance."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from explainserve.explain.method import Method
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.service import Explainer
from explainserve.models.registry import Registry
from explainserve.scheduling.jobs import ForwardJob
from explainserve.vocabulary import InputSpec


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


def explain(
    registry: Registry, model: str, inputs: list[InputSpec], method: Method, **kw: object
) -> list[Explanation]:
    """Every input's explanation, by input index."""
    params = ExplainParams(model=model, inputs=inputs, method=method, **kw)  # type: ignore[arg-type]
    return sorted(Explainer(registry).explain(params), key=lambda e: e.input_index)


def scale(x: NDArray[np.floating]) -> float:
    """The magnitude tolerances are taken relative to."""
    return max(1.0, float(np.abs(x).max()))
