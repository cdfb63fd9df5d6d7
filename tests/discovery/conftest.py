"""Fixtures of the discovery tests: two servers of the tiny BERT classifier in this process (the
same weights loaded twice: two replicas), and datasets of the default model's shipped sentences."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from discovery_servers import Replica

from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models.default_model import HELDOUT_FILE, TRAIN_FILE, read_dataset
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry


@pytest.fixture(scope="session")
def replicas(tiny_bert_dir: Path) -> Iterator[list[Replica]]:
    """Two servers of the tiny BERT, named "bert"."""
    out = []
    try:
        for _ in range(2):
            registry = Registry()
            registry.add(load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu")))
            out.append(Replica(start(ServerOptions(port=0), Explainer(registry)), registry))
        yield out
    finally:
        for replica in out:
            replica.running.stop(grace=None)
            replica.registry.close()


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """The default model's shipped sentences (460), in file order."""
    return list(read_dataset(TRAIN_FILE).texts) + list(read_dataset(HELDOUT_FILE).texts)


@pytest.fixture
def text_file(tmp_path: Path, sentences: list[str]) -> Path:
    """80 of them, one per line (a blank line among them)."""
    path = tmp_path / "texts.txt"
    lines = [*sentences[:40], "", *sentences[40:80]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
