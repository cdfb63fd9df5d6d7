"""The examples of the three client packages (Python, Go, TypeScript) against a real server print
what the Python client gets for the same request: `explain` a sentence's word scores, `concepts`
the strongest concepts of a concept set (ExplainConcepts) on the default model, per sentence.

The Go and Node toolchains come from `make clients` (part of `make test`): Go's module cache and
build cache, clients/node/node_modules from its package-lock.json."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from client_server import CONCEPT_SET, ClientServer
from tools import missing_tool

from explainserve.config import DEFAULT_MODEL_NAME
from explainserve_client import Client

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
TEXT = "The food was cold and the service was slow."
#: The concept example's sentences: both classes, one of them twice over.
CONCEPT_TEXTS = [
    "The food was cold and the service was slow.",
    "The staff were lovely and the view was wonderful.",
    "It broke after two days and support never answered.",
]
#: Concepts the concept example prints per sentence.
TOP = 4
#: The examples print float32 scores in full (shortest round-trip form); 1e-6 allows for nothing
#: but a printing difference, the scores themselves are the same float32 values.
TOLERANCE = 1e-6
#: Compiling the Go example the first time builds gRPC (a minute or more on 2 busy cores).
BUILD_TIMEOUT = 600


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        missing_tool(f"{tool} is not on PATH: the client examples' tests need Go and Node 20")
    return path


def python_example(name: str, target: str) -> list[str]:
    return [sys.executable, str(ROOT / f"clients/python/examples/{name}.py"), "--target", target]


def go_example(name: str, target: str) -> list[str]:
    return [need("go"), "run", f"./examples/{name}", "--target", target]


def node_example(name: str, target: str) -> list[str]:
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        missing_tool(f"{tsc} is missing: run `make clients` (npm ci in clients/node)")
    # Type-checks the examples and the generated code, and compiles them to clients/node/dist.
    subprocess.run([str(tsc), "-p", str(NODE_DIR)], check=True, timeout=BUILD_TIMEOUT, cwd=NODE_DIR)
    return [need("node"), str(NODE_DIR / f"dist/examples/{name}.js"), "--target", target]


EXAMPLES = {
    "python": (python_example, ROOT),
    "go": (go_example, ROOT / "clients" / "go"),
    "node": (node_example, NODE_DIR),
}


def run_example(language: str, name: str, server: ClientServer, args: list[str]) -> str:
    """Example `name` of `language` run against `server` with `args`; its stdout."""
    command, cwd = EXAMPLES[language]
    env = {
        **os.environ,
        "EXPLAINSERVE_TOKEN": server.token,
        "PYTHONPATH": str(ROOT / "clients" / "python" / "src"),
    }
    out = subprocess.run(
        [*command(name, server.target), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def parse(stdout: str) -> tuple[str, str, list[tuple[str, float]]]:
    """The predicted label, the explained label and the (unit, score) lines of an example."""
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("predicted: "), stdout
    assert lines[1].startswith("explained: "), stdout
    predicted = lines[0].removeprefix("predicted: ").split(" (")[0]
    explained = lines[1].removeprefix("explained: ")
    units = []
    for line in lines[2:]:
        text, _, score = line.rpartition("\t")
        units.append((text, float(score)))
    return predicted, explained, units


@dataclass
class ConceptBlock:
    """What the concept example prints for one input."""

    index: int
    text: str
    predicted: str
    explained: str
    residual: float
    #: (label, signed contribution), strongest first.
    top: list[tuple[str, float]]


def parse_concepts(stdout: str) -> list[ConceptBlock]:
    """The concept example's blocks: "input N: TEXT", "predicted: ", "explained: ",
    "residual: ", then one "label<TAB>contribution" line per concept."""
    blocks: list[ConceptBlock] = []
    lines = stdout.strip().splitlines()
    while lines:
        head, predicted, explained, residual, *lines = lines
        assert head.startswith("input "), stdout
        index, _, text = head.removeprefix("input ").partition(": ")
        assert predicted.startswith("predicted: "), stdout
        assert explained.startswith("explained: "), stdout
        assert residual.startswith("residual: "), stdout
        top = []
        while lines and not lines[0].startswith("input "):
            label, _, value = lines.pop(0).rpartition("\t")
            top.append((label, float(value)))
        blocks.append(
            ConceptBlock(
                index=int(index),
                text=text,
                predicted=predicted.removeprefix("predicted: "),
                explained=explained.removeprefix("explained: "),
                residual=float(residual.removeprefix("residual: ")),
                top=top,
            )
        )
    return blocks


@pytest.mark.slow
@pytest.mark.parametrize("language", list(EXAMPLES))
def test_example_prints_the_python_clients_scores(
    client_server: ClientServer, language: str
) -> None:
    stdout = run_example(language, "explain", client_server, ["--model", "bert", TEXT])
    predicted, explained, units = parse(stdout)

    with Client(client_server.target, token=client_server.token) as client:
        (e,) = client.explain("bert", TEXT, method="occlusion", granularity="word")
    assert predicted == e.predicted_label
    assert explained == e.targets[0].label
    assert [text for text, _ in units] == e.unit_texts
    assert len(e.unit_texts) == 10
    for (text, score), expected in zip(units, e.scores[0], strict=True):
        assert score == pytest.approx(float(expected), abs=TOLERANCE), text


@pytest.mark.slow
@pytest.mark.parametrize("language", list(EXAMPLES))
def test_concept_example_prints_the_python_clients_contributions(
    concept_server: ClientServer, language: str
) -> None:
    # No --concepts: the example takes the model's first (only) set from GetModel.
    stdout = run_example(language, "concepts", concept_server, ["--top", str(TOP), *CONCEPT_TEXTS])
    blocks = parse_concepts(stdout)

    with Client(concept_server.target, token=concept_server.token) as client:
        explanations = client.explain_concepts(
            DEFAULT_MODEL_NAME, CONCEPT_TEXTS, concepts=CONCEPT_SET
        )
    assert [b.index for b in blocks] == [0, 1, 2]
    assert {e.predicted_label for e in explanations} == {"negative", "positive"}
    for block, e in zip(blocks, explanations, strict=True):
        assert block.text == e.text
        assert block.predicted == e.predicted_label
        assert block.explained == e.targets[0].label == e.predicted_label
        assert block.residual == pytest.approx(float(e.residuals[0]), abs=TOLERANCE)
        # The strongest concepts by |contribution|, computed here from the client's arrays.
        values = e.contributions[0].sum(axis=0)
        order = np.argsort(-np.abs(values), kind="stable")[:TOP]
        assert [label for label, _ in block.top] == [e.concept_labels[k] for k in order]
        for (label, value), k in zip(block.top, order, strict=True):
            assert value == pytest.approx(float(values[k]), abs=TOLERANCE), label
