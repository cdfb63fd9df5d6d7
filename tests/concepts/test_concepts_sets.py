"""The concept set file format (safetensors + one JSON document), its checks, the converters
from scikit-learn, and the torch codec against the formulas of docs/concepts.md."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from concept_sets import KINDS, decode_ref, encode_ref, random_set
from safetensors.numpy import save_file
from scipy.optimize import nnls
from sklearn.decomposition import NMF, PCA, FastICA, IncrementalPCA, MiniBatchNMF, TruncatedSVD

from explainserve.concepts import convert
from explainserve.concepts.codec import Codec
from explainserve.concepts.sets import (
    METADATA_KEY,
    ConceptInfo,
    ConceptSet,
    ConceptSetError,
    ModelBinding,
    TopExample,
    load,
    with_labels,
)

CPU = torch.device("cpu")


def rows(n: int = 64, d: int = 24, seed: int = 1) -> np.ndarray:
    """Activation-like rows: correlated, shifted, of both signs."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d))
    return (rng.normal(size=(n, d)) @ mixing * 0.3 + 0.5).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_a_set_round_trips_through_its_file(tmp_path: Path, kind: str) -> None:
    cs = random_set(kind, 24, 7, seed=3)
    cs = replace(
        cs,
        model=replace(cs.model, labels=("neg", "pos"), probe=rows(1)[0], architecture="Bert"),
        concepts=(ConceptInfo("food", (TopExample("cold soup", 2.5),)), ConceptInfo("staff")),
        fit={"r2": 0.9, "rows": 1000},
        extra={"tool": {"name": "mine"}},
        granularity="word",
    )
    back = load(cs.save(tmp_path / "s.safetensors"))
    assert back.document() == cs.document()
    assert back.tensors().keys() == cs.tensors().keys()
    for name, value in cs.tensors().items():
        np.testing.assert_array_equal(back.tensors()[name], value)
    assert back.labels()[:3] == ["food", "staff", "concept 2"]
    assert back.extra == {"tool": {"name": "mine"}}
    # Another tool reads it with safetensors alone: tensors by name, one JSON document.
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s.safetensors"), framework="numpy") as f:
        doc = json.loads(f.metadata()[METADATA_KEY])
        assert doc["encoder"]["kind"] == kind
        assert f.get_tensor("decoder.weight").shape == (7, 24)


def _write(path: Path, doc: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(doc)})
    return path


def _good() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    cs = random_set("topk", 8, 4)
    return cs.document(), cs.tensors()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d, t: d.update(format="other"), "'format' is not 'explainserve.concepts'"),
        (lambda d, t: d.update(version=2), "format version 2 is not one this server reads"),
        (lambda d, t: d.pop("model"), "'model' must be an object"),
        (lambda d, t: d["model"].update(name=""), "no model name"),
        (lambda d, t: d.update(split_point=""), "no split point"),
        (lambda d, t: d["encoder"].update(kind="gelu"), "unknown encoder kind 'gelu'"),
        (lambda d, t: d["encoder"].update(top_k=9), r"top_k must be in 1..4"),
        (lambda d, t: d["encoder"].update(top_k="2"), "'encoder.top_k' must be an integer"),
        (lambda d, t: d.update(granularity="pixel"), "unknown granularity 'pixel'"),
        (lambda d, t: d.update(concepts=[{}] * 5), "5 concepts described, the dictionary has 4"),
        (lambda d, t: t.pop("decoder.weight"), "no decoder.weight tensor"),
        (lambda d, t: t.pop("encoder.weight"), "a topk encoder needs encoder.weight"),
        (lambda d, t: t.update({"other": np.zeros(3, np.float32)}), r"unknown tensors \['other'\]"),
        (
            lambda d, t: t.update({"encoder.bias": np.zeros(5, np.float32)}),
            r"encoder.bias has shape \[5\], expected \[4\]",
        ),
        (
            lambda d, t: t["decoder.weight"].__setitem__((0, 0), np.inf),
            "decoder.weight has 1 NaN or infinite values",
        ),
        (
            lambda d, t: t.update({"encoder.threshold": np.zeros(4, np.float32)}),
            "encoder.threshold is given exactly for jumprelu encoders",
        ),
        (
            lambda d, t: t.update({"decoder.weight": np.zeros((4, 8), np.int32)}),
            "decoder.weight has dtype int32",
        ),
        (lambda d, t: d.update(probe={"text": "x"}), "'probe' and the probe.activation tensor"),
    ],
)
def test_a_bad_file_is_refused_naming_it_and_what_is_wrong(
    tmp_path: Path, edit: Any, message: str
) -> None:
    doc, tensors = _good()
    edit(doc, tensors)
    path = _write(tmp_path / "bad.safetensors", doc, tensors)
    with pytest.raises(ConceptSetError, match=message) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")


def test_files_that_are_not_concept_sets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConceptSetError, match="no such file"):
        load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(ConceptSetError, match="not a safetensors file"):
        load(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, str(plain))
    with pytest.raises(ConceptSetError, match=r"no 'explainserve\.concepts' metadata"):
        load(plain)


