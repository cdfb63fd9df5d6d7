"""What a batch costs, learnt from the batches the worker runs: `seconds ~ a + b * tokens` per
job kind (forward, gradient, activation, head, generate) of one worker, i.e. per model, device
and dtype (a worker owns one model on one device in one dtype).

The fit is Theil-Sen over the last `window` batches: the slope is the median of the slopes of
all pairs of batches of sizes at least `MIN_APART` apart, the intercept the median of
`seconds - b * tokens`. Medians ignore the outliers a shared machine produces (a batch that
waited for the CPU, a garbage collection) where least squares would follow them. It is written
here rather than taken from a statistics library because it is a dozen lines of numpy on at
most a few thousand pairs, and neither scipy nor scikit-learn is a dependency of the server.

The fit bounds a batch's time; what batch size is *fastest* per token is another measurement
(`ThroughputModel`): on a CPU, batches of a few thousand tokens whose activations stay in the
caches run more tokens per second than batches at the memory bound; on an accelerator larger
ones do. It is measured, never guessed: a short calibration at warm-up
(`scheduling.calibration`), then every batch's timing.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from explainserve.scheduling.jobs import Kind

#: The share of a batch's time its fixed cost (`a`) may take at most: a time bound never cuts
#: batches below `a / b * (1 - MAX_OVERHEAD) / MAX_OVERHEAD` tokens. At one half that is `a / b`
#: tokens, where a batch costs twice its fixed cost and each token twice its marginal cost:
#: below it, a smaller batch is hardly shorter (the fixed cost stays) while each token costs
#: ever more, so the time bound stops there. It used to be 5 %, which kept throughput within 5 %
#: of unbounded batches but overrode the bound wherever the fixed cost is large: on a 2-core CPU
#: a MiniLM forward costs ~15-25 ms + ~0.23 ms per token (the weights are read once per batch),
#: so 5 % meant batches of ~2,000 tokens and ~0.5 s, five times `max_batch_ms`, and a small
#: request waited for them (bench/RESULTS.md, "Latency under mixed traffic"). The bound is the
#: latency promise; what it costs in throughput is measured by bench/concurrency.py.
MAX_OVERHEAD = 0.5

#: Theil-Sen takes the slopes of pairs of batches whose sizes differ by at least this share of
#: the larger one: batches cut at one cap differ by a few tokens, and the slope between two of
#: them is mostly their noise. Measured on batches 85 % of which are within 15 % of one size and
#: 15 % noise in their times: the median slope error falls from 8 % to 4 % (90th percentile
#: from 25 % to 12 %); on sizes spread evenly it does not change.
MIN_APART = 0.25


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
        the fixed cost is more than `MAX_OVERHEAD` of the batch's time (when the fixed cost
        alone takes about `seconds`, the bound cannot be kept and this floor decides)."""
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
                self._fits[kind] = theil_sen(samples, self._fits.get(kind))
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


