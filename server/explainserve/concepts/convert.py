"""Fitted dictionaries of other tools into concept sets (`explainserve concepts import`).

- scikit-learn: `PCA` (whitened or not), `FastICA`, `TruncatedSVD`, `NMF` / `MiniBatchNMF`;
- Interpreto (an optional dependency, never imported here: objects are read by their class name
  and attributes): the fitted explainers `PCAConcepts`, `ICAConcepts`, `SVDConcepts`,
  `NMFConcepts`, `SemiNMFConcepts`, `NeuronsAsConcepts`, `VanillaSAEConcepts`,
  `TopKSAEConcepts`, `JumpReLUSAEConcepts`, or their `concept_model`.

Each encoder is written as the formula the peer's own transform computes (docs/concepts.md), so
the same activations give the same concept activations, except for the NMF family: scikit-learn's
`NMF.transform` and Overcomplete's `NMF.encode` (Interpreto's) are iterative solvers (the latter
from random codes), where a concept set's `nnls` encoder is the exact non-negative least-squares
fit against the same dictionary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explainserve.concepts.sets import (
    Array,
    ConceptSet,
    ConceptSetError,
    Encoder,
    FitGranularity,
    ModelBinding,
)

#: Interpreto's explainer classes whose concept model is one of the SAEs read here, with the
#: encoder kind they compute.
INTERPRETO_SAES = {
    "VanillaSAEConcepts": "relu",
    "TopKSAEConcepts": "topk",
    "JumpReLUSAEConcepts": "jumprelu",
}


def _array(value: Any) -> Array:
    """A numpy or torch tensor (parameter) as a float32 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32))


def _fitted(estimator: Any, *names: str) -> list[Array]:
    """The fitted attributes `names` of a scikit-learn estimator (refused when unfitted)."""
    missing = [n for n in names if getattr(estimator, n, None) is None]
    if missing:
        raise ConceptSetError(
            f"{type(estimator).__name__} is not fitted (no {', '.join(missing)}): fit it first"
        )
    return [_array(getattr(estimator, n)) for n in names]


def from_sklearn(
    estimator: Any,
    model: ModelBinding,
    *,
    split_point: str,
    granularity: FitGranularity = "cls_token",
    relu_input: bool = False,
) -> ConceptSet:
    """A concept set from a fitted scikit-learn decomposition (see the module doc)."""
    name = type(estimator).__name__
    common: dict[str, Any] = {
        "model": model,
        "split_point": split_point,
        "granularity": granularity,
        "method": f"sklearn.decomposition.{name}",
    }
    if name in ("PCA", "IncrementalPCA"):
        components, mean = _fitted(estimator, "components_", "mean_")
        weight, dictionary = components, components
        if getattr(estimator, "whiten", False):
            # transform divides each component by its standard deviation; inverse_transform
            # multiplies it back.
            (variance,) = _fitted(estimator, "explained_variance_")
            scale = np.sqrt(variance)[:, None]
            weight, dictionary = _array(components / scale), _array(components * scale)
        return ConceptSet(
            encoder=Encoder("linear", weight=weight, center=mean),
            decoder_weight=dictionary,
            decoder_bias=mean,
            **common,
        ).check(name)
    if name == "FastICA":
        components, mixing = _fitted(estimator, "components_", "mixing_")
        # Without whitening FastICA neither centres nor keeps a mean.
        center = None
        if getattr(estimator, "mean_", None) is not None:
            center = _array(estimator.mean_)
        return ConceptSet(
            encoder=Encoder("linear", weight=components, center=center),
            decoder_weight=np.ascontiguousarray(mixing.T),
            decoder_bias=center,
            **common,
        ).check(name)
    if name == "TruncatedSVD":
        (components,) = _fitted(estimator, "components_")
        return ConceptSet(
            encoder=Encoder("linear", weight=components), decoder_weight=components, **common
        ).check(name)
    if name in ("NMF", "MiniBatchNMF"):
        (components,) = _fitted(estimator, "components_")
        return ConceptSet(
            encoder=Encoder("nnls", relu_input=relu_input), decoder_weight=components, **common
        ).check(name)
    raise ConceptSetError(
        f"cannot convert a {name}: scikit-learn's PCA, IncrementalPCA, FastICA, TruncatedSVD, "
        "NMF and MiniBatchNMF are supported"
    )


