"""Gradient methods on the input (word) embeddings, by their textbook definitions.

- Saliency: the gradient, reduced over the hidden dimension (default: L2 norm, a magnitude).
- InputxGradient: gradient x input (default reduction: signed sum).
- IntegratedGradients: (input - baseline) x the path integral of the gradient along the straight
  line from the baseline, by a Riemann or Gauss-Legendre rule; with the signed sum the scores of
  all tokens add up to f(input) - f(baseline) (completeness).
- SmoothGrad / SquareGrad / VarGrad: mean / mean of squares / variance of the gradient over noisy
  copies of the input (default reduction: L2 norm).
- GradientShap: mean over samples of gradient x (input - baseline'), at a uniformly random point
  of the path from a noisy baseline' (default reduction: signed sum).

Only positions that belong to a unit are moved (baseline, noise): special tokens keep their
embedding, so they get zero path attributions, as they get no perturbation in the other methods.
Every row (sample x target) is one sequence in the model worker's gradient batches. The rows of
all targets share the same points (no copy per target), and each batch's gradients are added to
their target's running sums as the batch finishes: an input holds `(targets, n, h)` sums, never
`(samples x targets, n, h)` gradients (a causal LM has one target per continuation token).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve import _native
from explainserve.explain.common import Item, Progress
from explainserve.explain.params import Aggregation, Gradient, IntegrationRule, Reduction
from explainserve.models.registry import ServedModel
from explainserve.scheduling.jobs import GradientJob, InferenceMode

_DEFAULT_REDUCTION: dict[str, Reduction] = {
    "saliency": "l2_norm",
    "input_x_gradient": "signed_sum",
    "integrated_gradients": "signed_sum",
    "smooth_grad": "l2_norm",
    "square_grad": "l2_norm",
    "var_grad": "l2_norm",
    "gradient_shap": "signed_sum",
}


def path_points(
    n_steps: int, rule: IntegrationRule
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Points `alpha` in [0, 1] and weights of the rule; the weights sum to 1."""
    m = n_steps
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)
        return (nodes + 1.0) / 2.0, weights / 2.0
    if rule == "riemann_trapezoid":
        if m < 2:
            return np.array([1.0]), np.array([1.0])
        alphas = np.linspace(0.0, 1.0, m)
        weights = np.full(m, 1.0 / (m - 1))
        weights[[0, -1]] /= 2.0
        return alphas, weights
    k = np.arange(m, dtype=np.float64)
    shift = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (k + shift) / m, np.full(m, 1.0 / m)


