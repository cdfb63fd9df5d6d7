"""Real servers for the client packages' tests, on loopback, behind a bearer token so that every
client's token handling is exercised:

- `client_server`: the tiny BERT classifier ("bert", labels as in tests/tiny_models.py) with a
  PCA concept set ("pca4", fitted on `CONCEPT_TEXTS`) and the tiny GPT-2 causal LM ("gpt2-lm").
  GetActivations streams chunks of at most CHUNK_INPUTS inputs, so that a few inputs already take
  several chunks to reassemble.
- `concept_server`: the embedded default model ("minilm-sentiment", built into the session's
  temporary cache) with a PCA concept set ("pca8", fitted on held-out sentences), for the
  concept examples."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from client_server import (
    CHUNK_INPUTS,
    CONCEPT_SET,
    N_CONCEPTS,
    N_FIT_TEXTS,
    TOKEN,
    ClientServer,
    serve_pca_set,
)

from explainserve.activations.limits import ActivationLimits
from explainserve.activations.service import Activator
from explainserve.config import DEFAULT_MODEL_NAME
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models.default_model import HELDOUT_FILE, default_model_dir, read_dataset
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry

#: What "pca4" of `client_server` is fitted on.
CONCEPT_TEXTS = [
    "The food was cold.",
    "Great service, friendly staff!",
    "It was fine.",
    "Terrible, never again.",
    "The room was clean and quiet.",
    "Slow delivery and a broken box.",
    "I would come back any time.",
    "Nothing special, nothing bad.",
    "The staff ignored us all evening.",
    "Lovely view from the terrace.",
]


@contextmanager
def serving(models: dict[str, Path]) -> Iterator[ClientServer]:
    """`models` (name -> directory) served on the CPU until the block ends."""
    registry = Registry()
    try:
        for name, path in models.items():
            registry.add(load_model(ModelConfig(name=name, path=path, device="cpu")))
        explainer = Explainer(registry)
        activator = Activator(registry, ActivationLimits(chunk_inputs=CHUNK_INPUTS))
        running = start(ServerOptions(port=0, auth_tokens=(TOKEN,)), explainer, activator)
        try:
            yield ClientServer(running, explainer)
        finally:
            running.stop(grace=None)
    finally:
        registry.close()


@pytest.fixture(scope="session")
def client_server(
    tiny_bert_dir: Path, tiny_gpt2_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClientServer]:
    """Starts the server once per session; stops it and closes the models at the end."""
    with serving({"bert": tiny_bert_dir, "gpt2-lm": tiny_gpt2_lm_dir}) as server:
        path = tmp_path_factory.mktemp("concepts") / "pca4.safetensors"
        serve_pca_set(server, "bert", "pca4", CONCEPT_TEXTS, 4, path)
        yield server


@pytest.fixture(scope="session")
def concept_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientServer]:
    """The default model with `CONCEPT_SET`, served once per session."""
    model_dir = default_model_dir(tmp_path_factory.mktemp("default-cache"))
    with serving({DEFAULT_MODEL_NAME: model_dir}) as server:
        texts = read_dataset(HELDOUT_FILE).texts[:N_FIT_TEXTS]
        path = tmp_path_factory.mktemp("concepts") / f"{CONCEPT_SET}.safetensors"
        serve_pca_set(server, DEFAULT_MODEL_NAME, CONCEPT_SET, texts, N_CONCEPTS, path)
        yield server