def from_interpreto(
    explainer: Any,
    model: ModelBinding,
    *,
    split_point: str,
    granularity: FitGranularity = "cls_token",
) -> ConceptSet:
    """A concept set from a fitted Interpreto concept explainer (see the module doc)."""
    name = type(explainer).__name__
    return _interpreto_set(explainer, name, model, split_point, granularity).check(name)


def _interpreto_set(
    explainer: Any, name: str, model: ModelBinding, split_point: str, granularity: str
) -> ConceptSet:
    """`from_interpreto`'s set, before its check."""
    concept_model = getattr(explainer, "concept_model", None)
    if concept_model is None:
        raise ConceptSetError(f"a {name} is not an Interpreto concept explainer")
    if getattr(concept_model, "fitted", True) is False:
        raise ConceptSetError(f"the {name} is not fitted: fit it first")
    common: dict[str, Any] = {
        "model": model,
        "split_point": split_point,
        "granularity": granularity,
        "method": f"interpreto.{name}",
    }
    cm = concept_model
    if name == "PCAConcepts":
        components, mean = _array(cm.components), _array(cm.mean)
        encoder = Encoder("linear", weight=components, center=mean)
        return ConceptSet(encoder=encoder, decoder_weight=components, decoder_bias=mean, **common)
    if name == "ICAConcepts":
        # Its wrapper keeps the unmixing matrix transposed, `(d, K)`.
        mean = _array(cm.mean)
        encoder = Encoder(
            "linear", weight=np.ascontiguousarray(_array(cm.components).T), center=mean
        )
        return ConceptSet(
            encoder=encoder, decoder_weight=_array(cm.mixing), decoder_bias=mean, **common
        )
    if name == "SVDConcepts":
        components = _array(cm.components)
        return ConceptSet(
            encoder=Encoder("linear", weight=components), decoder_weight=components, **common
        )
    if name == "NeuronsAsConcepts":
        n = int(cm.nb_concepts)
        eye = np.eye(n, dtype=np.float32)
        return ConceptSet(encoder=Encoder("linear", weight=eye), decoder_weight=eye, **common)
    if name in ("NMFConcepts", "SemiNMFConcepts"):
        relu = bool(getattr(explainer, "force_relu", False))
        return ConceptSet(
            encoder=Encoder("nnls", relu_input=relu), decoder_weight=_array(cm.D), **common
        )
    if name in INTERPRETO_SAES:
        return _from_sae(cm, INTERPRETO_SAES[name], common)
    raise ConceptSetError(
        f"cannot convert an Interpreto {name}: PCAConcepts, ICAConcepts, SVDConcepts, "
        f"NeuronsAsConcepts, NMFConcepts, SemiNMFConcepts, {', '.join(INTERPRETO_SAES)} are "
        "supported"
    )


def _from_sae(sae: Any, kind: str, common: dict[str, Any]) -> ConceptSet:
    """An Overcomplete SAE with its default encoder (one `Linear`, no normalisation, ReLU): the
    only encoder whose codes are `ReLU(x Wᵀ + b)`; its dictionary as the SAE decodes with it."""
    encoder = getattr(sae, "encoder", None)
    blocks = getattr(encoder, "mlp_blocks", None)
    final = getattr(encoder, "final_block", None)
    if blocks is None or len(blocks) != 0 or final is None or len(final) != 2:
        raise ConceptSetError(
            f"the SAE's encoder ({type(encoder).__name__}) is not Overcomplete's default "
            "linear encoder: only ReLU(x W^T + b) encoders convert"
        )
    linear, norm = final[0], final[1]
    if type(norm).__name__ != "Identity" or type(linear).__name__ != "Linear":
        raise ConceptSetError(
            f"the SAE's encoder has a {type(norm).__name__} after its Linear: only "
            "ReLU(x W^T + b) encoders convert"
        )
    activation = type(getattr(encoder, "final_activation", None)).__name__
    if activation != "ReLU":
        raise ConceptSetError(f"the SAE's encoder ends in {activation}, not a ReLU")
    weight = _array(linear.weight)
    bias = None if linear.bias is None else _array(linear.bias)
    dictionary = _array(sae.get_dictionary())
    top_k = int(sae.top_k) if kind == "topk" else 0
    threshold = None
    if kind == "jumprelu":
        # JumpSAE keeps log thresholds and compares ReLU(pre) with their exponential.
        threshold = np.exp(_array(sae.thresholds)).astype(np.float32)
    return ConceptSet(
        encoder=Encoder(kind, weight=weight, bias=bias, threshold=threshold, top_k=top_k),  # type: ignore[arg-type]
        decoder_weight=dictionary,
        **common,
    )
