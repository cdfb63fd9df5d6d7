"""KernelSHAP: Shapley values by constrained weighted regression on coalitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from explainserve import _native
from explainserve.explain.method import register
from explainserve.explain.perturbation import Estimator, PerturbationMethod


@register
@dataclass(frozen=True)
class KernelShap(PerturbationMethod):
    """Shapley values by constrained weighted regression (exact when every coalition fits)."""

    name = "kernel_shap"

    n_perturbations: int = 256

    def validate(self) -> None:
        """At least 2 coalitions."""
        self.check_at_least("n_perturbations", 2)

    def n_rows(self, n_units: int, n_targets: int) -> int:
        """Every coalition when there are at most `n_perturbations`, else that many."""
        if n_units <= 30 and 2**n_units <= self.n_perturbations:
            return int(2**n_units)
        return self.n_perturbations

    def design(self, n_units: int, seed: int) -> tuple[NDArray[np.uint8], Estimator]:
        """Coalitions drawn by the native core with their kernel weights."""
        masks, weights = _native.kernel_shap_masks(self.n_perturbations, n_units, seed)
        return masks, lambda m, out: _native.kernel_shap_scores(m, weights, out)
