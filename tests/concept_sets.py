"""Concept sets for the tests (random sets of every encoder kind, the tiny classifiers' head
inputs they bind to) and an independent reference of what ExplainConcepts computes, in float64
numpy and torch on the Hugging Face model's own head (`reference_models.Direct`), never through
the worker, the capture code or the server's codec."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from reference_models import Direct, mode_ref

from explainserve.concepts.registry import ConceptRegistry, bind
from explainserve.concepts.sets import ConceptInfo, ConceptSet, Encoder, ModelBinding
from explainserve.models.registry import Registry

KINDS = ("linear", "relu", "topk", "jumprelu", "nnls")
#: Served name -> directory fixture.
SERVED = {
    "bert": "tiny_bert_dir",
    "roberta": "tiny_roberta_dir",
    "distilbert": "tiny_distilbert_dir",
    "gpt2": "tiny_gpt2_dir",
}
#: Each model's head input: its split point and its row size.
HEAD_INPUT = {
    "bert": ("classifier:input", 32),
    "roberta": ("classifier:input", 32),
    "distilbert": ("classifier:input", 32),
    "gpt2": ("score:input", 32),
}


def random_set(
    kind: str,
    n_features: int,
    n_concepts: int,
    seed: int = 0,
    *,
    model: str = "bert",
    split_point: str = "classifier:input",
) -> ConceptSet:
    """A concept set of `kind` with random parameters; its pre-activations have both signs on
    typical head-input rows (biases around 0), so ReLU, TopK and the thresholds all cut."""
    rng = np.random.default_rng(seed)

    def draw(*shape: int, scale: float = 1.0) -> NDArray[np.float32]:
        return (rng.normal(size=shape) * scale).astype(np.float32)

    decoder = draw(n_concepts, n_features, scale=0.3)
    labels = tuple(ConceptInfo(label=f"c{k}") for k in range(n_concepts))
    common = {
        "model": ModelBinding(name=model),
        "split_point": split_point,
        "decoder_weight": decoder,
        "concepts": labels,
        "method": "random",
    }
    if kind == "nnls":
        return _checked(
            ConceptSet(encoder=Encoder("nnls"), decoder_bias=draw(n_features, scale=0.1), **common)
        )
    encoder = Encoder(
        kind,  # type: ignore[arg-type]
        weight=draw(n_concepts, n_features, scale=1.0 / np.sqrt(n_features)),
        bias=draw(n_concepts, scale=0.1),
        center=draw(n_features, scale=0.1),
        threshold=np.abs(draw(n_concepts, scale=0.2)) if kind == "jumprelu" else None,
        top_k=max(1, n_concepts // 3) if kind == "topk" else 0,
    )
    return _checked(ConceptSet(encoder=encoder, decoder_bias=draw(n_features, scale=0.1), **common))


def _checked(cs: ConceptSet) -> ConceptSet:
    """Checked, unless its split point is left for the server to fill in (an inline set)."""
    return cs.check("random") if cs.split_point else cs


def encode_ref(cs: ConceptSet, x: NDArray[np.float64]) -> NDArray[np.float64]:
    """`(n, d)` -> `(n, K)`: the encoder's formula (docs/concepts.md) in float64; NNLS by
    projected gradient run to convergence (another algorithm than the server's active set)."""
    enc = cs.encoder
    x = np.asarray(x, dtype=np.float64)
    if enc.kind == "nnls":
        return _nnls_ref(cs, np.maximum(x, 0) if enc.relu_input else x)
    assert enc.weight is not None
    centered = x - (0 if enc.center is None else enc.center.astype(np.float64))
    pre = centered @ enc.weight.T.astype(np.float64)
    if enc.bias is not None:
        pre = pre + enc.bias
    if enc.kind == "linear":
        return pre
    codes = np.maximum(pre, 0.0)
    if enc.kind == "topk":
        keep = np.argsort(-codes, axis=1, kind="stable")[:, : enc.top_k]
        out = np.zeros_like(codes)
        np.put_along_axis(out, keep, np.take_along_axis(codes, keep, axis=1), axis=1)
        return out
    if enc.kind == "jumprelu":
        assert enc.threshold is not None
        return np.where(codes >= enc.threshold, codes, 0.0)
    return codes


def _nnls_ref(cs: ConceptSet, x: NDArray[np.float64]) -> NDArray[np.float64]:
    d = cs.decoder_weight.astype(np.float64)
    b = 0 if cs.decoder_bias is None else cs.decoder_bias.astype(np.float64)
    target = x - b
    gram = d @ d.T
    step = 1.0 / np.linalg.eigvalsh(gram).max()
    c = np.zeros((x.shape[0], d.shape[0]))
    for _ in range(20_000):
        c = np.maximum(c - step * (c @ gram - target @ d.T), 0.0)
    return c


def decode_ref(cs: ConceptSet, c: NDArray[np.float64]) -> NDArray[np.float64]:
    """C · D + b in float64."""
    out = np.asarray(c, dtype=np.float64) @ cs.decoder_weight.astype(np.float64)
    if cs.decoder_bias is not None:
        out = out + cs.decoder_bias
    return out


_HEADS: dict[int, torch.nn.Module] = {}


def head_t(direct: Direct, rows: torch.Tensor) -> torch.Tensor:
    """The classification head module (a float64 copy) on `(r, h)` float64 rows,
    differentiable."""
    model = direct.model
    if id(direct) not in _HEADS:
        module = model.score if hasattr(model, "score") else model.classifier
        _HEADS[id(direct)] = copy.deepcopy(module).double()
    head = _HEADS[id(direct)]
    if type(model).__name__ == "RobertaForSequenceClassification":
        rows = rows[:, None, :]  # the head reads position 0 of a sequence
    out: torch.Tensor = head(rows)
    return out


@dataclass(frozen=True)
class Expected:
    """What ExplainConcepts should give for one input, computed independently (float64)."""

    concepts: NDArray[np.float64]
    raw: NDArray[np.float64]  # (T, K): C * gradient
    gradient: NDArray[np.float64]  # (T, K)
    outputs: NDArray[np.float64]
    residual: NDArray[np.float64]
    bias: NDArray[np.float64]
    logits: NDArray[np.float64]


def expected(
    direct: Direct, cs: ConceptSet, text: str, targets: list[int], mode: str = "logits"
) -> Expected:
    """The reference explanation of `text` for `targets` (see `Expected`)."""
    h = direct.head_input(text).astype(np.float64)[None]
    concepts = encode_ref(cs, h)
    leaf = torch.from_numpy(concepts).requires_grad_(True)
    dictionary = torch.from_numpy(cs.decoder_weight.astype(np.float64))
    bias_d = torch.zeros(cs.n_features, dtype=torch.float64)
    if cs.decoder_bias is not None:
        bias_d = torch.from_numpy(cs.decoder_bias.astype(np.float64))
    with torch.enable_grad():
        recon = mode_ref(head_t(direct, leaf @ dictionary + bias_d), mode)
        grads = [
            torch.autograd.grad(recon[0, t], leaf, retain_graph=True)[0][0].numpy() for t in targets
        ]
    with torch.no_grad():
        logits = head_t(direct, torch.from_numpy(h))
        outputs = mode_ref(logits, mode)[0].numpy()
        zero = mode_ref(head_t(direct, bias_d[None]), mode)[0].numpy()
    gradient = np.stack(grads)
    recon_np = recon.detach()[0].numpy()
    return Expected(
        concepts=concepts[0],
        raw=concepts[0][None] * gradient,
        gradient=gradient,
        outputs=outputs[targets],
        residual=outputs[targets] - recon_np[targets],
        bias=zero[targets],
        logits=logits[0].numpy(),
    )


#: The concept sets the shared server serves: name -> (model, encoder kind, concepts, split
#: point; None: the head's input).
CONCEPT_SETS: dict[str, tuple[str, str, int, str | None]] = {
    "bert-relu": ("bert", "relu", 6, None),
    "bert-layer": ("bert", "linear", 5, "bert.encoder.layer.1"),
    "gpt2-nnls": ("gpt2", "nnls", 4, None),
}


def served_concepts(registry: Registry) -> ConceptRegistry:
    """Random concept sets of `CONCEPT_SETS` bound to the tiny models (labels c0, c1, ...)."""
    concepts = ConceptRegistry()
    for name, (model, kind, k, point) in CONCEPT_SETS.items():
        served = registry.get(model)
        split_point = point or served.head_input
        assert split_point is not None
        concept_set = random_set(kind, 32, k, seed=1, model=model, split_point=split_point)
        concepts.add(bind(name, concept_set, served, "test"))
    return concepts
