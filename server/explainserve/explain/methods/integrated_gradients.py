"""IntegratedGradients: (input - baseline) x the path integral of the gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch

from explainserve.explain.gradient import (
    GradientMethod,
    GradientPath,
    PathInput,
    Reduction,
    WithBaseline,
    path_points,
)
from explainserve.explain.method import register

if TYPE_CHECKING:
    from explainserve.explain.gradient import GradientRun

IntegrationRule = Literal[
    "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre"
]


@register
@dataclass(frozen=True)
class IntegratedGradients(WithBaseline, GradientMethod):
    """(input - baseline) x the integral of the gradient along the straight line from the
    baseline, by a Riemann or Gauss-Legendre rule; with the signed sum the scores of all tokens
    add up to f(input) - f(baseline) (completeness)."""

    name = "integrated_gradients"
    default_reduction: ClassVar[Reduction] = "signed_sum"

    n_steps: int = 64
    rule: IntegrationRule = "gauss_legendre"

    def validate(self) -> None:
        """At least one step."""
        self.check_at_least("n_steps", 1)

    def rows_per_target(self) -> int:
        """One row per step."""
        return self.n_steps

    def path(self, at: PathInput) -> GradientPath:
        """The rule's points on the line from the baseline to the input, with its weights."""
        alphas, weights = path_points(self.n_steps, self.rule)
        a = torch.from_numpy(alphas).float().view(-1, 1, 1)
        points = at.baseline + a * (at.x - at.baseline)
        return GradientPath(points, torch.from_numpy(weights).double())

    def attribution(self, run: GradientRun) -> torch.Tensor:
        """(input - baseline) x the integral."""
        return (run.x.double() - run.baseline.double()) * run.sum
