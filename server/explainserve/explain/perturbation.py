"""What every perturbation method shares (Occlusion, LIME, KernelSHAP, Sobol: `methods/`).

Unit masks come from the native core, are expanded to token-id rows there too, and go through the
model worker as one job per input (so all inputs of a request share batches); the native
estimators turn per-row target scores into unit scores.

With `WorkerOptions.reuse` (the default), identical rows of an input (common for LIME,
KernelSHAP and Sobol with few units) go through the model once and their scores are copied back
into place, so the estimators get exactly the matrices they would get without it; causal LMs'
rows also carry the unperturbed sequence, so the worker runs them from their first change on.

A classifier's input queues once: its job carries the unperturbed row (row 0: the design's own
when its first mask is empty, as Occlusion's, LIME's and KernelSHAP's, else one row added in
front, as for Sobol) and scores every row on all classes; the targets are then picked from row
0's logits (`TargetChoice`) and each row's scores for them taken, so the scores are those of a
job given the targets beforehand, bit for bit.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from explainserve import _native
from explainserve.explain.method import Method
from explainserve.explain.run import Item, Picked, RunContext
from explainserve.scheduling.jobs import ForwardJob

#: An estimator: `(masks, row outputs (rows, targets))` -> `(targets, units)` scores.
Estimator = Callable[[NDArray[np.uint8], NDArray[np.float64]], NDArray[np.float64]]


@dataclass(frozen=True)
class PerturbationMethod(Method):
    """A method that perturbs whole units: its plan is a design of unit masks (1 = replaced) and
    an estimator of unit scores from the rows' outputs."""

    shares_identical_inputs: ClassVar[bool] = True
    picks_targets_late: ClassVar[bool] = True

    @abstractmethod
    def design(self, n_units: int, seed: int) -> tuple[NDArray[np.uint8], Estimator]:
        """The unit masks and the estimator that turns row outputs into unit scores."""

    def start(self, item: Item, ctx: RunContext) -> PerturbationRun:
        """One job of every perturbed sequence of the input."""
        return PerturbationRun(item, self, ctx)


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

    def __init__(self, item: Item, method: PerturbationMethod, ctx: RunContext) -> None:
        model, progress = ctx.model, ctx.progress
        t2u = item.units.token_to_unit
        masks, self._estimate = method.design(item.units.n_units, ctx.seed)
        self._masks = masks
        self._choice = item.choice
        self._picked: Picked | None = None
        #: Whether row 0 (unperturbed) is added in front of the design's rows.
        self._base_added = item.choice is not None and (len(masks) == 0 or bool(masks[0].any()))
        run_masks = masks
        if self._base_added:
            run_masks = np.vstack([np.zeros((1, masks.shape[1]), dtype=masks.dtype), masks])
        replacement = model.replacement
        ids = _native.expand_ids(
            run_masks,
            t2u,
            item.encoded.ids,
            0 if replacement.zero_embedding else replacement.token_id,
        )
        replaced = None
        if replacement.zero_embedding:
            in_unit = t2u >= 0
            replaced = np.zeros(ids.shape, dtype=bool)
            replaced[:, in_unit] = run_masks[:, t2u[in_unit]].astype(bool)
        #: Sequences the method sends through the model (its definition, duplicates counted,
        #: with the unperturbed row when it is added).
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
        targets = item.targets
        if item.choice is not None:  # scored on every output, the targets picked afterwards
            targets = np.arange(ctx.outputs(), dtype=np.int64)
        self._job = ForwardJob(
            ids=ids,
            attention=item.encoded.attention,
            targets=targets,
            mode=ctx.mode,
            output=ctx.output,
            logits_row=item.choice is not None,
            replaced=replaced,
            positions=item.positions,
            reference=item.encoded.ids if causal else None,
            on_rows_done=progress.add,
            is_cancelled=ctx.is_cancelled,
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

    @property
    def picked(self) -> Picked | None:
        """After `finish`, with a target choice: the targets and row 0's raw logits."""
        return self._picked

    def finish(self) -> NDArray[np.float64]:
        """`(targets, units)` scores."""
        out = self._job.future.result()
        if self._inverse is not None:
            out = out[self._inverse]
        if self._choice is not None:
            logits = self._job.row_logits
            if logits is None:
                # Row 0 ran (the job is done), but the path that ran it did not record it.
                raise RuntimeError(
                    "the worker did not record the unperturbed row's logits (ForwardJob."
                    "logits_row): the targets cannot be picked"
                )
            targets = self._choice.pick(logits)
            self._picked = Picked(targets, logits)
            out = out[1:, targets] if self._base_added else out[:, targets]
        return self._estimate(self._masks, out)
