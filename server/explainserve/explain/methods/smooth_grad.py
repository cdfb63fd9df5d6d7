"""SmoothGrad: the mean gradient over noisy copies of the input."""

from __future__ import annotations

from dataclasses import dataclass

from explainserve.explain.gradient import NoisyGradient
from explainserve.explain.method import register


@register
@dataclass(frozen=True)
class SmoothGrad(NoisyGradient):
    """Mean of the gradient over noisy copies of the input (default reduction: L2 norm)."""

    name = "smooth_grad"
