"""The fitting methods on activation stores of known rows: scikit-learn's own results where they
run in memory (PCA exactly), the streaming ones beyond --max-memory (said so), seeds that
reproduce bit for bit, refusals before anything runs, and the interpretation and evaluation
numbers against direct computations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from scipy.optimize import nnls
from sklearn.decomposition import PCA, FastICA

from explainserve.concepts.codec import Codec
from explainserve.concepts.sets import ConceptSet, ModelBinding, TopExample
from explainserve.discovery import evaluate, interpret
from explainserve.discovery.base import FitError, FitOptions
from explainserve.discovery.cav import fit_cav, tcav_scores
from explainserve.discovery.fit import fit
from explainserve.discovery.pipeline import unique_labels
from explainserve.discovery.store import Manifest, Shard, Store


def make_store(tmp_path: Path, x: NDArray[np.float32], shard_size: int = 50) -> Store:
    """A store of rows `x`, one row per text."""
    manifest = Manifest(
        model="m",
        split_point="classifier:input",
        granularity="cls",
        aggregation="mean",
        dataset="synthetic",
        fingerprint="0",
        texts=len(x),
        shard_size=shard_size,
        features=x.shape[1],
        labels=("a", "b"),
    )
    store = Store.create(tmp_path / "store", manifest)
    for i, start in enumerate(range(0, len(x), shard_size)):
        block = x[start : start + shard_size]
        store.write(
            Shard(
                index=i,
                first=start,
                activations=block,
                row_offsets=np.arange(len(block) + 1, dtype=np.int64),
                logits=np.zeros((len(block), 2), np.float32),
                units=None,
            )
        )
    return store


def activations(
    n: int = 400, d: int = 16, seed: int = 0, shift: float = 0.0
) -> NDArray[np.float32]:
    """Rows with a few strong directions, as head-input activations have."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(4, d))
    codes = np.abs(rng.normal(size=(n, 4))) * [3.0, 2.0, 1.0, 0.5]
    return (codes @ basis + 0.05 * rng.normal(size=(n, d)) + shift).astype(np.float32)


def rows_of(store: Store):  # type: ignore[no-untyped-def]
    def rows() -> Iterator[NDArray[np.float32]]:
        for shard in store.shards():
            yield shard.activations

    return rows


def run(store: Store, **options: object):  # type: ignore[no-untyped-def]
    said: list[str] = []
    fitted = fit(
        rows_of(store),
        store.rows(),
        store.manifest.features,
        FitOptions(**options),  # type: ignore[arg-type]
        said.append,
    )
    return fitted, said


def as_set(fitted) -> ConceptSet:  # type: ignore[no-untyped-def]
    return ConceptSet(
        model=ModelBinding(name="m"),
        split_point="classifier:input",
        encoder=fitted.encoder,
        decoder_weight=fitted.decoder_weight,
        decoder_bias=fitted.decoder_bias,
    ).check("test")


def test_pca_in_memory_is_scikit_learns_exactly(tmp_path: Path) -> None:
    x = activations()
    store = make_store(tmp_path, x)
    fitted, said = run(store, method="pca", concepts=3, seed=5)
    reference = PCA(3, random_state=5).fit(x)
    np.testing.assert_array_equal(fitted.decoder_weight, reference.components_.astype(np.float32))
    np.testing.assert_array_equal(fitted.decoder_bias, reference.mean_.astype(np.float32))
    assert fitted.notes["algorithm"] == "sklearn.decomposition.PCA"
    assert said == []
    codes = Codec(as_set(fitted), torch.device("cpu")).encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(codes, reference.transform(x), rtol=1e-4, atol=1e-4)


def test_pca_beyond_the_memory_limit_streams_and_says_so(tmp_path: Path) -> None:
    x = activations(2000)
    store = make_store(tmp_path, x, shard_size=500)
    fitted, said = run(store, method="pca", concepts=3, max_memory=10_000)
    assert fitted.notes["algorithm"] == "sklearn.decomposition.IncrementalPCA"
    assert any("IncrementalPCA" in s for s in said)
    exact = PCA(3).fit(x).components_
    cosines = np.abs(np.sum(fitted.decoder_weight * exact, axis=1))
    assert (cosines > 0.99).all()  # the same directions, up to sign


