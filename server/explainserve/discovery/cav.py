"""Supervised concepts: concept activation vectors (Kim et al. 2018, TCAV) learnt from labelled
examples' activations by a linear probe (scikit-learn's logistic regression or linear SVM), one
per label (one against the others; a single vector for two labels), as a concept set.

- The probe's accuracy is measured on held-out examples (a seeded, stratified 20 % split).
- The vector's TCAV score for each class of the model, over a probe set, is the share of inputs
  whose class output increases along it: the sign of ∂f_class/∂C, the gradient of the output
  along the vector (ExplainConcepts with the set inline, gradients alone).
- Significance: the TCAV scores of `runs` vectors learnt on bootstrap resamples of the examples
  are compared with those of `runs` vectors learnt on randomly permuted labels (random concepts),
  per class, by a two-sided t-test (Welch's); its p-value is reported (scipy's `ttest_ind`).
  Kim et al. test against at least 20 random runs, the default here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.sets import Encoder
from explainserve.discovery.base import FitError, Fitted

PROBES = ("logistic", "svm")


def _probe(kind: str, seed: int) -> Any:
    if kind == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(random_state=seed)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed)


def _vectors(model: Any) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The probe's `(K, d)` vectors and `(K,)` biases (a binary probe has one)."""
    return (
        np.ascontiguousarray(model.coef_, dtype=np.float32),
        np.ascontiguousarray(np.atleast_1d(model.intercept_), dtype=np.float32),
    )


def fit_cav(
    x: NDArray[np.float32], labels: list[str], kind: str, seed: int
) -> tuple[Fitted, list[str], dict[str, Any]]:
    """The vectors of `labels` (one per example row of `x`): the fitted set's encoder and
    decoder, the concepts' names, and the probe's held-out accuracy."""
    from sklearn.model_selection import train_test_split

    names = sorted(set(labels))
    if len(names) < 2:
        raise FitError(f"a CAV needs examples of at least two labels, got {names}")
    counts = {n: labels.count(n) for n in names}
    if min(counts.values()) < 5:
        raise FitError(f"each label needs at least 5 examples: {counts}")
    y = np.asarray([names.index(label) for label in labels])
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    held_out = float(_probe(kind, seed).fit(train_x, train_y).score(test_x, test_y))
    model = _probe(kind, seed).fit(x, y)
    weight, bias = _vectors(model)
    concepts = names[1:] if len(names) == 2 else names
    fitted = Fitted(
        Encoder("linear", weight=weight, bias=bias),
        # Each vector decodes along itself, scaled so that encoding it back gives its value.
        np.ascontiguousarray(weight / np.sum(weight**2, axis=1, keepdims=True), dtype=np.float32),
        None,
        {"algorithm": f"CAV: {type(model).__name__}", "held_out_accuracy": held_out},
    )
    return fitted, concepts, {"held_out_accuracy": held_out, "examples": counts}


def tcav_scores(gradients: list[NDArray[np.float32]]) -> NDArray[np.float64]:
    """`(classes, K)`: the share of probe inputs whose gradient along each vector is positive,
    from one `(classes, K)` array of gradients per input."""
    scores: NDArray[np.float64] = (np.stack(gradients) > 0).mean(axis=0)
    return scores


def significance(
    x: NDArray[np.float32],
    labels: list[str],
    kind: str,
    seed: int,
    runs: int,
    score: Callable[[Fitted], NDArray[np.float64]],
) -> dict[str, Any]:
    """TCAV scores of `runs` bootstrap vectors against `runs` random-label vectors, per class
    and concept: their means and the two-sided t-test's p-values."""
    from scipy.stats import ttest_ind

    rng = np.random.default_rng(seed)
    concept, random = [], []
    for run in range(runs):
        pick = rng.integers(0, len(labels), len(labels))
        resampled = [labels[i] for i in pick]
        if len(set(resampled)) < 2:
            continue
        fitted, _, _ = fit_cav(x[pick], resampled, kind, seed + run)
        concept.append(score(fitted))
        shuffled = [labels[i] for i in rng.permutation(len(labels))]
        fitted, _, _ = fit_cav(x, shuffled, kind, seed + run)
        random.append(score(fitted))
    a, b = np.stack(concept), np.stack(random)  # (runs, classes, K)
    with warnings.catch_warnings():
        # Scores that are all equal (every run's 1.0) make scipy warn about the variance.
        warnings.simplefilter("ignore", RuntimeWarning)
        p = ttest_ind(a, b, axis=0, equal_var=False).pvalue
    return {
        "runs": len(concept),
        "tcav_mean": a.mean(axis=0).tolist(),
        "random_tcav_mean": b.mean(axis=0).tolist(),
        "p_value": np.nan_to_num(p, nan=1.0).tolist(),
    }
