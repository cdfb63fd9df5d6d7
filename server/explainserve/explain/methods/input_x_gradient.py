"""InputxGradient: the gradient times the input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from explainserve.explain.gradient import GradientMethod, Reduction
from explainserve.explain.method import register

if TYPE_CHECKING:
    from explainserve.explain.gradient import GradientRun


@register
@dataclass(frozen=True)
class InputXGradient(GradientMethod):
    """Gradient x input, at the input itself (default reduction: signed sum)."""

    name = "input_x_gradient"
    default_reduction: ClassVar[Reduction] = "signed_sum"

    def attribution(self, run: GradientRun) -> torch.Tensor:
        """The gradient times the input."""
        return run.sum * run.x.double()
