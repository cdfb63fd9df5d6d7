"""A concept set: a fitted dictionary of concepts for one served model at one split point.

It holds an encoder t (activations -> concept activations C) and a linear decoder
t⁻¹(C) = C · D + b, with what is known of each concept (its label, its top examples) and of the
fit (method, metrics). On disk it is one file, in a format any tool can write
(docs/concepts.md): safetensors, the Hugging Face tensor format, whose tensors are the encoder's
and decoder's parameters and whose metadata holds one JSON document under the key
`explainserve.concepts`. No torch here: the CLI's `concepts import` and `concepts show`, and other
tools, read and write it with numpy alone (`concepts.codec` runs it with torch).

Encoders (`Encoder.kind`), with `pre = (x - center) · Wᵀ + b` (center and b optional):

- `linear`: C = pre (PCA, ICA, truncated SVD, neurons as concepts, linear probes and CAVs);
- `relu`: C = ReLU(pre) (sparse autoencoders with a ReLU);
- `topk`: the `top_k` largest of ReLU(pre) kept, the others 0 (TopK SAEs);
- `jumprelu`: ReLU(pre) where it reaches the per-concept `threshold`, else 0 (JumpReLU SAEs);
- `nnls`: C = argmin_{C ≥ 0} ‖x' - (C · D + b)‖², x' = x or ReLU(x) (`relu_input`): the NMF family,
  a deterministic non-negative least-squares fit against the fixed dictionary.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
from numpy.typing import NDArray

from explainserve.errors import InvalidArgument

#: The metadata key of the JSON document, and the document's `format` field.
METADATA_KEY = "explainserve.concepts"
FORMAT = "explainserve.concepts"
#: The format's version: a reader refuses a newer one (it may mean things this one does not).
VERSION = 1

EncoderKind = Literal["linear", "relu", "topk", "jumprelu", "nnls"]
ENCODER_KINDS: tuple[str, ...] = get_args(EncoderKind)
#: The rows a set was fitted on (GetActivations' granularities).
FitGranularity = Literal["cls_token", "all_tokens", "token", "word", "sentence"]
FIT_GRANULARITIES: tuple[str, ...] = get_args(FitGranularity)

#: The probe text: the row of it at the split point is stored with the set, and the served model
#: must give the same row (`PROBE_TOLERANCE`), or the set was fitted on another model.
PROBE_TEXT = "ExplainServe concept probe: the quick brown fox jumps over the lazy dog."
#: The largest relative L2 distance between the stored probe row and the served model's for the
#: set to be taken: bfloat16 serving moves a MiniLM head-input row by ~1 % of its norm, while a
#: different model (even one fine-tuned from the same weights) moves it by tens of percent.
PROBE_TOLERANCE = 0.05
#: Tensor names in the file.
TENSOR_NAMES = (
    "encoder.weight",
    "encoder.bias",
    "encoder.center",
    "encoder.threshold",
    "decoder.weight",
    "decoder.bias",
    "probe.activation",
)

Array = NDArray[np.float32]


class ConceptSetError(InvalidArgument):
    """A concept set that cannot be used: names the file (or request field) and what is wrong."""


@dataclass(frozen=True)
class Encoder:
    """The encoder t: its kind and parameters (shapes: K concepts, d features)."""

    kind: EncoderKind
    #: `(K, d)`; None for `nnls` (it solves against the decoder's dictionary).
    weight: Array | None = None
    #: `(K,)`, added after the product.
    bias: Array | None = None
    #: `(d,)`, subtracted from the activations first (PCA's and ICA's mean).
    center: Array | None = None
    #: `jumprelu`: `(K,)`, the per-concept threshold (on ReLU(pre): kept where >= threshold).
    threshold: Array | None = None
    #: `topk`: how many concepts are kept per row.
    top_k: int = 0
    #: `nnls`: the activations go through a ReLU before the fit (NMF on signed activations).
    relu_input: bool = False

    @property
    def differentiable(self) -> bool:
        """Whether C has a gradient with respect to the activations (not NNLS's active set)."""
        return self.kind != "nnls"


@dataclass(frozen=True)
class TopExample:
    """An input (or a word, an n-gram) that activates a concept strongly."""

    text: str
    activation: float


@dataclass(frozen=True)
class ConceptInfo:
    """What is known of one concept: a label, its top examples (inputs, or the rows' words) and
    its top words or n-grams run as inputs of their own (empty when unknown)."""

    label: str = ""
    top_examples: tuple[TopExample, ...] = ()
    top_words: tuple[TopExample, ...] = ()


@dataclass(frozen=True)
class ModelBinding:
    """The model a set belongs to: the served name, and what lets a server check it.

    `architecture` and `labels` must equal the served model's when given; `probe` is the row of
    `PROBE_TEXT` at the split point (`d`,), compared with the served model's at start.
    """

    name: str
    architecture: str = ""
    labels: tuple[str, ...] = ()
    probe: Array | None = None
    probe_text: str = PROBE_TEXT


@dataclass(frozen=True)
class ConceptSet:
    """A fitted concept dictionary bound to a model and a split point (see the module doc)."""

    model: ModelBinding
    #: GetModel's split point name ("classifier:input": the head's input at the position the
    #: head reads).
    split_point: str
    encoder: Encoder
    #: The dictionary D `(K, d)`: t⁻¹(C) = C · D + decoder_bias.
    decoder_weight: Array
    decoder_bias: Array | None = None
    #: The rows the set was fitted on.
    granularity: FitGranularity = "cls_token"
    concepts: tuple[ConceptInfo, ...] = ()
    #: How it was made ("pca", "sklearn.decomposition.FastICA", "interpreto.TopKSAEConcepts").
    method: str = ""
    #: What the fit measured (free-form: reconstruction, sparsity, ...), and any other fields of
    #: the JSON document this reader does not know (kept when the set is written again).
    fit: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        """K."""
        return int(self.decoder_weight.shape[0])

    @property
    def n_features(self) -> int:
        """d: the size of one activation row."""
        return int(self.decoder_weight.shape[1])

    def labels(self) -> list[str]:
        """One label per concept ("concept k" where none is known)."""
        infos = list(self.concepts) + [ConceptInfo()] * (self.n_concepts - len(self.concepts))
        return [info.label or f"concept {k}" for k, info in enumerate(infos)]

    def check(self, where: str) -> ConceptSet:
        """Itself, once every shape, kind and value is consistent; ConceptSetError names
        `where` (a file or a request field) and what is wrong."""

        def fail(message: str) -> ConceptSetError:
            return ConceptSetError(f"{where}: {message}", field=where)

        enc = self.encoder
        if enc.kind not in ENCODER_KINDS:
            raise fail(f"unknown encoder kind '{enc.kind}' (one of {', '.join(ENCODER_KINDS)})")
        if self.granularity not in FIT_GRANULARITIES:
            raise fail(
                f"unknown granularity '{self.granularity}' (one of {', '.join(FIT_GRANULARITIES)})"
            )
        if not self.split_point:
            raise fail("no split point")
        if not self.model.name:
            raise fail("no model name")
        d = self.decoder_weight
        if d.ndim != 2 or d.shape[0] < 1 or d.shape[1] < 1:
            raise fail(f"decoder.weight must be [concepts, features], got {list(d.shape)}")
        k, n = d.shape
        expected: dict[str, tuple[Array | None, tuple[int, ...]]] = {
            "decoder.weight": (d, (k, n)),
            "decoder.bias": (self.decoder_bias, (n,)),
            "encoder.weight": (enc.weight, (k, n)),
            "encoder.bias": (enc.bias, (k,)),
            "encoder.center": (enc.center, (n,)),
            "encoder.threshold": (enc.threshold, (k,)),
            "probe.activation": (self.model.probe, (n,)),
        }
        for name, (value, shape) in expected.items():
            if value is None:
                continue
            if tuple(value.shape) != shape:
                raise fail(f"{name} has shape {list(value.shape)}, expected {list(shape)}")
            finite = np.isfinite(value)
            if not finite.all():
                raise fail(f"{name} has {int(finite.size - finite.sum())} NaN or infinite values")
        if enc.kind == "nnls":
            for name in ("weight", "bias", "center", "threshold"):
                if getattr(enc, name) is not None:
                    raise fail(f"an nnls encoder has no encoder.{name} (it fits against D)")
        else:
            if enc.weight is None:
                raise fail(f"a {enc.kind} encoder needs encoder.weight [concepts, features]")
            if enc.relu_input:
                raise fail("relu_input is for nnls encoders")
        if (enc.kind == "jumprelu") != (enc.threshold is not None):
            raise fail("encoder.threshold is given exactly for jumprelu encoders")
        if enc.kind == "topk":
            if not 1 <= enc.top_k <= k:
                raise fail(f"top_k must be in 1..{k} (the concepts), got {enc.top_k}")
        elif enc.top_k:
            raise fail("top_k is for topk encoders")
        if len(self.concepts) > k:
            raise fail(f"{len(self.concepts)} concepts described, the dictionary has {k}")
        return self

    # -- the file --------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """The JSON document of the file's metadata."""
        model: dict[str, Any] = {"name": self.model.name}
        if self.model.architecture:
            model["architecture"] = self.model.architecture
        if self.model.labels:
            model["labels"] = list(self.model.labels)
        encoder: dict[str, Any] = {"kind": self.encoder.kind}
        if self.encoder.kind == "topk":
            encoder["top_k"] = self.encoder.top_k
        if self.encoder.kind == "nnls":
            encoder["relu_input"] = self.encoder.relu_input
        doc: dict[str, Any] = {
            **self.extra,
            "format": FORMAT,
            "version": VERSION,
            "model": model,
            "split_point": self.split_point,
            "granularity": self.granularity,
            "encoder": encoder,
            "method": self.method,
            "concepts": [
                {
                    "label": info.label,
                    "top_examples": _examples(info.top_examples),
                    **({"top_words": _examples(info.top_words)} if info.top_words else {}),
                }
                for info in self.concepts
            ],
            "fit": self.fit,
        }
        if self.model.probe is not None:
            doc["probe"] = {"text": self.model.probe_text}
        return doc

    def tensors(self) -> dict[str, Array]:
        """The file's tensors by name (float32, contiguous)."""
        values = {
            "encoder.weight": self.encoder.weight,
            "encoder.bias": self.encoder.bias,
            "encoder.center": self.encoder.center,
            "encoder.threshold": self.encoder.threshold,
            "decoder.weight": self.decoder_weight,
            "decoder.bias": self.decoder_bias,
            "probe.activation": self.model.probe,
        }
        return {
            name: np.ascontiguousarray(value, dtype=np.float32)
            for name, value in values.items()
            if value is not None
        }

    def save(self, path: str | Path) -> Path:
        """Writes the file atomically (a temporary file renamed into place: a reader, or a
        stopped writer, never sees half a file); returns its path."""
        from safetensors.numpy import save

        self.check(str(path))
        data = save(self.tensors(), metadata={METADATA_KEY: json.dumps(self.document())})
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        return target


def write_atomic(path: Path, data: bytes) -> None:
    """`data` to `path` through a temporary file in its directory renamed into place: a
    reader, or a stopped writer, never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _examples(examples: tuple[TopExample, ...]) -> list[dict[str, Any]]:
    """Top examples as the JSON document holds them."""
    return [{"text": ex.text, "activation": ex.activation} for ex in examples]


def load(path: str | Path) -> ConceptSet:
    """Reads and checks a concept set file; ConceptSetError names the file and what is wrong."""
    from safetensors import SafetensorError, safe_open

    where = str(path)
    try:
        with safe_open(where, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise ConceptSetError(f"{where}: no such file", field=where) from None
    except (SafetensorError, OSError) as e:
        raise ConceptSetError(f"{where}: not a safetensors file ({e})", field=where) from None
    if METADATA_KEY not in metadata:
        raise ConceptSetError(
            f"{where}: no '{METADATA_KEY}' metadata (see docs/concepts.md for the format)",
            field=where,
        )
    try:
        doc = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ConceptSetError(f"{where}: its metadata is not JSON ({e})", field=where) from None
    return from_document(doc, tensors, where)


def from_document(doc: Any, tensors: dict[str, Any], where: str) -> ConceptSet:
    """A concept set from its JSON document and tensors (as a file holds them), checked."""

    def fail(message: str) -> ConceptSetError:
        return ConceptSetError(f"{where}: {message}", field=where)

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise fail(f"the metadata's 'format' is not '{FORMAT}'")
    version = doc.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise fail(f"format version {version!r} is not one this server reads (1..{VERSION})")
    unknown = sorted(set(tensors) - set(TENSOR_NAMES))
    if unknown:
        raise fail(f"unknown tensors {unknown} (known: {', '.join(TENSOR_NAMES)})")
    arrays: dict[str, Array] = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise fail(f"{name} has dtype {array.dtype}, expected a float type")
        arrays[name] = np.ascontiguousarray(array, dtype=np.float32)
    if "decoder.weight" not in arrays:
        raise fail("no decoder.weight tensor [concepts, features]")

    def text(obj: dict[str, Any], key: str, default: str = "") -> str:
        value = obj.get(key, default)
        if not isinstance(value, str):
            raise fail(f"'{key}' must be a string, got {value!r}")
        return value

    model = doc.get("model")
    if not isinstance(model, dict):
        raise fail("'model' must be an object with the model's 'name'")
    labels = model.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise fail("'model.labels' must be a list of strings")
    probe = doc.get("probe")
    if (probe is not None) != ("probe.activation" in arrays):
        raise fail("'probe' and the probe.activation tensor come together")
    binding = ModelBinding(
        name=text(model, "name"),
        architecture=text(model, "architecture"),
        labels=tuple(labels),
        probe=arrays.get("probe.activation"),
        probe_text=text(probe, "text", PROBE_TEXT) if isinstance(probe, dict) else PROBE_TEXT,
    )
    enc = doc.get("encoder")
    if not isinstance(enc, dict):
        raise fail("'encoder' must be an object with its 'kind'")
    top_k = enc.get("top_k", 0)
    relu_input = enc.get("relu_input", False)
    if not isinstance(top_k, int) or isinstance(top_k, bool):
        raise fail(f"'encoder.top_k' must be an integer, got {top_k!r}")
    if not isinstance(relu_input, bool):
        raise fail(f"'encoder.relu_input' must be true or false, got {relu_input!r}")
    encoder = Encoder(
        kind=cast(EncoderKind, text(enc, "kind")),
        weight=arrays.get("encoder.weight"),
        bias=arrays.get("encoder.bias"),
        center=arrays.get("encoder.center"),
        threshold=arrays.get("encoder.threshold"),
        top_k=top_k,
        relu_input=relu_input,
    )
    concepts = []
    described = doc.get("concepts", [])
    if not isinstance(described, list):
        raise fail("'concepts' must be a list")
    for j, item in enumerate(described):
        if not isinstance(item, dict):
            raise fail(f"concepts[{j}] must be an object")
        lists = {}
        for key in ("top_examples", "top_words"):
            examples = item.get(key, [])
            if not isinstance(examples, list):
                raise fail(f"concepts[{j}].{key} must be a list")
            tops = []
            for ex in examples:
                value = ex.get("activation") if isinstance(ex, dict) else None
                if not isinstance(value, int | float) or not isinstance(ex.get("text"), str):
                    raise fail(f"concepts[{j}].{key}: each is {{text, activation}}")
                tops.append(TopExample(text=ex["text"], activation=float(value)))
            lists[key] = tuple(tops)
        concepts.append(ConceptInfo(label=text(item, "label"), **lists))
    fit = doc.get("fit", {})
    if not isinstance(fit, dict):
        raise fail("'fit' must be an object")
    known = {
        "format",
        "version",
        "model",
        "probe",
        "split_point",
        "granularity",
        "encoder",
        "method",
        "concepts",
        "fit",
    }
    return ConceptSet(
        model=binding,
        split_point=text(doc, "split_point"),
        encoder=encoder,
        decoder_weight=arrays["decoder.weight"],
        decoder_bias=arrays.get("decoder.bias"),
        granularity=cast(FitGranularity, text(doc, "granularity", "cls_token")),
        concepts=tuple(concepts),
        method=text(doc, "method"),
        fit=fit,
        extra={k: v for k, v in doc.items() if k not in known},
    ).check(where)


def probe_distance(stored: Array, served: Array) -> float:
    """The relative L2 distance between a stored probe row and the served model's."""
    scale = float(np.linalg.norm(stored))
    return float(np.linalg.norm(served - stored)) / (scale if scale > 0 else 1.0)


def with_labels(concept_set: ConceptSet, labels: list[str]) -> ConceptSet:
    """The set with concept labels `labels` (one per concept, in order; top examples kept)."""
    if len(labels) != concept_set.n_concepts:
        raise ConceptSetError(
            f"{len(labels)} labels for {concept_set.n_concepts} concepts", field="labels"
        )
    infos = list(concept_set.concepts) + [ConceptInfo()] * (
        concept_set.n_concepts - len(concept_set.concepts)
    )
    return replace(
        concept_set,
        concepts=tuple(
            replace(info, label=label) for info, label in zip(infos, labels, strict=True)
        ),
    )