@pytest.mark.parametrize(
    "method",
    ["ica", "svd", "nmf", "semi-nmf", "kmeans", "relu-sae", "topk-sae", "jumprelu-sae"],
)
def test_every_method_fits_reconstructs_and_reproduces_its_seed(
    tmp_path: Path, method: str
) -> None:
    x = activations()
    if method == "nmf":
        x = np.abs(x)  # NMF's input: non-negative activations
    store = make_store(tmp_path, x)
    options = {"method": method, "concepts": 4, "seed": 3, "epochs": 30}
    first, _ = run(store, **options)
    again, _ = run(store, **options)
    np.testing.assert_array_equal(first.decoder_weight, again.decoder_weight)
    cs = as_set(first)
    metrics = evaluate.reconstruction(Codec(cs, torch.device("cpu")), rows_of(store)())
    # Four strong directions and a little noise: the decompositions keep most of the variance;
    # 240 Adam steps of 4-concept SAEs with sparse codes (TopK keeps one) keep more than half,
    # and much more than after one epoch.
    sae = method.endswith("-sae")
    assert metrics["r2"] > (0.5 if sae else 0.8), (method, metrics)
    if sae:
        short, _ = run(store, **{**options, "epochs": 1})
        early = evaluate.reconstruction(Codec(as_set(short), torch.device("cpu")), rows_of(store)())
        assert metrics["r2"] > early["r2"] + 0.1, (early, metrics)
    if method in ("topk-sae",):
        assert metrics["mean_active_concepts"] <= 1.0  # top_k = max(4 // 10, 1)
    other, _ = run(store, **{**options, "seed": 4})
    if method not in ("svd",):  # TruncatedSVD's randomized solver converges to the same
        assert not np.array_equal(first.decoder_weight, other.decoder_weight)


def test_refusals_come_before_anything_runs(tmp_path: Path) -> None:
    store = make_store(tmp_path, activations(40), shard_size=20)
    with pytest.raises(FitError, match="--concepts 41 is more than the 40 activation rows"):
        run(store, method="pca", concepts=41)
    with pytest.raises(FitError, match="more than the 16 features"):
        run(store, method="ica", concepts=17)
    with pytest.raises(FitError, match=r"ica needs all 40 rows in memory \(0.00 GiB > --max"):
        run(store, method="ica", concepts=3, max_memory=100)
    with pytest.raises(FitError, match="NMF needs non-negative activations; these go down to"):
        run(store, method="nmf", concepts=3)
    with pytest.raises(FitError, match="unknown method 'lda'"):
        run(store, method="lda", concepts=3)


@pytest.mark.parametrize("nonneg", ["relu", "shift"])
def test_nmf_on_signed_activations_with_the_documented_choices(tmp_path: Path, nonneg: str) -> None:
    x = activations()
    store = make_store(tmp_path, x)
    fitted, _ = run(store, method="nmf", concepts=4, nonneg=nonneg)
    cs = as_set(fitted)
    assert fitted.notes["nonneg"] == nonneg
    assert cs.encoder.relu_input == (nonneg == "relu")
    if nonneg == "shift":
        np.testing.assert_allclose(cs.decoder_bias, x.min(axis=0))
    codes = Codec(cs, torch.device("cpu")).encode(torch.from_numpy(x[:3])).numpy()
    target = x[:3] - (cs.decoder_bias if cs.decoder_bias is not None else 0)
    target = np.maximum(target, 0) if nonneg == "relu" else target
    for i in range(3):
        np.testing.assert_allclose(
            codes[i],
            nnls(cs.decoder_weight.T.astype(np.float64), target[i])[0],
            rtol=1e-4,
            atol=1e-5,
        )


def test_ica_is_scikit_learns(tmp_path: Path) -> None:
    x = activations()
    fitted, _ = run(make_store(tmp_path, x), method="ica", concepts=3, seed=1)
    reference = FastICA(3, random_state=1, max_iter=1000).fit(x)
    np.testing.assert_allclose(fitted.encoder.weight, reference.components_, rtol=1e-5, atol=1e-7)


