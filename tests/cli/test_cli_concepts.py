"""Concept sets on the command line: `serve --concepts NAME=PATH` and the `[concepts]` table (a
bad file, a set of another model or of another size: one line on stderr naming the file, exit
status 2; a good one served end to end), and `concepts import` / `concepts show` against a
running server."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from concept_sets import random_set
from sklearn.decomposition import PCA, FastICA

from explainserve.cli import build_parser, config_from_args, main
from explainserve.concepts.registry import bind, probe_row
from explainserve.concepts.sets import PROBE_TEXT, ConceptSet, load
from explainserve.config import ConfigError, load_toml
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, start
from explainserve.launch import spawn_serve
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

TEXTS = [
    "The food was cold.",
    "Lovely staff!",
    "We waited an hour for a table.",
    "Great value, friendly service and a nice view.",
    "Never again.",
    "The dessert was the best part of the evening.",
    "Noisy room, thin walls.",
    "Clean, quiet and close to the station.",
    "The soup was salty but the bread was fresh.",
    "I would come back.",
]


def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`explainserve serve *args` in a child process, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "explainserve.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_concepts_flags_and_toml_table(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--concepts", "a=/sets/a.safetensors", "--concepts", "b=~/b.safetensors"]
    )
    config = config_from_args(args)
    assert config.concepts == {
        "a": Path("/sets/a.safetensors"),
        "b": Path("~/b.safetensors").expanduser(),
    }
    with pytest.raises(ConfigError, match="--concepts expects NAME=PATH"):
        config_from_args(build_parser().parse_args(["serve", "--concepts", "nameonly"]))
    toml = tmp_path / "conf" / "serve.toml"
    toml.parent.mkdir()
    toml.write_text('[concepts]\nfood = "sets/food.safetensors"\n')
    # Relative to the TOML file, like the certificates.
    assert load_toml(toml)["concepts"] == {
        "food": (toml.parent / "sets/food.safetensors").resolve()
    }


def test_a_file_that_is_not_a_concept_set_is_one_line_before_anything_loads(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file of tensors")
    done = serve_cli("--model", "m=/nonexistent", "--concepts", f"food={bad}")
    # The model directory is checked first, then the concept files, before any model loads.
    assert done.returncode == 2
    done = serve_cli("--concepts", f"food={bad}", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"concept set 'food': {bad}: not a safetensors file" in done.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda cs: replace(cs, model=replace(cs.model, name="other")),
            "is for model 'other', which is not served (served: bert)",
        ),
        (lambda cs: random_set("linear", 33, 4, model="bert"), "the set's activations have 33"),
        (
            lambda cs: replace(cs, model=replace(cs.model, labels=("a", "b"))),
            "the set was fitted for labels ['a', 'b']",
        ),
    ],
    ids=["another model", "another size", "other labels"],
)
def test_a_set_that_does_not_fit_its_model_is_one_line_naming_the_file(
    tmp_path: Path, tiny_bert_dir: Path, edit: object, message: str
) -> None:
    path = edit(random_set("relu", 32, 4, model="bert")).save(tmp_path / "s.safetensors")  # type: ignore[operator]
    done = serve_cli(
        "--model",
        f"bert={tiny_bert_dir}",
        "--concepts",
        f"s={path}",
        "--port",
        "0",
        "--no-calibrate",
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, done.stderr
    assert str(path) in errors[0]
    assert message in errors[0]


def test_a_served_set_is_listed_and_explains(tmp_path: Path, tiny_bert_dir: Path) -> None:
    cs = random_set("topk", 32, 5, model="bert")
    path = cs.save(tmp_path / "food.safetensors")
    proc, port = spawn_serve(
        [
            "--model",
            f"bert={tiny_bert_dir}",
            "--concepts",
            f"food={path}",
            "--port",
            "0",
            "--no-calibrate",
        ]
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            (info,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            assert [(c.name, c.encoder, list(c.labels)) for c in info.concept_sets] == [
                ("food", "topk", ["c0", "c1", "c2", "c3", "c4"])
            ]
            reply = stub.ExplainConcepts(
                pb.ExplainConceptsRequest(
                    model="bert",
                    inputs=[pb.Input(text="The food was cold.")],
                    concepts=pb.ConceptSetRef(name="food"),
                ),
                timeout=60,
            )
            (e,) = reply.explanations
            assert e.concepts.cols == 5
            assert (np.asarray(e.concepts.values) > 0).sum() <= 1  # top_k = 5 // 3
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def bert_server(tiny_bert_dir: Path) -> Iterator[tuple[RunningServer, Registry]]:
    """The tiny BERT served in this process (no concept sets)."""
    registry = Registry()
    registry.add(load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu")))
    running = start(ServerOptions(port=0), Explainer(registry))
    try:
        yield running, registry
    finally:
        running.stop(grace=None)
        registry.close()


def head_rows(port: int, texts: list[str]) -> np.ndarray:
    """The head-input rows of `texts` from the server."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GetActivationsRequest(model="bert", inputs=[pb.Input(text=t) for t in texts])
        (chunk,) = list(stub.GetActivations(request, timeout=30))
    values = chunk.activations[0].values
    return np.frombuffer(values.data, "<f4").reshape(values.shape)


