"""The examples of the three client packages (Python, Go, TypeScript) explain a sentence against a
real server and print the scores the Python client gets for the same request.

The Go and Node toolchains come from `make clients` (part of `make test`): Go's module cache and
build cache, clients/node/node_modules from its package-lock.json."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from client_server import ClientServer
from tools import missing_tool

from explainserve_client import Client

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
TEXT = "The food was cold and the service was slow."
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


def python_example(target: str) -> list[str]:
    return [sys.executable, str(ROOT / "clients/python/examples/explain.py"), "--target", target]


def go_example(target: str) -> list[str]:
    return [need("go"), "run", "./examples/explain", "--target", target]


def node_example(target: str) -> list[str]:
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        missing_tool(f"{tsc} is missing: run `make clients` (npm ci in clients/node)")
    # Type-checks the example and the generated code, and compiles them to clients/node/dist.
    subprocess.run([str(tsc), "-p", str(NODE_DIR)], check=True, timeout=BUILD_TIMEOUT, cwd=NODE_DIR)
    return [need("node"), str(NODE_DIR / "dist/examples/explain.js"), "--target", target]


EXAMPLES = {
    "python": (python_example, ROOT),
    "go": (go_example, ROOT / "clients" / "go"),
    "node": (node_example, NODE_DIR),
}


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


@pytest.mark.slow
@pytest.mark.parametrize("language", list(EXAMPLES))
def test_example_prints_the_python_clients_scores(
    client_server: ClientServer, language: str
) -> None:
    command, cwd = EXAMPLES[language]
    env = {
        **os.environ,
        "EXPLAINSERVE_TOKEN": client_server.token,
        "PYTHONPATH": str(ROOT / "clients" / "python" / "src"),
    }
    out = subprocess.run(
        [*command(client_server.target), "--model", "bert", TEXT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    predicted, explained, units = parse(out.stdout)

    with Client(client_server.target, token=client_server.token) as client:
        (e,) = client.explain("bert", TEXT, method="occlusion", granularity="word")
    assert predicted == e.predicted_label
    assert explained == e.targets[0].label
    assert [text for text, _ in units] == e.unit_texts
    assert len(e.unit_texts) == 10
    for (text, score), expected in zip(units, e.scores[0], strict=True):
        assert score == pytest.approx(float(expected), abs=TOLERANCE), text
