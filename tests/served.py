"""A registry of test models for the servers the tests start."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry


@contextmanager
def served_models(models: dict[str, Path]) -> Iterator[Registry]:
    """The models (served name -> directory) loaded on the CPU; closed at the end."""
    registry = Registry()
    try:
        for name, path in models.items():
            registry.add(load_model(ModelConfig(name=name, path=path, device="cpu")))
        yield registry
    finally:
        registry.close()