def reduce_hidden(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """`(..., n, h)` -> `(..., n)` over the hidden dimension."""
    if reduction == "signed_sum":
        return values.sum(dim=-1)
    if reduction == "l2_norm":
        norm: torch.Tensor = torch.linalg.vector_norm(values, dim=-1)
        return norm
    return values.abs().mean(dim=-1)


def n_rows(method: Gradient, n_targets: int) -> int:
    """Sequences (forward + backward) `method` runs for one input."""
    if method.kind in ("saliency", "input_x_gradient"):
        per_target = 1
    elif method.kind == "integrated_gradients":
        per_target = method.n_steps
    else:
        per_target = method.n_samples
    return per_target * n_targets


class GradientRun:
    """One input's gradient job and how its gradients become unit scores."""

    def __init__(
        self,
        model: ServedModel,
        item: Item,
        method: Gradient,
        mode: InferenceMode,
        aggregation: Aggregation,
        seed: int,
        progress: Progress,
        is_cancelled: Callable[[], bool] | None,
    ) -> None:
        self._method = method
        self._item = item
        self._aggregation = aggregation
        self._reduction: Reduction = method.reduction or _DEFAULT_REDUCTION[method.kind]
        runner = model.runner
        ids = torch.from_numpy(item.encoded.ids).unsqueeze(0).to(runner.device)
        with torch.no_grad():
            # Reading the embedding table is not a model forward: it is the job's input.
            x = runner.embed(ids)[0].float().cpu()
        moved = torch.from_numpy(item.units.token_to_unit >= 0).unsqueeze(-1)  # (n, 1)
        self._x = x
        self._moved = moved
        n_targets = len(item.targets)
        generator = torch.Generator().manual_seed(seed)
        baseline = self._baseline(model, x, moved, method.baseline)
        self._baseline_x = baseline
        kind = method.kind
        if kind in ("saliency", "input_x_gradient"):
            points = x.unsqueeze(0)
        elif kind == "integrated_gradients":
            alphas, weights = path_points(method.n_steps, method.rule)
            self._weights = torch.from_numpy(weights).float()
            a = torch.from_numpy(alphas).float().view(-1, 1, 1)
            points = baseline + a * (x - baseline)
        elif kind == "gradient_shap":
            noise = self._noise(x, moved, method, generator)
            noisy_baseline = baseline + noise
            a = torch.rand((method.n_samples, 1, 1), generator=generator)
            self._shap_baselines = noisy_baseline
            points = noisy_baseline + a * (x - noisy_baseline)
        else:
            points = x + self._noise(x, moved, method, generator)
        per_target = int(points.shape[0])
        self._per_target = per_target
        # Per-point weight of each row's gradient in its target's running sum (and, for
        # GradientShap, the factor x - baseline' of each point).
        if kind == "integrated_gradients":
            self._row_weights = torch.from_numpy(weights).double()
        else:
            self._row_weights = torch.full((per_target,), 1.0 / per_target, dtype=torch.float64)
        hidden = tuple(x.shape)
        self._sum = torch.zeros((n_targets, *hidden), dtype=torch.float64)
        sq_shape = (n_targets, *hidden) if kind == "var_grad" else (0,)
        self._sum_sq = torch.zeros(sq_shape, dtype=torch.float64)
        # Rows are target-major: all points of target 0, then of target 1, ... They share the
        # points (no copy per target), and the worker hands each batch's gradients to
        # `_accumulate`, so memory holds (targets, n, h) sums, never every row's gradients.
        targets = np.repeat(item.targets, per_target)
        positions = None if item.positions is None else np.repeat(item.positions, per_target)
        self.n_rows = len(targets)
        self._job = GradientJob(
            embeds=points.to(model.dtype),
            attention=item.encoded.attention,
            targets=targets,
            mode=mode,
            positions=positions,
            accumulate=self._accumulate,
            on_rows_done=progress.add,
            is_cancelled=is_cancelled,
        )

    def _accumulate(self, start: int, stop: int, grads: torch.Tensor) -> None:
        """Adds rows `start..stop`'s gradients `(rows, n, h)` to their targets' sums (worker
        thread; `finish` reads the sums once the job is done)."""
        rows = torch.arange(start, stop)
        target = rows // self._per_target
        point = rows % self._per_target
        g = grads.double()
        w = self._row_weights[point].view(-1, 1, 1)
        kind = self._method.kind
        if kind == "gradient_shap":
            factor = (self._x - self._shap_baselines[point]).double()
            self._sum.index_add_(0, target, g * factor * w)
        elif kind == "square_grad":
            self._sum.index_add_(0, target, g * g * w)
        else:
            self._sum.index_add_(0, target, g * w)
            if kind == "var_grad":
                self._sum_sq.index_add_(0, target, g * g * w)

    @property
    def jobs(self) -> list[GradientJob]:
        """The worker job to submit."""
        return [self._job]

    @staticmethod
    def _baseline(
        model: ServedModel, x: torch.Tensor, moved: torch.Tensor, which: str
    ) -> torch.Tensor:
        """Zero, or the replacement token's embedding, at every moved position."""
        fill = torch.zeros(x.shape[-1])
        if which == "replacement" and not model.replacement.zero_embedding:
            token = torch.tensor([[model.replacement.token_id]], device=model.runner.device)
            with torch.no_grad():
                fill = model.runner.embed(token)[0, 0].float().cpu()
        return torch.where(moved, fill, x)

    @staticmethod
    def _noise(
        x: torch.Tensor, moved: torch.Tensor, method: Gradient, generator: torch.Generator
    ) -> torch.Tensor:
        rows = x[moved[:, 0]]
        scale = float(rows.std()) if rows.numel() > 1 else 1.0
        sigma = method.noise_std * scale
        noise = torch.randn((method.n_samples, *x.shape), generator=generator) * sigma
        return noise * moved

    @property
    def futures(self) -> list[Future[Any]]:
        """The worker job's future."""
        return [self._job.future]

    def finish(self) -> NDArray[np.float64]:
        """`(targets, units)` scores."""
        self._job.future.result()  # raises what the job raised
        kind = self._method.kind
        x = self._x.double()
        if kind == "input_x_gradient":
            per_dim = self._sum * x
        elif kind == "integrated_gradients":
            per_dim = (x - self._baseline_x.double()) * self._sum
        elif kind == "var_grad":
            per_dim = (self._sum_sq - self._sum * self._sum).clamp(min=0.0)
        else:  # saliency (one point), smooth_grad, square_grad, gradient_shap: the mean
            per_dim = self._sum
        token_scores = reduce_hidden(per_dim, self._reduction).float().numpy()
        unit_scores = _native.aggregate(
            np.ascontiguousarray(token_scores, dtype=np.float32),
            self._item.units.token_to_unit,
            self._item.units.n_units,
            self._aggregation,
        )
        return unit_scores.astype(np.float64)