def test_import_writes_a_file_the_server_takes(
    tmp_path: Path,
    bert_server: tuple[RunningServer, Registry],
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, registry = bert_server
    pca = PCA(4).fit(head_rows(running.port, TEXTS))
    source = tmp_path / "pca.pkl"
    source.write_bytes(pickle.dumps(pca))
    labels = tmp_path / "labels.txt"
    labels.write_text("food\nstaff\n\nwait\nview\n")
    out = tmp_path / "sets" / "pca.safetensors"
    argv = ["concepts", "import", str(source), "--out", str(out), "--model", "bert"]
    assert main([*argv, "--server", f"127.0.0.1:{running.port}", "--labels", str(labels)]) == 0
    assert f"wrote {out}: 4 concepts (linear, sklearn.decomposition.PCA)" in capsys.readouterr().out
    cs = load(out)
    assert cs.labels() == ["food", "staff", "wait", "view"]
    assert cs.model.labels == ("negative", "neutral", "positive")
    bert = registry.get("bert")
    assert cs.model.probe is not None
    np.testing.assert_allclose(cs.model.probe, probe_row(bert, PROBE_TEXT), rtol=1e-6)
    bind("pca", cs, bert, str(out))  # the probe, labels and size fit

    assert main(["concepts", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "model        bert (3 labels: negative, neutral, positive)" in shown
    assert "split point  classifier:input (32 features, fitted at cls_token)" in shown
    assert "probe        yes" in shown
    assert "     1  staff" in shown


def test_import_mistakes_are_one_line_and_write_nothing(
    tmp_path: Path,
    bert_server: tuple[RunningServer, Registry],
    capsys: pytest.CaptureFixture[str],
) -> None:
    running, _ = bert_server
    server = f"127.0.0.1:{running.port}"
    out = tmp_path / "out.safetensors"

    def fails(source_object: object, *extra: str) -> str:
        source = tmp_path / "source.pkl"
        source.write_bytes(pickle.dumps(source_object))
        argv = ["concepts", "import", str(source), "--out", str(out), "--server", server]
        assert main([*argv, "--model", "bert", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert not out.exists()
        return err

    rng = np.random.default_rng(0)
    small = PCA(3).fit(rng.normal(size=(20, 16)))
    assert (
        "the dictionary has 16 features; split point 'classifier:input' of model 'bert' has 32"
        in fails(small)
    )
    assert "is neither a scikit-learn decomposition nor an Interpreto" in fails({"a": 1})
    assert "FastICA is not fitted" in fails(FastICA(3))
    fitted = PCA(3).fit(rng.normal(size=(20, 32)))
    assert "NOT_FOUND: no model named 'nope'" in fails(fitted, "--model", "nope")
    assert "has no split point 'x'" in fails(fitted, "--split-point", "x")
    assert "2 labels for 3 concepts" in fails(fitted, "--labels", str(_lines(tmp_path, "a\nb\n")))


def _lines(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text(text)
    return path


def test_show_refuses_a_file_that_is_not_a_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"x")
    assert main(["concepts", "show", str(junk)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert isinstance(random_set("nnls", 4, 2), ConceptSet)
