"""Fixtures of the concept tests: the four tiny classifiers served through a `Registry` (heads
that read BERT's pooler, RoBERTa's first token through a tanh layer, DistilBERT's
`pre_classifier`, GPT-2's last token), the same weights loaded directly, and the concept
explainer on them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from concept_sets import SERVED
from reference_models import Direct

from explainserve.concepts.registry import ConceptRegistry
from explainserve.concepts.service import ConceptExplainer
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry


@pytest.fixture(scope="session")
def concept_models(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """The four tiny classifiers, served on the CPU."""
    reg = Registry()
    for name, fixture in SERVED.items():
        path = request.getfixturevalue(fixture)
        reg.add(load_model(ModelConfig(name=name, path=path, device="cpu")))
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def direct(request: pytest.FixtureRequest) -> dict[str, Direct]:
    """Served name -> the same weights loaded directly."""
    return {name: Direct(request.getfixturevalue(fixture)) for name, fixture in SERVED.items()}


@pytest.fixture
def concept_explainer(concept_models: Registry) -> ConceptExplainer:
    """ExplainConcepts on the tiny models, with an empty registry of sets (tests add theirs)."""
    return ConceptExplainer(concept_models, ConceptRegistry())
