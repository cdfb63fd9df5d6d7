"""LIME: a weighted ridge regression of the outputs on random unit masks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from explainserve import _native
from explainserve.errors import InvalidArgument
from explainserve.explain.method import register
from explainserve.explain.perturbation import Estimator, PerturbationMethod


@register
@dataclass(frozen=True)
class Lime(PerturbationMethod):
    """Weighted ridge regression on random unit masks."""

    name = "lime"

    n_perturbations: int = 256
    perturb_probability: float = 0.5
    distance: Literal["cosine", "hamming", "euclidean"] = "cosine"
    #: None: 0.75 * sqrt(number of units).
    kernel_width: float | None = None
    alpha: float = 1.0

    def validate(self) -> None:
        """At least 2 perturbations, a probability in (0, 1), a positive kernel width."""
        self.check_at_least("n_perturbations", 2)
        p = self.perturb_probability
        if not (math.isfinite(p) and 0.0 < p < 1.0):
            raise InvalidArgument(
                f"lime.perturb_probability must be in (0, 1), got {p}",
                field="lime.perturb_probability",
            )
        if self.kernel_width is not None:
            self.check_finite("kernel_width")
        self.check_finite("alpha", allow_zero=True)

    def n_rows(self, n_units: int, n_targets: int) -> int:
        """`n_perturbations`, the unperturbed input included."""
        return self.n_perturbations

    def design(self, n_units: int, seed: int) -> tuple[NDArray[np.uint8], Estimator]:
        """Row 0 is the unperturbed input, as in LIME; the rest are Bernoulli draws."""
        random_rows = _native.bernoulli_masks(
            self.n_perturbations - 1, n_units, self.perturb_probability, seed
        )
        masks = np.vstack([np.zeros((1, n_units), dtype=np.uint8), random_rows])

        def lime(m: NDArray[np.uint8], out: NDArray[np.float64]) -> NDArray[np.float64]:
            return _native.lime_scores(m, out, self.distance, self.kernel_width, self.alpha)

        return masks, lime
