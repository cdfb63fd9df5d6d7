"""Saliency: the gradient at the input embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from explainserve.explain.gradient import GradientMethod, Reduction
from explainserve.explain.method import register


@register
@dataclass(frozen=True)
class Saliency(GradientMethod):
    """The gradient at the input itself, reduced over the hidden dimension (default: L2 norm, a
    magnitude)."""

    name = "saliency"
    default_reduction: ClassVar[Reduction] = "l2_norm"
