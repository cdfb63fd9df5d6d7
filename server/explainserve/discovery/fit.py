"""Fitting a concept dictionary on an activation store (`discovery.store`), seeded and
reproducible, in bounded memory.

- `pca`: scikit-learn's `PCA` (exact) when the rows fit in `max_memory`, else `IncrementalPCA`
  over the shards (an approximation; the command says so);
- `ica`, `svd`: scikit-learn's `FastICA`, `TruncatedSVD`, all rows in memory (refused beyond the
  limit before anything is read);
- `nmf`: scikit-learn's `NMF` in memory, else `MiniBatchNMF` over the shards;
- `semi-nmf`: Ding, Li and Jordan's multiplicative updates in torch (no maintained library
  implements Semi-NMF), in memory;
- `kmeans`: scikit-learn's `MiniBatchKMeans` over the shards;
- `relu-sae`, `topk-sae`, `jumprelu-sae`: Overcomplete's SAEs trained in torch over the shards
  (`discovery.sae`).

NMF needs non-negative activations: ReLU them first (`nonneg="relu"`, Interpreto's
`force_relu`) or shift them by each feature's minimum (`nonneg="shift"`: the set's decoder bias,
which its NNLS encoder subtracts). k-means concepts are the cluster centres, encoded by the
non-negative least-squares mix of centres that reconstructs a row (deterministic; a row near one
centre activates it alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.sets import Array, Encoder
from explainserve.discovery.base import FitError, FitOptions, Fitted, Rows

METHODS = (
    "pca",
    "ica",
    "svd",
    "nmf",
    "semi-nmf",
    "kmeans",
    "relu-sae",
    "topk-sae",
    "jumprelu-sae",
)
#: Methods that need every row in memory at once.
IN_MEMORY = ("ica", "svd", "semi-nmf")


def _all(rows: Rows) -> NDArray[np.float32]:
    return np.concatenate(list(rows()))


def _f32(x: Any) -> Array:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def fit(
    rows: Rows, n_rows: int, features: int, options: FitOptions, say: Callable[[str], None]
) -> Fitted:
    """Fits `options.method` on `rows` (`n_rows` rows of `features`); `say` reports what runs."""
    method, k = options.method, options.concepts
    if method not in METHODS:
        raise FitError(f"unknown method '{method}': one of {', '.join(METHODS)}")
    if k < 1:
        raise FitError(f"--concepts must be at least 1, got {k}")
    if k > n_rows:
        raise FitError(f"--concepts {k} is more than the {n_rows} activation rows: lower K")
    if method in ("pca", "ica", "svd") and k > features:
        raise FitError(
            f"--concepts {k} is more than the {features} features: {method} gives at most that many"
        )
    size = n_rows * features * 4
    fits = size <= options.max_memory
    if method in IN_MEMORY and not fits:
        raise FitError(
            f"{method} needs all {n_rows} rows in memory ({size / 2**30:.2f} GiB > --max-memory "
            f"{options.max_memory / 2**30:.2f} GiB): raise --max-memory, or use pca, nmf, kmeans "
            "or an SAE, which stream"
        )
    seed = options.seed
    if method == "pca":
        return _pca(rows, k, seed, fits, say)
    if method == "ica":
        from sklearn.decomposition import FastICA

        ica = FastICA(k, random_state=seed, max_iter=1000).fit(_all(rows))
        return Fitted(
            Encoder("linear", weight=_f32(ica.components_), center=_f32(ica.mean_)),
            _f32(ica.mixing_.T),
            _f32(ica.mean_),
            {"algorithm": "sklearn.decomposition.FastICA", "iterations": int(ica.n_iter_)},
        )
    if method == "svd":
        from sklearn.decomposition import TruncatedSVD

        svd = TruncatedSVD(k, random_state=seed).fit(_all(rows))
        return Fitted(
            Encoder("linear", weight=_f32(svd.components_)),
            _f32(svd.components_),
            None,
            {"algorithm": "sklearn.decomposition.TruncatedSVD"},
        )
    if method == "nmf":
        return _nmf(rows, k, seed, fits, options.nonneg, say)
    if method == "semi-nmf":
        return _semi_nmf(_all(rows), k, seed)
    if method == "kmeans":
        return _kmeans(rows, k, seed)
    from explainserve.discovery.sae import train_sae

    return train_sae(rows, features, method.removesuffix("-sae"), options, say)


def _pca(rows: Rows, k: int, seed: int, fits: bool, say: Callable[[str], None]) -> Fitted:
    if fits:
        from sklearn.decomposition import PCA

        pca = PCA(k, random_state=seed).fit(_all(rows))
        algorithm = "sklearn.decomposition.PCA"
    else:
        from sklearn.decomposition import IncrementalPCA

        say(
            "the rows do not fit in --max-memory: IncrementalPCA over the shards (an approximation)"
        )
        pca = IncrementalPCA(k)
        pending: list[NDArray[np.float32]] = []
        held = 0
        for block in rows():
            pending.append(block)
            held += len(block)
            if held >= max(k, 1024):  # each partial fit needs at least K rows
                pca.partial_fit(np.concatenate(pending))
                pending, held = [], 0
        if pending and held >= k:
            pca.partial_fit(np.concatenate(pending))
        algorithm = "sklearn.decomposition.IncrementalPCA"
    components, mean = _f32(pca.components_), _f32(pca.mean_)
    return Fitted(
        Encoder("linear", weight=components, center=mean),
        components,
        mean,
        {
            "algorithm": algorithm,
            "explained_variance_ratio": float(np.sum(pca.explained_variance_ratio_)),
        },
    )


def _nonneg_shift(rows: Rows, nonneg: str | None) -> tuple[NDArray[np.float32] | None, bool]:
    """NMF's input: (the shift to subtract, whether a ReLU comes first); refused for signed
    rows without a choice."""
    low = None
    for block in rows():
        m = block.min(axis=0)
        low = m if low is None else np.minimum(low, m)
    assert low is not None
    if float(low.min()) >= 0:
        return None, False
    if nonneg == "relu":
        return None, True
    if nonneg == "shift":
        return _f32(low), False
    raise FitError(
        f"NMF needs non-negative activations; these go down to {float(low.min()):.3g}: add "
        "--nonneg relu (a ReLU first, as Interpreto's force_relu) or --nonneg shift (each "
        "feature minus its minimum, kept as the set's decoder bias)"
    )


def _nmf(
    rows: Rows, k: int, seed: int, fits: bool, nonneg: str | None, say: Callable[[str], None]
) -> Fitted:
    shift, relu = _nonneg_shift(rows, nonneg)

    def prepared() -> Iterator[NDArray[np.float32]]:
        for block in rows():
            x = np.maximum(block, 0) if relu else block
            yield x - shift if shift is not None else x

    if fits:
        from sklearn.decomposition import NMF

        model = NMF(k, init="nndsvda", random_state=seed, max_iter=500).fit(
            np.concatenate(list(prepared()))
        )
        algorithm = "sklearn.decomposition.NMF"
    else:
        from sklearn.decomposition import MiniBatchNMF

        say("the rows do not fit in --max-memory: MiniBatchNMF over the shards")
        model = MiniBatchNMF(k, random_state=seed)
        for _ in range(3):
            for block in prepared():
                model.partial_fit(block)
        algorithm = "sklearn.decomposition.MiniBatchNMF"
    notes: dict[str, Any] = {"algorithm": algorithm}
    if relu:
        notes["nonneg"] = "relu"
    if shift is not None:
        notes["nonneg"] = "shift"
    return Fitted(Encoder("nnls", relu_input=relu), _f32(model.components_), shift, notes)


def _semi_nmf(x: NDArray[np.float32], k: int, seed: int, iterations: int = 300) -> Fitted:
    """Semi-NMF, X ≈ Z D with Z >= 0 and D free (Ding, Li and Jordan 2010): D by least squares,
    Z by their multiplicative update; started from a seeded k-means++ partition's centres."""
    import torch
    from sklearn.cluster import kmeans_plusplus

    data = torch.from_numpy(x).double()
    centres, _ = kmeans_plusplus(x.astype(np.float64), k, random_state=seed)
    d = torch.from_numpy(centres)
    z = torch.clamp(data @ torch.linalg.pinv(d), min=0) + 0.2

    def pos(a: torch.Tensor) -> torch.Tensor:
        return (a.abs() + a) / 2

    def neg(a: torch.Tensor) -> torch.Tensor:
        return (a.abs() - a) / 2

    for _ in range(iterations):
        d = torch.linalg.lstsq(z, data).solution
        xd, dd = data @ d.T, d @ d.T
        z = z * torch.sqrt((pos(xd) + z @ neg(dd)) / (neg(xd) + z @ pos(dd)).clamp_min(1e-12))
    d = torch.linalg.lstsq(z, data).solution
    error = float(torch.linalg.norm(data - z @ d) / torch.linalg.norm(data))
    return Fitted(
        Encoder("nnls"),
        _f32(d.numpy()),
        None,
        {
            "algorithm": "semi-nmf (multiplicative updates)",
            "iterations": iterations,
            "fit_error": error,
        },
    )


def _kmeans(rows: Rows, k: int, seed: int) -> Fitted:
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(k, random_state=seed, n_init=3)
    for _ in range(3):
        for block in rows():
            if len(block) >= k:
                model.partial_fit(block)
    if not hasattr(model, "cluster_centers_"):
        raise FitError(f"every shard has fewer rows than --concepts {k}: lower K")
    return Fitted(
        Encoder("nnls"),
        _f32(model.cluster_centers_),
        None,
        {"algorithm": "sklearn.cluster.MiniBatchKMeans, NNLS encoding against the centres"},
    )
