"""SquareGrad: the mean squared gradient over noisy copies of the input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from explainserve.explain.gradient import NoisyGradient
from explainserve.explain.method import register

if TYPE_CHECKING:
    from explainserve.explain.gradient import GradientRun


@register
@dataclass(frozen=True)
class SquareGrad(NoisyGradient):
    """Mean of the squared gradient over noisy copies (default reduction: L2 norm)."""

    name = "square_grad"

    def accumulate(
        self, run: GradientRun, target: torch.Tensor, point: torch.Tensor, g: torch.Tensor
    ) -> None:
        """Adds the weighted squared gradients."""
        run.sum.index_add_(0, target, g * g * run.path.weights[point].view(-1, 1, 1))
