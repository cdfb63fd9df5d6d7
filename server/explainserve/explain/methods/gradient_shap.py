"""GradientShap: the expected gradient x (input - baseline) over noisy baselines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from explainserve.explain.gradient import (
    GradientPath,
    NoisyGradient,
    PathInput,
    Reduction,
    WithBaseline,
    uniform,
)
from explainserve.explain.method import register

if TYPE_CHECKING:
    from explainserve.explain.gradient import GradientRun


@register
@dataclass(frozen=True)
class GradientShap(WithBaseline, NoisyGradient):
    """Mean over samples of gradient x (input - baseline'), at a uniformly random point of the
    path from a noisy baseline' (default reduction: signed sum)."""

    name = "gradient_shap"
    default_reduction: ClassVar[Reduction] = "signed_sum"

    def path(self, at: PathInput) -> GradientPath:
        """One random point per sample on the line from a noisy baseline to the input."""
        starts = at.baseline + at.noise(self.n_samples, self.noise_std)
        a = torch.rand((self.n_samples, 1, 1), generator=at.generator)
        points = uniform(starts + a * (at.x - starts))
        return GradientPath(points.points, points.weights, starts=starts)

    def accumulate(
        self, run: GradientRun, target: torch.Tensor, point: torch.Tensor, g: torch.Tensor
    ) -> None:
        """Adds the weighted gradients times (input - the point's baseline)."""
        assert run.path.starts is not None
        factor = (run.x - run.path.starts[point]).double()
        run.sum.index_add_(0, target, g * factor * run.path.weights[point].view(-1, 1, 1))
