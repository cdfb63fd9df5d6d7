"""Concept discovery to concept explanations on the default model, as a user runs it: `explainserve
serve`, `explainserve concepts fit` against it, `explainserve serve --concepts` with the file it
wrote, and ExplainConcepts and a concept target through gRPC."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from explainserve.cli import main
from explainserve.concepts.sets import load
from explainserve.launch import spawn_serve
from explainserve.models.default_model import HELDOUT_FILE, TRAIN_FILE, read_dataset
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache, where the first server builds the default model."""
    return tmp_path_factory.mktemp("concepts-cache")


def _serve(cache: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    return spawn_serve(
        ["--port", "0", "--no-calibrate", *args],
        env={"EXPLAINSERVE_CACHE_DIR": str(cache)},
        timeout=300,
    )


@pytest.fixture(scope="module")
def fitted(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An 8-concept PCA of the default model's 460 shipped sentences, fitted by the CLI against
    a running default server."""
    work = tmp_path_factory.mktemp("concepts")
    texts = work / "sentences.txt"
    sentences = list(read_dataset(TRAIN_FILE).texts) + list(read_dataset(HELDOUT_FILE).texts)
    texts.write_text("\n".join(sentences) + "\n")
    proc, port = _serve(cache)
    try:
        out = work / "reviews.safetensors"
        argv = ["concepts", "fit", "--server", f"127.0.0.1:{port}", "--file", str(texts)]
        argv += ["--concepts", "8", "--out", str(out), "--quiet", "--cache", str(work / "acts")]
        assert main(argv) == 0
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_the_fitted_set_is_served_and_explains_predictions(cache: Path, fitted: Path) -> None:
    cs = load(fitted)
    assert cs.model.name == "minilm-sentiment"
    assert cs.model.probe is not None
    metrics = cs.fit["metrics"]
    # The sentiment model's head input is mostly one direction: 8 components keep nearly all.
    assert metrics["r2"] > 0.95
    assert metrics["prediction_agreement"] > 0.95
    proc, port = _serve(cache, "--concepts", f"reviews={fitted}")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            (listed,) = info.concept_sets
            assert (listed.name, listed.method, list(listed.labels)) == (
                "reviews",
                "pca",
                cs.labels(),
            )
            texts = [
                "The food was cold and the waiter was rude.",
                "A wonderful, cosy little place.",
            ]
            reply = stub.ExplainConcepts(
                pb.ExplainConceptsRequest(
                    model="minilm-sentiment",
                    inputs=[pb.Input(text=t) for t in texts],
                    concepts=pb.ConceptSetRef(name="reviews"),
                    normalization=False,
                ),
                timeout=60,
            )
            predicted = []
            for e in reply.explanations:
                (target,) = e.targets
                predicted.append(target.target.label)
                # The default model's head is one Linear: everything adds up to the logit.
                total = target.concept_sum + target.residual + target.bias
                assert total == pytest.approx(target.output, abs=1e-4)
                assert abs(target.residual) < 0.5 * abs(target.output)
            assert predicted == ["negative", "positive"]
            concept = int(np.argmax(np.abs(reply.explanations[0].targets[0].contributions.values)))
            heat = stub.Explain(
                pb.ExplainRequest(
                    model="minilm-sentiment",
                    inputs=[pb.Input(text=texts[0])],
                    occlusion=pb.Occlusion(),
                    concept_target=pb.ConceptTarget(
                        concepts=pb.ConceptSetRef(name="reviews"),
                        concepts_explained=[pb.Target(index=concept)],
                    ),
                ),
                timeout=60,
            )
            (e,) = heat.explanations
            assert e.targets[0].label == cs.labels()[concept]
            assert len(e.scores.values) == len(e.units)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
