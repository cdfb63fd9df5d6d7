"""Occlusion: replace each unit alone; score = f(x) - f(x without the unit)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from explainserve import _native
from explainserve.explain.method import register
from explainserve.explain.perturbation import Estimator, PerturbationMethod


@register
@dataclass(frozen=True)
class Occlusion(PerturbationMethod):
    """Replace each unit alone: score = f(x) - f(x without the unit)."""

    name = "occlusion"

    def n_rows(self, n_units: int, n_targets: int) -> int:
        """The unperturbed input and one row per unit."""
        return n_units + 1

    def design(self, n_units: int, seed: int) -> tuple[NDArray[np.uint8], Estimator]:
        """Row 0 unperturbed, row `1 + u` with unit `u` replaced."""
        return _native.occlusion_masks(n_units), lambda _m, out: _native.occlusion_scores(out)
