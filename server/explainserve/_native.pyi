"""Type stubs of the Rust extension `explainserve._native` (see docs/native.md for semantics)."""

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "EmptyUnitsError",
    "IdOutOfRangeError",
    "InvalidParameterError",
    "NativeError",
    "ShapeError",
    "TooLargeError",
    "UnknownStrategyError",
    "__version__",
    "aggregate",
    "bernoulli_masks",
    "expand_ids",
    "group_units",
    "kernel_shap_masks",
    "kernel_shap_scores",
    "lime_scores",
    "occlusion_masks",
    "occlusion_scores",
    "qmc_points",
    "sentence_spans",
    "sobol_indices",
    "sobol_masks",
]

__version__: str

class NativeError(ValueError):
    """Base class of every error raised by the native core."""

class ShapeError(NativeError):
    """Arrays whose shapes or lengths do not fit together."""

class EmptyUnitsError(NativeError):
    """A call that needs at least one unit got none."""

class IdOutOfRangeError(NativeError):
    """An id (unit, token, offset) outside its valid range."""

class UnknownStrategyError(NativeError):
    """An unknown strategy, sampler, distance or granularity name."""

class InvalidParameterError(NativeError):
    """A numeric parameter outside its domain."""

class TooLargeError(NativeError):
    """An output too large to allocate (more memory than the process can get)."""

def occlusion_masks(n_units: int) -> NDArray[np.uint8]:
    """Occlusion masks `(n_units + 1, n_units)`: the zero row, then the identity."""

def bernoulli_masks(n_rows: int, n_units: int, prob: float, seed: int) -> NDArray[np.uint8]:
    """LIME masks `(n_rows, n_units)`: each unit replaced with probability `prob`."""

def kernel_shap_masks(
    n_rows: int, n_units: int, seed: int
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """KernelSHAP design: masks `(p, n_units)` and row weights `(p,)`."""

def sobol_masks(n_units: int, n_points: int, sampler: str, seed: int) -> NDArray[np.uint8]:
    """Sobol masks `((n_units + 2) * n_points, n_units)`: rows `[A; B; C_1 .. C_g]`."""

def qmc_points(n_points: int, dim: int, sampler: str, seed: int) -> NDArray[np.float64]:
    """`(n_points, dim)` points in [0, 1) of the design `sampler`."""

def group_units(
    granularity: str,
    special_mask: NDArray[np.bool_],
    offsets: NDArray[np.int64],
    word_ids: NDArray[np.int64] | None,
    text: str,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Token -> unit map `(n,)` (-1 = no unit) and unit character spans `(u, 2)`."""

def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentence spans of `text` as character indices, trimmed of whitespace."""

def expand_ids(
    masks: NDArray[np.uint8],
    token_to_unit: NDArray[np.int64],
    input_ids: NDArray[np.int64],
    replacement_id: int,
) -> NDArray[np.int64]:
    """Perturbed id rows `(p, n)` from unit masks `(p, g)`."""

def aggregate(
    scores: NDArray[np.float32], token_to_unit: NDArray[np.int64], n_units: int, strategy: str
) -> NDArray[np.float32]:
    """Unit scores `(r, n_units)` from token scores `(r, n)`."""

def occlusion_scores(outputs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Occlusion deltas `(t, g)` from outputs `(g + 1, t)`."""

def lime_scores(
    masks: NDArray[np.uint8],
    outputs: NDArray[np.float64],
    distance: str = "cosine",
    kernel_width: float | None = None,
    alpha: float = 1.0,
) -> NDArray[np.float64]:
    """LIME coefficients `(t, g)`."""

def kernel_shap_scores(
    masks: NDArray[np.uint8], weights: NDArray[np.float64], outputs: NDArray[np.float64]
) -> NDArray[np.float64]:
    """KernelSHAP values `(t, g)` under the efficiency constraint."""

def sobol_indices(
    outputs: NDArray[np.float64], n_units: int, n_points: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """First- and total-order Sobol indices, each `(t, g)`."""
