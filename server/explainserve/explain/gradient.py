"""What every gradient method shares (one module each under `methods/`): gradients on the input
(word) embeddings, by their textbook definitions.

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

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve import _native
from explainserve.errors import InvalidArgument
from explainserve.explain.method import Method
from explainserve.explain.run import Item, Picked, RunContext
from explainserve.scheduling.jobs import GradientJob

if TYPE_CHECKING:
    from explainserve.models.registry import ServedModel

Reduction = Literal["signed_sum", "l2_norm", "mean_abs"]
BaselineKind = Literal["zero", "replacement"]
# Noise beyond this many standard deviations of the embeddings only measures the noise (and
# overflows float16/bfloat16 models).
MAX_NOISE_STD = 100.0


def path_points(n_steps: int, rule: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
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


@dataclass(frozen=True)
class GradientPath:
    """The points one input's rows are taken at (shared by every target) and how they count."""

    #: `(points, n, h)` embeddings.
    points: torch.Tensor
    #: `(points,)` float64: each point's weight in its target's running sum (they add up to 1).
    weights: torch.Tensor
    #: GradientShap: `(points, n, h)`, the noisy baseline of each point; None otherwise.
    starts: torch.Tensor | None = None


def uniform(points: torch.Tensor) -> GradientPath:
    """Points that count alike: the mean of their gradients."""
    n = int(points.shape[0])
    return GradientPath(points, torch.full((n,), 1.0 / n, dtype=torch.float64))


@dataclass(frozen=True)
class PathInput:
    """What a method's points are made of."""

    #: The input's embeddings `(n, h)`.
    x: torch.Tensor
    #: The baseline `(n, h)`: the input, with zero or the replacement's embedding at moved rows.
    baseline: torch.Tensor
    #: `(n, 1)` bool: the positions of a unit (the only ones moved; special tokens stay).
    moved: torch.Tensor
    generator: torch.Generator

    def noise(self, n_samples: int, noise_std: float) -> torch.Tensor:
        """`(n_samples, n, h)` Gaussian noise at the moved positions, `noise_std` times the
        standard deviation of the moved embeddings."""
        rows = self.x[self.moved[:, 0]]
        scale = float(rows.std()) if rows.numel() > 1 else 1.0
        sigma = noise_std * scale
        drawn = torch.randn((n_samples, *self.x.shape), generator=self.generator) * sigma
        return drawn * self.moved


@dataclass(frozen=True)
class GradientMethod(Method):
    """A gradient method: the points its rows are taken at (`path`), how each batch's gradients
    add to the running sums (`accumulate`) and the per-dimension attribution made of them
    (`attribution`), reduced over the hidden dimension and aggregated to units."""

    #: The reduction over the hidden dimension when the request does not say.
    default_reduction: ClassVar[Reduction]
    #: The running sums include the squared gradients (`GradientRun.sum_sq`).
    needs_squares: ClassVar[bool] = False

    #: Over the hidden dimension; None: `default_reduction`.
    reduction: Reduction | None = None

    def rows_per_target(self) -> int:
        """Points (rows) per target."""
        return 1

    def n_rows(self, n_units: int, n_targets: int) -> int:
        """Sequences (forward + backward): points x targets."""
        return self.rows_per_target() * n_targets

    def baseline_kind(self) -> BaselineKind:
        """The baseline at the moved positions (`WithBaseline`: the `baseline` parameter)."""
        return "zero"

    def path(self, at: PathInput) -> GradientPath:
        """The points the gradients are taken at (default: the input itself)."""
        return uniform(at.x.unsqueeze(0))

    def accumulate(
        self, run: GradientRun, target: torch.Tensor, point: torch.Tensor, g: torch.Tensor
    ) -> None:
        """Adds gradients `g` (`(rows, n, h)` float64) of rows at `point` to their `target`'s
        sums (default: the weighted gradient)."""
        run.sum.index_add_(0, target, g * run.path.weights[point].view(-1, 1, 1))

    def attribution(self, run: GradientRun) -> torch.Tensor:
        """`(targets, n, h)` float64 from the finished sums (default: the weighted mean)."""
        return run.sum

    def start(self, item: Item, ctx: RunContext) -> GradientRun:
        """One job of every (point, target) row of the input."""
        return GradientRun(item, self, ctx)


@dataclass(frozen=True)
class NoisyGradient(GradientMethod):
    """A method that averages over noisy copies of the input (or of a baseline)."""

    default_reduction: ClassVar[Reduction] = "l2_norm"

    n_samples: int = 32
    #: Relative to the standard deviation of the input's embeddings.
    noise_std: float = 0.1

    def validate(self) -> None:
        """At least one sample, a finite noise >= 0 and at most `MAX_NOISE_STD`."""
        self.check_at_least("n_samples", 1)
        self.check_finite("noise_std", allow_zero=True)
        if self.noise_std > MAX_NOISE_STD:
            raise InvalidArgument(
                f"{self.name}.noise_std is relative to the embeddings' standard deviation and "
                f"must be at most {MAX_NOISE_STD:g}, got {self.noise_std:g}",
                field=self.field_name("noise_std"),
            )

    def rows_per_target(self) -> int:
        """One row per sample."""
        return self.n_samples

    def path(self, at: PathInput) -> GradientPath:
        """`n_samples` noisy copies of the input."""
        return uniform(at.x + at.noise(self.n_samples, self.noise_std))


