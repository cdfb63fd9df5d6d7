"""Activations on disk: a directory of shards (one safetensors file per block of texts: their
rows, each text's row offsets, its logits, and the rows' unit texts for per-token
granularities) and a manifest saying what they are (model, split point, granularity, the dataset's
fingerprint). `explainserve activations` writes one; `concepts fit` keeps its cache in one, so
that a refit with another method or K reads it again instead of extracting, and a stopped run
resumes at the first missing shard. Shards are written atomically: one that exists is whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.sets import write_atomic

MANIFEST = "manifest.json"
FORMAT = "explainserve.activations"
VERSION = 1
#: The metadata key of a shard's JSON (its first text and the rows' unit texts).
SHARD_KEY = "explainserve.activations"


class StoreError(ValueError):
    """A store that cannot be used as asked: names the directory and what is wrong."""


@dataclass(frozen=True)
class Manifest:
    """What a store holds; two stores of equal manifests hold the same activations."""

    model: str
    split_point: str
    granularity: str
    aggregation: str
    dataset: str
    fingerprint: str
    texts: int
    shard_size: int
    features: int
    labels: tuple[str, ...]
    format: str = FORMAT
    version: int = VERSION

    @property
    def shards(self) -> int:
        """How many shards the whole dataset makes."""
        return -(-self.texts // self.shard_size)

    def to_json(self) -> str:
        """The manifest file's text."""
        data = asdict(self)
        data["labels"] = list(self.labels)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        """A manifest from its file's text."""
        try:
            data = json.loads(text)
            data["labels"] = tuple(data["labels"])
            manifest = cls(**data)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise StoreError(f"{where}: not an activation store manifest ({e})") from None
        if manifest.format != FORMAT or manifest.version > VERSION:
            raise StoreError(f"{where}: format {manifest.format} v{manifest.version} not read here")
        return manifest


@dataclass(frozen=True)
class Shard:
    """A block of consecutive texts: `activations` `(rows, d)` float32, `row_offsets`
    `(texts + 1,)` (text i owns rows `row_offsets[i]:row_offsets[i + 1]`), `logits`
    `(texts, classes)`, and per text its rows' unit texts (None for one row per text)."""

    index: int
    first: int
    activations: NDArray[np.float32]
    row_offsets: NDArray[np.int64]
    logits: NDArray[np.float32]
    units: list[list[str]] | None

    @property
    def texts(self) -> int:
        """Texts in the shard."""
        return int(self.row_offsets.shape[0] - 1)


class Store:
    """A directory of shards and its manifest."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open(cls, directory: Path) -> Store:
        """An existing store."""
        path = directory / MANIFEST
        if not path.is_file():
            raise StoreError(f"{directory}: no {MANIFEST} (not an activation store)")
        return cls(directory, Manifest.from_json(path.read_text(), str(path)))

    @classmethod
    def create(cls, directory: Path, manifest: Manifest) -> Store:
        """A store for `manifest`: a new one, or the existing one of the same manifest (whose
        shards are kept: the run resumes). A directory holding other activations is refused."""
        path = directory / MANIFEST
        if path.is_file():
            existing = Manifest.from_json(path.read_text(), str(path))
            if existing != manifest:
                raise StoreError(
                    f"{directory} holds other activations ({existing.model} at "
                    f"{existing.split_point}, {existing.granularity}, {existing.texts} texts of "
                    f"{existing.dataset}): give another directory or remove it"
                )
            return cls(directory, existing)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, manifest.to_json().encode())
        return cls(directory, manifest)

    def shard_path(self, index: int) -> Path:
        """Where shard `index` lives."""
        return self.directory / f"shard-{index:06d}.safetensors"

    def has(self, index: int) -> bool:
        """Whether shard `index` is written (whole: shards are written atomically)."""
        return self.shard_path(index).is_file()

    def missing(self) -> list[int]:
        """The shards not written yet."""
        return [i for i in range(self.manifest.shards) if not self.has(i)]

    def write(self, shard: Shard) -> None:
        """Writes a shard atomically."""
        from safetensors.numpy import save

        meta: dict[str, Any] = {"first": shard.first, "units": shard.units}
        data = save(
            {
                "activations": np.ascontiguousarray(shard.activations, dtype=np.float32),
                "row_offsets": np.ascontiguousarray(shard.row_offsets, dtype=np.int64),
                "logits": np.ascontiguousarray(shard.logits, dtype=np.float32),
            },
            metadata={SHARD_KEY: json.dumps(meta)},
        )
        write_atomic(self.shard_path(shard.index), data)

    def read(self, index: int) -> Shard:
        """Shard `index`."""
        from safetensors import safe_open

        with safe_open(str(self.shard_path(index)), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})[SHARD_KEY])
            tensors = {
                name: f.get_tensor(name) for name in ("activations", "row_offsets", "logits")
            }
        return Shard(
            index=index,
            first=int(meta["first"]),
            activations=tensors["activations"],
            row_offsets=tensors["row_offsets"],
            logits=tensors["logits"],
            units=meta["units"],
        )

    def shards(self) -> Iterator[Shard]:
        """Every shard, in order (all must be written)."""
        missing = self.missing()
        if missing:
            raise StoreError(f"{self.directory}: shards {missing[:5]}... are missing")
        for i in range(self.manifest.shards):
            yield self.read(i)

    def rows(self) -> int:
        """Activation rows of the whole store (from the shards' headers: nothing is loaded)."""
        from safetensors import safe_open

        total = 0
        for i in range(self.manifest.shards):
            with safe_open(str(self.shard_path(i)), framework="numpy") as f:
                total += int(f.get_slice("activations").get_shape()[0])
        return total


def cache_root() -> Path:
    """Where concept discovery keeps what it makes on its own: `$EXPLAINSERVE_CACHE_DIR`, else
    `~/.cache/explainserve` (the server's cache of built-in models too)."""
    return Path(os.environ.get("EXPLAINSERVE_CACHE_DIR", Path.home() / ".cache" / "explainserve"))
