"""Fixtures of the GetActivations domain tests: four tiny classifiers served through a `Registry`
(BERT: the head reads the pooler; RoBERTa: the head reads the first token of the sequence output;
DistilBERT: the head reads `pre_classifier`'s output; GPT-2: `score` reads the last token), the
same weights loaded directly (`reference_models.Direct`), and activators with default and small
chunks.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from activation_refs import SERVED
from reference_models import Direct

from explainserve.activations.limits import ActivationLimits
from explainserve.activations.service import Activator
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry


@pytest.fixture(scope="session")
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """The four tiny classifiers, served on the CPU."""
    reg = Registry()
    for name, fixture in SERVED.items():
        path = request.getfixturevalue(fixture)
        reg.add(load_model(ModelConfig(name=name, path=path, device="cpu")))
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def activator(registry: Registry) -> Activator:
    """GetActivations with the default limits."""
    return Activator(registry)


@pytest.fixture(scope="session")
def direct(request: pytest.FixtureRequest) -> dict[str, Direct]:
    """Served name -> the same weights loaded directly."""
    return {name: Direct(request.getfixturevalue(fixture)) for name, fixture in SERVED.items()}


@pytest.fixture(scope="session")
def small_chunks(registry: Registry) -> Activator:
    """GetActivations cutting chunks of 3 inputs, computing one chunk ahead."""
    return Activator(registry, ActivationLimits(chunk_inputs=3, prefetch_chunks=1))