@dataclass(frozen=True)
class WithBaseline:
    """A gradient method's `baseline` parameter (mixed in before `GradientMethod`)."""

    baseline: BaselineKind = "zero"

    def baseline_kind(self) -> BaselineKind:
        """The `baseline` parameter."""
        return self.baseline


class GradientRun:
    """One input's gradient job and how its gradients become unit scores."""

    def __init__(self, item: Item, method: GradientMethod, ctx: RunContext) -> None:
        model = ctx.model
        self._method = method
        self._item = item
        self._aggregation = ctx.aggregation
        self._reduction: Reduction = method.reduction or method.default_reduction
        runner = model.runner
        ids = torch.from_numpy(item.encoded.ids).unsqueeze(0).to(runner.device)
        with torch.no_grad():
            # Reading the embedding table is not a model forward: it is the job's input.
            x = runner.embed(ids)[0].float().cpu()
        moved = torch.from_numpy(item.units.token_to_unit >= 0).unsqueeze(-1)  # (n, 1)
        #: The input's embeddings `(n, h)` and the baseline the path starts from.
        self.x = x
        self.baseline = _baseline(model, x, moved, method.baseline_kind())
        generator = torch.Generator().manual_seed(ctx.seed)
        #: The points and their weights.
        self.path = method.path(PathInput(x, self.baseline, moved, generator))
        per_target = int(self.path.points.shape[0])
        self._per_target = per_target
        n_targets = len(item.targets)
        hidden = tuple(x.shape)
        #: Running sums per target `(targets, n, h)`, float64 (and of squares, when needed).
        self.sum = torch.zeros((n_targets, *hidden), dtype=torch.float64)
        sq_shape = (n_targets, *hidden) if method.needs_squares else (0,)
        self.sum_sq = torch.zeros(sq_shape, dtype=torch.float64)
        # Rows are target-major: all points of target 0, then of target 1, ... They share the
        # points (no copy per target), and the worker hands each batch's gradients to
        # `_accumulate`, so memory holds (targets, n, h) sums, never every row's gradients.
        targets = np.repeat(item.targets, per_target)
        positions = None if item.positions is None else np.repeat(item.positions, per_target)
        self.n_rows = len(targets)
        self._job = GradientJob(
            embeds=self.path.points.to(model.dtype),
            attention=item.encoded.attention,
            targets=targets,
            mode=ctx.mode,
            positions=positions,
            accumulate=self._accumulate,
            output=ctx.output,
            on_rows_done=ctx.progress.add,
            is_cancelled=ctx.is_cancelled,
        )

    def _accumulate(self, start: int, stop: int, grads: torch.Tensor) -> None:
        """Adds rows `start..stop`'s gradients `(rows, n, h)` to their targets' sums (worker
        thread; `finish` reads the sums once the job is done)."""
        rows = torch.arange(start, stop)
        self._method.accumulate(
            self, rows // self._per_target, rows % self._per_target, grads.double()
        )

    @property
    def jobs(self) -> list[GradientJob]:
        """The worker job to submit."""
        return [self._job]

    @property
    def futures(self) -> list[Future[Any]]:
        """The worker job's future."""
        return [self._job.future]

    @property
    def picked(self) -> Picked | None:
        """None: its targets are known before it starts."""
        return None

    def finish(self) -> NDArray[np.float64]:
        """`(targets, units)` scores."""
        self._job.future.result()  # raises what the job raised
        per_dim = self._method.attribution(self)
        token_scores = reduce_hidden(per_dim, self._reduction).float().numpy()
        unit_scores = _native.aggregate(
            np.ascontiguousarray(token_scores, dtype=np.float32),
            self._item.units.token_to_unit,
            self._item.units.n_units,
            self._aggregation,
        )
        return unit_scores.astype(np.float64)


def _baseline(
    model: ServedModel, x: torch.Tensor, moved: torch.Tensor, which: BaselineKind
) -> torch.Tensor:
    """Zero, or the replacement token's embedding, at every moved position."""
    fill = torch.zeros(x.shape[-1])
    if which == "replacement" and not model.replacement.zero_embedding:
        token = torch.tensor([[model.replacement.token_id]], device=model.runner.device)
        with torch.no_grad():
            fill = model.runner.embed(token)[0, 0].float().cpu()
    return torch.where(moved, fill, x)
