"""Perturbation methods: Occlusion, LIME, KernelSHAP, Sobol.

Unit masks come from the native core, are expanded to token-id rows there too, and go through the
model worker as one job per input (so all inputs of a request share batches); the native
estimators turn per-row target scores into unit scores.

With `WorkerOptions.reuse` (the default), identical rows of an input (common for LIME,
KernelSHAP and Sobol with few units) go through the model once and their scores are copied back
into place, so the estimators get exactly the matrices they would get without it; causal LMs'
rows also carry the unperturbed sequence, so the worker runs them from their first change on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve import _native
from explainserve.explain.common import Item, Progress
from explainserve.explain.params import KernelShap, Lime, Occlusion, Sobol
from explainserve.models.registry import ServedModel
from explainserve.scheduling.jobs import ForwardJob, InferenceMode

PerturbationMethod = Occlusion | Lime | KernelShap | Sobol


def design(
    method: PerturbationMethod, n_units: int, seed: int
) -> tuple[
    NDArray[np.uint8], Callable[[NDArray[np.uint8], NDArray[np.float64]], NDArray[np.float64]]
]:
    """The unit masks of `method` and the estimator that turns row outputs into unit scores."""
    if isinstance(method, Occlusion):
        return _native.occlusion_masks(n_units), lambda _m, out: _native.occlusion_scores(out)
    if isinstance(method, Lime):
        # Row 0 is the unperturbed input, as in LIME; the rest are Bernoulli draws.
        random_rows = _native.bernoulli_masks(
            method.n_perturbations - 1, n_units, method.perturb_probability, seed
        )
        masks = np.vstack([np.zeros((1, n_units), dtype=np.uint8), random_rows])

        def lime(m: NDArray[np.uint8], out: NDArray[np.float64]) -> NDArray[np.float64]:
            return _native.lime_scores(m, out, method.distance, method.kernel_width, method.alpha)

        return masks, lime
    if isinstance(method, KernelShap):
        masks, weights = _native.kernel_shap_masks(method.n_perturbations, n_units, seed)
        return masks, lambda m, out: _native.kernel_shap_scores(m, weights, out)
    k = method.n_points
    masks = _native.sobol_masks(n_units, k, method.sampler, seed)
    first_order = method.order == "first"

    def sobol(_m: NDArray[np.uint8], out: NDArray[np.float64]) -> NDArray[np.float64]:
        first, total = _native.sobol_indices(out, n_units, k)
        return first if first_order else total

    return masks, sobol


def n_rows(method: PerturbationMethod, n_units: int) -> int:
    """Sequences `method` sends through the model for `n_units` units."""
    if isinstance(method, Occlusion):
        return n_units + 1
    if isinstance(method, Lime):
        return method.n_perturbations
    if isinstance(method, KernelShap):
        if n_units <= 30 and 2**n_units <= method.n_perturbations:
            return int(2**n_units)
        return method.n_perturbations
    return (n_units + 2) * method.n_points


def distinct_rows(
    ids: NDArray[np.int64], replaced: NDArray[np.bool_] | None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The rows to run and where each row's result is: `(keep (u,), inverse (p,))` with
    `ids[keep][inverse] == ids` (and the same for `replaced`); `keep` in first-occurrence order,
    so without duplicates it is `0..p`."""
    key = ids if replaced is None else np.hstack([ids, replaced.astype(np.int64)])
    # Rows are compared by a random linear hash (wrapping int64 arithmetic), then checked equal
    # to their representative: np.unique(axis=0) sorts whole rows, 10x slower on large designs.
    weights = np.random.default_rng(0).integers(1, 1 << 62, size=key.shape[1], dtype=np.int64)
    _, first, inverse = np.unique(key @ weights, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    twins = np.flatnonzero(first[inverse] != np.arange(len(key)))
    if not np.array_equal(key[twins], key[first[inverse[twins]]]):  # a collision: whole rows
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)


def prefix_order(
    ids: NDArray[np.int64], replaced: NDArray[np.bool_] | None, reference: NDArray[np.int64]
) -> NDArray[np.int64]:
    """Row order by first changed position, latest first: consecutive rows (and so the worker's
    batches) share long prefixes with `reference`, which each batch then computes once."""
    changed = ids != reference[None, :]
    if replaced is not None:
        changed = changed | replaced
    first = np.where(changed.any(axis=1), changed.argmax(axis=1), ids.shape[1])
    return np.argsort(-first, kind="stable").astype(np.int64)


class PerturbationRun:
    """One input's perturbation job and its estimator."""

    def __init__(
        self,
        model: ServedModel,
        item: Item,
        method: PerturbationMethod,
        mode: InferenceMode,
        seed: int,
        progress: Progress,
        is_cancelled: Callable[[], bool] | None,
    ) -> None:
        t2u = item.units.token_to_unit
        masks, self._estimate = design(method, item.units.n_units, seed)
        self._masks = masks
        replacement = model.replacement
        ids = _native.expand_ids(
            masks, t2u, item.encoded.ids, 0 if replacement.zero_embedding else replacement.token_id
        )
        replaced = None
        if replacement.zero_embedding:
            in_unit = t2u >= 0
            replaced = np.zeros(ids.shape, dtype=bool)
            replaced[:, in_unit] = masks[:, t2u[in_unit]].astype(bool)
        #: Sequences the method sends through the model (its definition, duplicates counted).
        self.n_rows = int(ids.shape[0])
        causal = item.positions is not None
        self._inverse: NDArray[np.int64] | None = None
        if model.worker.options.reuse:
            keep, inverse = distinct_rows(ids, replaced)
            if causal:
                order = prefix_order(
                    ids[keep], None if replaced is None else replaced[keep], item.encoded.ids
                )
                rank = np.empty_like(order)
                rank[order] = np.arange(len(order))
                keep, inverse = keep[order], rank[inverse]
            if len(keep) < self.n_rows or not np.array_equal(keep, np.arange(self.n_rows)):
                self._inverse = inverse
                ids = ids[keep]
                replaced = None if replaced is None else replaced[keep]
        #: Sequences actually run (distinct rows).
        self.rows_run = int(ids.shape[0])
        self._job = ForwardJob(
            ids=ids,
            attention=item.encoded.attention,
            targets=item.targets,
            mode=mode,
            replaced=replaced,
            positions=item.positions,
            reference=item.encoded.ids if causal else None,
            on_rows_done=progress.add,
            is_cancelled=is_cancelled,
        )
        skipped = self.n_rows - self.rows_run
        if skipped:
            # Progress counts the method's sequences: the duplicates are done with the job.
            self._job.future.add_done_callback(
                lambda f: progress.add(skipped) if f.exception() is None else None
            )

    @property
    def jobs(self) -> list[ForwardJob]:
        """The worker job to submit."""
        return [self._job]

    @property
    def futures(self) -> list[Future[Any]]:
        """The worker job's future."""
        return [self._job.future]

    def finish(self) -> NDArray[np.float64]:
        """`(targets, units)` scores."""
        out = self._job.future.result()
        if self._inverse is not None:
            out = out[self._inverse]
        return self._estimate(self._masks, out)
