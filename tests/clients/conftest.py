"""A real server for the client packages' tests: the tiny BERT classifier ("bert", labels as in
tests/tiny_models.py) and the tiny GPT-2 causal LM ("gpt2-lm"), on loopback, behind a bearer
token so that every client's token handling is exercised. GetActivations streams chunks of at
most CHUNK_INPUTS inputs, so that a few inputs already take several chunks to reassemble."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from client_server import CHUNK_INPUTS, TOKEN, ClientServer

from explainserve.activations.limits import ActivationLimits
from explainserve.activations.service import Activator
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry


@pytest.fixture(scope="session")
def client_server(tiny_bert_dir: Path, tiny_gpt2_lm_dir: Path) -> Iterator[ClientServer]:
    """Starts the server once per session; stops it and closes the models at the end."""
    registry = Registry()
    try:
        registry.add(load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu")))
        registry.add(load_model(ModelConfig(name="gpt2-lm", path=tiny_gpt2_lm_dir, device="cpu")))
        explainer = Explainer(registry)
        activator = Activator(registry, ActivationLimits(chunk_inputs=CHUNK_INPUTS))
        running = start(ServerOptions(port=0, auth_tokens=(TOKEN,)), explainer, activator)
        try:
            yield ClientServer(running, explainer)
        finally:
            running.stop(grace=None)
    finally:
        registry.close()
