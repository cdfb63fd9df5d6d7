"""VarGrad: the variance of the gradient over noisy copies of the input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from explainserve.explain.gradient import NoisyGradient
from explainserve.explain.method import register

if TYPE_CHECKING:
    from explainserve.explain.gradient import GradientRun


@register
@dataclass(frozen=True)
class VarGrad(NoisyGradient):
    """Variance of the gradient over noisy copies (default reduction: L2 norm)."""

    name = "var_grad"
    needs_squares: ClassVar[bool] = True

    def accumulate(
        self, run: GradientRun, target: torch.Tensor, point: torch.Tensor, g: torch.Tensor
    ) -> None:
        """Adds the weighted gradients and their squares."""
        w = run.path.weights[point].view(-1, 1, 1)
        run.sum.index_add_(0, target, g * w)
        run.sum_sq.index_add_(0, target, g * g * w)

    def attribution(self, run: GradientRun) -> torch.Tensor:
        """E[g^2] - E[g]^2, clamped at 0 (rounding)."""
        return (run.sum_sq - run.sum * run.sum).clamp(min=0.0)