def theil_sen(
    samples: deque[tuple[int, float]] | list[tuple[int, float]], previous: Fit | None = None
) -> Fit:
    """The Theil-Sen line through `(tokens, seconds)` pairs (see the module docstring).

    With every batch of about one size (no pair `MIN_APART` apart) the slope cannot be
    measured: the `previous` fit's slope stays and only the intercept is refitted (the machine's
    speed may have changed). Without a previous fit: the slope of any pairs of different sizes,
    or with every batch of one size, the line through the origin and their median. Refitting
    the slope from sizes a few tokens apart, or through the origin, would fold the fixed cost
    into the slope: the time cap would shrink, batches would stay of one size and the fit could
    never recover (a window of 64 one-row batches on the 2-core CPU went from 0.24 to 0.45 ms
    per token).
    """
    xy = np.asarray(samples, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    apart = np.abs(dx) >= MIN_APART * np.maximum(x[i], x[j])
    if not apart.any() and previous is not None:
        intercept = max(float(np.median(y - previous.slope * x)), 0.0)
        return Fit(intercept=intercept, slope=previous.slope, samples=len(x))
    if not apart.any():  # every batch of about one size: any pair of different sizes
        apart = dx != 0
    if apart.any():
        slope = float(np.median((y[j] - y[i])[apart] / dx[apart]))
        slope = max(slope, 0.0)
        intercept = max(float(np.median(y - slope * x)), 0.0)
    else:
        slope = float(np.median(y / np.maximum(x, 1.0)))
        intercept = 0.0
    return Fit(intercept=intercept, slope=slope, samples=len(x))


class RecentMedian:
    """The median of the last `window` values recorded, and how many were recorded in all: a
    measured rate that a slow first call or a burst of load on the machine does not decide for
    long (`ThroughputModel`'s size classes, `prefix.PassCosts`' paths). Not locked: its owner's
    lock, where it has one, covers it."""

    def __init__(self, window: int) -> None:
        self._last: deque[float] = deque(maxlen=window)
        #: Values recorded in all (the window keeps the last `window`).
        self.count = 0

    def add(self, value: float) -> None:
        """Records `value`; the oldest kept one leaves a full window."""
        self._last.append(value)
        self.count += 1

    def __len__(self) -> int:
        """Values kept: at most `window`."""
        return len(self._last)

    def median(self) -> float:
        """The median of the values kept (at least one)."""
        return float(np.median(self._last))


#: Measured throughputs kept per size class (their median is the class's rate).
RATE_WINDOW = 5
#: A size class replaces the chosen one only when its rate is this much higher (hysteresis).
SWITCH_MARGIN = 0.05
#: One batch in this many tries a neighbour of the chosen size class (online refinement).
EXPLORE_EVERY = 8


def size_class(tokens: int) -> int:
    """The doubling size class of a batch of `tokens` tokens: the nearest power of two's
    exponent (a batch cut at the cap `2 ** c`, filled to 71-141 % of it, is of class `c`)."""
    return max(0, round(math.log2(max(tokens, 1))))


@dataclass(frozen=True)
class Rate:
    """The measured throughput of batches of about `tokens` tokens (one size class): the
    median of the last `RATE_WINDOW` batches' tokens per second, from `batches` batches."""

    tokens: int
    tokens_per_second: float
    batches: int


class ThroughputModel:
    """Per job kind and per doubling size class of batch tokens (padding counted), the median
    of the last `RATE_WINDOW` measured throughputs (tokens per second); the class of the best
    median is the kind's throughput-optimal batch size (`cap`).

    The chosen class changes only when another one's rate is `SWITCH_MARGIN` above it, so the
    batch size does not move with every noisy measurement; and one batch in `EXPLORE_EVERY`
    is cut at a neighbour class (`next_cap`), alternately below and above, so the rates of the
    sizes around the optimum stay current and the choice follows the machine (another process
    taking the cache, a device warming up). Written by the worker thread, read by metrics and
    GetModel: a lock keeps them apart.
    """

    def __init__(self) -> None:
        self._rates: dict[Kind, dict[int, RecentMedian]] = {}
        self._best: dict[Kind, int] = {}
        self._taken: dict[Kind, int] = {}
        self._lock = threading.Lock()

    def observe(self, kind: Kind, tokens: int, seconds: float, cap: int | None = None) -> None:
        """Records a batch of `tokens` tokens (padding counted) that ran in `seconds`: in the
        size class of `cap` if the batch was cut at that cap (another row would not have fitted
        under it), else of its tokens.

        The cap is what `next_cap` chooses, so a cut batch is a measurement of the cap, not of
        its token count: rows of 129 tokens under a cap of 256 make one-row batches of 129
        tokens (the class below). Counted by their tokens, every batch the cap 256 cuts would
        land in the class of 128 and the class of 256 would keep whatever rate it had, forever
        (exploring it cuts one-row batches again): a slow moment during calibration then pins
        the batches at one row (seen on the 2-core CPU: 480 one-row batches in a row).
        """
        if tokens <= 0 or seconds <= 0:
            return
        c = size_class(cap if cap is not None else tokens)
        with self._lock:
            rate = self._rates.setdefault(kind, {}).setdefault(c, RecentMedian(RATE_WINDOW))
            rate.add(tokens / seconds)
            self._choose(kind)

    def _choose(self, kind: Kind) -> None:
        medians = {c: rate.median() for c, rate in self._rates[kind].items()}
        best = max(medians, key=lambda c: medians[c])
        current = self._best.get(kind)
        if current is None or medians[best] > medians[current] * (1 + SWITCH_MARGIN):
            self._best[kind] = best

    def cap(self, kind: Kind) -> int | None:
        """The tokens of the best measured size class of `kind`, None before any batch."""
        with self._lock:
            best = self._best.get(kind)
        return None if best is None else 1 << best

    def next_cap(self, kind: Kind) -> int | None:
        """The cap of `kind`'s next batch: `cap`, or every `EXPLORE_EVERY`-th batch a
        neighbour class's (alternately half and twice it). Worker thread only."""
        with self._lock:
            best = self._best.get(kind)
            if best is None:
                return None
            taken = self._taken.get(kind, 0) + 1
            self._taken[kind] = taken
        if taken % EXPLORE_EVERY:
            return 1 << best
        up = (taken // EXPLORE_EVERY) % 2 == 0
        return 1 << (best + 1 if up or best == 0 else best - 1)

    def rates(self) -> dict[Kind, list[Rate]]:
        """Per kind, the rate of each size class measured, smallest first."""
        with self._lock:
            return {
                kind: [
                    Rate(1 << c, rate.median(), rate.count) for c, rate in sorted(classes.items())
                ]
                for kind, classes in self._rates.items()
            }

    def caps(self) -> dict[Kind, int]:
        """Per kind, the tokens of the best measured size class."""
        with self._lock:
            return {kind: 1 << c for kind, c in self._best.items()}
