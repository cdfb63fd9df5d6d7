"""A live server for the viewer's tests: the tiny BERT classifier ("bert", labels negative /
neutral / positive) and the built-in tiny GPT-2 LM ("writer", built into this session's temp
cache), on loopback port 0; and a helper that runs `explainserve explain` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, start
from explainserve.models.builtin import tiny_gpt2_dir
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry


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
        running = start(ServerOptions(port=0), Explainer(registry))
        try:
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
