"""Sobol indices of the units (Fel et al. 2021), by quasi-Monte Carlo designs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from explainserve import _native
from explainserve.explain.method import register
from explainserve.explain.perturbation import Estimator, PerturbationMethod


@register
@dataclass(frozen=True)
class Sobol(PerturbationMethod):
    """Sobol indices (Fel et al. 2021)."""

    name = "sobol"

    n_points: int = 32
    order: Literal["first", "total"] = "total"
    sampler: Literal["sobol", "halton", "latin_hypercube"] = "sobol"

    def validate(self) -> None:
        """At least one design point."""
        self.check_at_least("n_points", 1)

    def n_rows(self, n_units: int, n_targets: int) -> int:
        """`(units + 2) x n_points`."""
        return (n_units + 2) * self.n_points

    def design(self, n_units: int, seed: int) -> tuple[NDArray[np.uint8], Estimator]:
        """The native design; the estimator keeps the first-order or total indices."""
        k = self.n_points
        masks = _native.sobol_masks(n_units, k, self.sampler, seed)
        first_order = self.order == "first"

        def sobol(_m: NDArray[np.uint8], out: NDArray[np.float64]) -> NDArray[np.float64]:
            first, total = _native.sobol_indices(out, n_units, k)
            return first if first_order else total

        return masks, sobol
