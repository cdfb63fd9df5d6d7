"""What a batch costs, learnt from the batches the worker runs: `seconds ~ a + b * tokens` per
job kind (forward, gradient, activation, head, generate) of one worker, i.e. per model, device
and dtype (a worker owns one model on one device in one dtype).

The fit is Theil-Sen over the last `window` batches: the slope is the median of the slopes of
all pairs of batches of different sizes, the intercept the median of `seconds - b * tokens`.
Medians ignore the outliers a shared machine produces (a batch that waited for the CPU, a
garbage collection) where least squares would follow them. It is written here rather than taken
from a statistics library because it is a dozen lines of numpy on at most a few thousand pairs,
and neither scipy nor scikit-learn is a dependency of the server.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from explainserve.scheduling.jobs import Kind

#: The share of a batch's time its fixed cost (`a`) may take at most: a time bound never cuts
#: batches below `a / b * (1 - MAX_OVERHEAD) / MAX_OVERHEAD` tokens, so that throughput stays
#: within this share of what unbounded batches give.
MAX_OVERHEAD = 0.05


@dataclass(frozen=True)
class Fit:
    """`seconds ~ intercept + slope * tokens`, from `samples` batches."""

    intercept: float
    slope: float
    samples: int

    def seconds(self, tokens: int) -> float:
        """Predicted seconds of a batch of `tokens` tokens."""
        return self.intercept + self.slope * tokens

    def tokens_within(self, seconds: float) -> int:
        """The most tokens a batch may have to take at most `seconds`, but never so few that
        the fixed cost is more than `MAX_OVERHEAD` of the batch's time."""
        if self.slope <= 0:
            return 1 << 62  # no measurable cost per token: nothing to bound
        by_time = (seconds - self.intercept) / self.slope
        floor = self.intercept / self.slope * (1 - MAX_OVERHEAD) / MAX_OVERHEAD
        return max(1, int(max(by_time, floor)))


class CostModel:
    """Per job kind, the batches' measured `(tokens, seconds)` and their fit.

    Written by the worker thread, read by metrics and GetModel (`fits`): a lock keeps the two
    apart. The fit is recomputed every `refit_every` batches, not at every batch.
    """

    def __init__(self, window: int = 64, min_samples: int = 8, refit_every: int = 4) -> None:
        self.window = window
        self.min_samples = min_samples
        self.refit_every = refit_every
        self._samples: dict[Kind, deque[tuple[int, float]]] = {}
        self._fits: dict[Kind, Fit] = {}
        self._since_fit: dict[Kind, int] = {}
        self._lock = threading.Lock()

    def observe(self, kind: Kind, tokens: int, seconds: float) -> None:
        """Records a batch of `tokens` tokens (padding counted) that ran in `seconds`."""
        with self._lock:
            samples = self._samples.setdefault(kind, deque(maxlen=self.window))
            samples.append((tokens, seconds))
            since = self._since_fit.get(kind, self.refit_every - 1) + 1
            if since >= self.refit_every and len(samples) >= self.min_samples:
                self._fits[kind] = theil_sen(samples)
                since = 0
            self._since_fit[kind] = since

    def fit(self, kind: Kind) -> Fit | None:
        """The current fit for `kind`, None until `min_samples` batches were measured."""
        with self._lock:
            return self._fits.get(kind)

    def fits(self) -> dict[Kind, Fit]:
        """Every kind's current fit."""
        with self._lock:
            return dict(self._fits)

    def samples(self, kind: Kind) -> int:
        """Batches of `kind` measured (at most `window` are kept)."""
        with self._lock:
            return len(self._samples.get(kind, ()))


def theil_sen(samples: deque[tuple[int, float]] | list[tuple[int, float]]) -> Fit:
    """The Theil-Sen line through `(tokens, seconds)` pairs (see the module docstring); with
    every batch of one size, the line through the origin and their median."""
    xy = np.asarray(samples, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    apart = dx != 0
    if apart.any():
        slope = float(np.median((y[j] - y[i])[apart] / dx[apart]))
        slope = max(slope, 0.0)
        intercept = max(float(np.median(y - slope * x)), 0.0)
    else:
        slope = float(np.median(y / np.maximum(x, 1.0)))
        intercept = 0.0
    return Fit(intercept=intercept, slope=slope, samples=len(x))
