"""A live server for the viewer's tests: the tiny BERT classifier ("bert", labels negative /
neutral / positive) with a concept set ("pca8": a PCA of its head input over a few texts, with
labels), and the built-in tiny GPT-2 LM ("writer", built into this session's temp cache), on
loopback port 0; and a helper that runs `explainserve explain` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.decomposition import PCA

from explainserve.concepts import convert
from explainserve.concepts.registry import ConceptRegistry, bind
from explainserve.concepts.sets import ConceptInfo, ConceptSet, ModelBinding
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, start
from explainserve.models.builtin import tiny_gpt2_dir
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: The labels of the viewer tests' concept set, one per concept (one with spaces, one long).
CONCEPT_LABELS = (
    "cold food",
    "rude staff",
    "friendly staff",
    "price",
    "waiting time",
    "ambience",
    "a rather long label for the seventh concept",
    "noise",
)
#: The texts the concept set is fitted on (more than its concepts).
FIT_TEXTS = (
    "The food was cold and the waiter was rude.",
    "I loved the friendly staff.",
    "The soup was lukewarm.",
    "Great prices and quick service!",
    "We waited an hour for a table.",
    "The room was loud and dark.",
    "Lovely ambience, warm welcome.",
    "Overpriced and bland.",
    "The staff ignored us all evening.",
    "Fresh bread, hot coffee, kind people.",
    "Never again: slow, cold, expensive.",
    "A quiet corner and a perfect steak.",
)


def fit_concepts(address: str, model: str, labels: list[str]) -> ConceptSet:
    """A PCA of `model`'s head input (GetActivations' default split point) over `FIT_TEXTS`,
    with `CONCEPT_LABELS`; `labels` are the model's classes (the binding)."""
    with grpc.insecure_channel(address) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GetActivationsRequest(
            model=model, inputs=[pb.Input(text=t) for t in FIT_TEXTS]
        )
        chunks = [c.activations[0].values for c in stub.GetActivations(request, timeout=60)]
    rows = np.concatenate(
        [np.frombuffer(t.data, dtype=np.float32).reshape(tuple(t.shape)) for t in chunks]
    )
    pca = PCA(len(CONCEPT_LABELS)).fit(rows)
    fitted = convert.from_sklearn(
        pca, ModelBinding(name=model, labels=tuple(labels)), split_point="classifier:input"
    )
    return replace(fitted, concepts=tuple(ConceptInfo(label=k) for k in CONCEPT_LABELS))


@pytest.fixture(scope="session")
def builtin_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`builtin:tiny-gpt2`, built offline into a temporary cache."""
    return tiny_gpt2_dir(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def viewer_server(tiny_bert_dir: Path, builtin_gpt2_dir: Path) -> Iterator[RunningServer]:
    """The server, started once for the viewer tests."""
    registry = Registry()
    try:
        registry.add(load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu")))
        registry.add(load_model(ModelConfig(name="writer", path=builtin_gpt2_dir, device="cpu")))
        concepts = ConceptRegistry()
        running = start(ServerOptions(port=0), Explainer(registry, concepts=concepts))
        try:
            bert = registry.get("bert")
            fitted = fit_concepts(f"127.0.0.1:{running.port}", "bert", list(bert.labels))
            concepts.add(bind("pca8", fitted, bert, "test"))
            yield running
        finally:
            running.stop(grace=None)
    finally:
        registry.close()


@pytest.fixture(scope="session")
def server_address(viewer_server: RunningServer) -> str:
    """HOST:PORT of the viewer tests' server."""
    return f"127.0.0.1:{viewer_server.port}"


RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """Runs `explainserve *args` in a child process (its own interpreter, as a user runs it);
    `stdin=` text is piped in."""

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "explainserve.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "NO_COLOR": "1"},
            check=False,
        )

    return run