def test_a_set_that_fails_its_check_leaves_no_file(tmp_path: Path) -> None:
    cs = random_set("linear", 8, 3)
    bad = replace(cs, decoder_bias=np.zeros(9, np.float32))
    with pytest.raises(ConceptSetError):
        bad.save(tmp_path / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_labels_are_one_per_concept() -> None:
    cs = with_labels(random_set("relu", 8, 3), ["a", "b", "c"])
    assert cs.labels() == ["a", "b", "c"]
    with pytest.raises(ConceptSetError, match="2 labels for 3 concepts"):
        with_labels(cs, ["a", "b"])


@pytest.mark.parametrize("kind", KINDS)
def test_the_codec_computes_the_documented_formulas(kind: str) -> None:
    cs = random_set(kind, 24, 9, seed=7)
    x = rows()
    codec = Codec(cs, CPU)
    got = codec.encode(torch.from_numpy(x)).numpy()
    ref = encode_ref(cs, x)
    # float32 against float64; NNLS's reference is a projected gradient, converged to ~1e-6.
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)
    back = codec.decode(torch.from_numpy(got)).numpy()
    np.testing.assert_allclose(back, decode_ref(cs, got), rtol=1e-5, atol=1e-5)
    if kind == "topk":
        assert ((got > 0).sum(axis=1) <= cs.encoder.top_k).all()
    if kind == "jumprelu":
        assert cs.encoder.threshold is not None
        assert ((got == 0) | (got >= cs.encoder.threshold)).all()


def test_nnls_codes_are_the_exact_least_squares_fit_and_deterministic() -> None:
    cs = random_set("nnls", 24, 6, seed=2)
    x = rows(16)
    codec = Codec(cs, CPU)
    c = codec.encode(torch.from_numpy(x)).numpy().astype(np.float64)
    d = cs.decoder_weight.astype(np.float64)
    assert cs.decoder_bias is not None
    target = x - cs.decoder_bias
    # KKT: C >= 0; the gradient of the squared error is 0 where C > 0 and >= 0 where C = 0.
    grad = (c @ d - target) @ d.T
    assert (c >= 0).all()
    assert np.abs(grad[c > 1e-6]).max() < 1e-4
    assert grad[c <= 1e-6].min() > -1e-4
    for i in range(3):
        np.testing.assert_allclose(c[i], nnls(d.T, target[i])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(codec.encode(torch.from_numpy(x)).numpy(), c.astype(np.float32))
    relu = replace(cs, encoder=replace(cs.encoder, relu_input=True))
    r = Codec(relu, CPU).encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(r, encode_ref(relu, x), rtol=1e-4, atol=2e-5)


BINDING = ModelBinding(name="m")


@pytest.mark.parametrize(
    "make",
    [
        lambda: PCA(6),
        lambda: PCA(6, whiten=True),
        lambda: IncrementalPCA(6),
        lambda: FastICA(6, random_state=0, max_iter=2000, tol=1e-3),
        lambda: FastICA(6, whiten=False, random_state=0, max_iter=2000, tol=1e-3),
        lambda: TruncatedSVD(6, random_state=0),
    ],
)
def test_scikit_learn_decompositions_convert_to_their_own_transforms(make: Any) -> None:
    x = rows(200)
    est = make().fit(x)
    cs = convert.from_sklearn(est, BINDING, split_point="classifier:input")
    codec = Codec(cs, CPU)
    c = codec.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(c, est.transform(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        codec.decode(torch.from_numpy(c)).numpy(),
        est.inverse_transform(est.transform(x)),
        rtol=1e-4,
        atol=1e-4,
    )
    assert cs.method == f"sklearn.decomposition.{type(est).__name__}"


@pytest.mark.parametrize(
    "make", [lambda: NMF(5, max_iter=3000, random_state=0), lambda: MiniBatchNMF(5, random_state=0)]
)
def test_nmf_converts_to_its_dictionary_with_an_exact_nnls_encoding(make: Any) -> None:
    """scikit-learn's transform is an iterative solver; ours is the exact NNLS fit against the
    same dictionary: never a worse reconstruction, and close to scikit-learn's codes."""
    x = np.abs(rows(120))
    est = make().fit(x)
    cs = convert.from_sklearn(est, BINDING, split_point="classifier:input")
    assert cs.encoder.kind == "nnls"
    np.testing.assert_array_equal(cs.decoder_weight, est.components_.astype(np.float32))
    c = Codec(cs, CPU).encode(torch.from_numpy(x)).numpy()
    ours = np.linalg.norm(x - c @ est.components_, axis=1)
    theirs = np.linalg.norm(x - est.transform(x) @ est.components_, axis=1)
    assert (ours <= theirs + 1e-4).all()


def test_unfitted_or_unknown_estimators_are_refused() -> None:
    with pytest.raises(ConceptSetError, match="PCA is not fitted"):
        convert.from_sklearn(PCA(3), BINDING, split_point="x")
    from sklearn.cluster import KMeans

    with pytest.raises(ConceptSetError, match="cannot convert a KMeans"):
        convert.from_sklearn(KMeans(2).fit(rows()), BINDING, split_point="x")


def test_a_set_made_in_code_is_checked_when_written(tmp_path: Path) -> None:
    cs = ConceptSet(
        model=BINDING,
        split_point="classifier:input",
        encoder=convert.Encoder("topk", weight=np.ones((3, 4), np.float32), top_k=0),
        decoder_weight=np.ones((3, 4), np.float32),
    )
    with pytest.raises(ConceptSetError, match=r"top_k must be in 1\.\.3"):
        cs.save(tmp_path / "x.safetensors")