def test_top_examples_are_unique_inputs_by_their_largest_activation(tmp_path: Path) -> None:
    x = np.zeros((6, 2), np.float32)
    x[:, 0] = [1, 5, 3, 5.5, 0, 2]  # concept 0 = feature 0
    x[:, 1] = [0, 0, 0, 0, 0, 0]  # concept 1 never fires
    store = make_store(tmp_path, x, shard_size=4)
    eye = np.eye(2, dtype=np.float32)
    cs = ConceptSet(
        model=ModelBinding(name="m"),
        split_point="classifier:input",
        encoder=as_set_encoder(eye),
        decoder_weight=eye,
    ).check("t")
    texts = ["a", "b", "c", "b", "d", "e"]  # "b" twice: its best activation counts, once
    tops = interpret.top_examples(store, texts, Codec(cs, torch.device("cpu")), k=3)
    assert tops[0] == (TopExample("b", 5.5), TopExample("c", 3.0), TopExample("e", 2.0))
    assert tops[1] == ()
    assert interpret.frequent_ngrams(["a b a", "b a!"], ngrams=2, min_count=2) == ["a", "b", "b a"]
    assert unique_labels(
        [(TopExample("x y", 1.0),), (TopExample("long " * 20, 1.0),), ()],
        [(TopExample("food", 2.0),), (TopExample("food", 1.0), TopExample("staff", 0.5)), ()],
    ) == ["food", "staff", ""]


def as_set_encoder(weight: NDArray[np.float32]):  # type: ignore[no-untyped-def]
    from explainserve.concepts.sets import Encoder

    return Encoder("relu", weight=weight)


def test_evaluation_numbers_are_what_they_say() -> None:
    x = activations(100)
    pca = PCA(2).fit(x)
    from explainserve.concepts.convert import from_sklearn

    cs = from_sklearn(pca, ModelBinding(name="m"), split_point="classifier:input")
    metrics = evaluate.reconstruction(Codec(cs, torch.device("cpu")), iter([x[:60], x[60:]]))
    x_hat = pca.inverse_transform(pca.transform(x))
    residual = ((x - x_hat) ** 2).sum()
    np.testing.assert_allclose(
        metrics["relative_squared_error"], residual / (x**2).sum(), rtol=1e-4
    )
    np.testing.assert_allclose(
        metrics["r2"], 1 - residual / ((x - x.mean(0)) ** 2).sum(), rtol=1e-4
    )
    assert metrics["sparsity"] == 0.0
    assert metrics["mean_active_concepts"] == 2.0
    d = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    assert evaluate.stability(d, -d[[3, 1, 4, 0, 2]] * 2.0) == pytest.approx(1.0)
    assert evaluate.stability(d, np.random.default_rng(1).normal(size=(5, 8))) < 0.8
    assert evaluate.agreement(
        np.array([0, 1, 1]), np.array([[1, 0], [0, 1], [1, 0]])
    ) == pytest.approx(2 / 3)
    importance = evaluate.importance(
        [np.array([[1, -2], [3, 0]]), np.array([[-3, 0], [1, 4]])], ["a", "b"]
    )
    assert importance == {"a": [2.0, 1.0], "b": [2.0, 2.0]}


def test_cavs_separate_labelled_examples_and_score_by_gradient_sign() -> None:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    labels = ["yes" if v > 0 else "no" for v in x @ direction]
    fitted, names, info = fit_cav(x, labels, "logistic", seed=0)
    assert names == ["yes"]
    assert info["held_out_accuracy"] > 0.9
    weight = fitted.encoder.weight
    assert weight is not None
    cosine = weight[0] @ direction / np.linalg.norm(weight[0]) / np.linalg.norm(direction)
    assert cosine > 0.9
    # Each vector decodes along itself: encoding its decoding gives the value back (plus b).
    assert fitted.encoder.bias is not None
    back = (3.0 * fitted.decoder_weight[0]) @ weight[0] + fitted.encoder.bias[0]
    assert back == pytest.approx(3.0 + fitted.encoder.bias[0], rel=1e-5)
    three, names3, _ = fit_cav(x, [("a", "b", "c")[i % 3] for i in range(200)], "svm", seed=0)
    assert names3 == ["a", "b", "c"]
    assert three.decoder_weight.shape == (3, 16)
    scores = tcav_scores([np.array([[1.0, -1.0]]), np.array([[2.0, 0.5]]), np.array([[-1.0, 3.0]])])
    np.testing.assert_allclose(scores, [[2 / 3, 2 / 3]])
    with pytest.raises(FitError, match="at least two labels"):
        fit_cav(x, ["a"] * 200, "logistic", 0)
    with pytest.raises(FitError, match="at least 5 examples"):
        fit_cav(x[:7], ["a", "a", "a", "a", "a", "b", "b"], "logistic", 0)
