"""`make run`'s job end to end: the CLI with no --model serves the embedded default classifier
(built into a fresh cache here), answers real explanations, and drains on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from explainserve.launch import spawn_serve
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], int]]:
    cache = tmp_path_factory.mktemp("default-cache")
    try:
        proc, port = spawn_serve(
            ["--port", "0", "--device", "cpu"],
            env={"EXPLAINSERVE_CACHE_DIR": str(cache)},
            timeout=300,
        )
    except RuntimeError as err:
        pytest.fail(str(err))
    # The default model was built into the test's cache, not the user's.
    assert any(Path(cache).rglob("model.safetensors"))
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serves_the_default_sentiment_model(server: tuple[subprocess.Popen[str], int]) -> None:
    _, port = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        stub = explain_pb2_grpc.ExplainServiceStub(channel)
        (model,) = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        assert model.name == "minilm-sentiment"
        assert model.task == "sequence-classification"
        assert list(model.labels) == ["negative", "positive"]
        assert model.replacement == "mask_token"
        assert model.max_length == 512
        assert any(s.name == "bert.pooler" for s in model.split_points)

        negative = "The service was terrible and the food was cold."
        positive = "The food was absolutely wonderful and the staff were lovely."
        reply = stub.Explain(
            pb.ExplainRequest(
                model=model.name,
                inputs=[pb.Input(text=negative)],
                occlusion=pb.Occlusion(),
                granularity=pb.GRANULARITY_WORD,
            ),
            timeout=60,
        )
        (e,) = reply.explanations
        assert [t.label for t in e.targets] == ["negative"]
        words = [u.text for u in e.units]
        assert words == [
            "The",
            "service",
            "was",
            "terrible",
            "and",
            "the",
            "food",
            "was",
            "cold",
            ".",
        ]
        assert words[max(range(len(words)), key=lambda i: e.scores.values[i])] == "terrible"

        reply = stub.Explain(
            pb.ExplainRequest(
                model=model.name,
                inputs=[pb.Input(text=positive)],
                integrated_gradients=pb.IntegratedGradients(n_steps=32),
                granularity=pb.GRANULARITY_WORD,
            ),
            timeout=60,
        )
        (e,) = reply.explanations
        assert [t.label for t in e.targets] == ["positive"]
        words = [u.text for u in e.units]
        assert words[max(range(len(words)), key=lambda i: e.scores.values[i])] == "wonderful"


def test_readme_explain_command_writes_a_page(
    server: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    """README's `explainserve explain "The food was cold" --html out.html` (here with the
    test server's port): the page shows the words and the label."""
    _, port = server
    done = subprocess.run(
        [
            sys.executable, "-m", "explainserve.cli", "explain", "The food was cold",
            "--html", "out.html", "--server", f"127.0.0.1:{port}",
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "predicted: negative" in done.stdout
    page = (tmp_path / "out.html").read_text()
    for word in ("The", "food", "was", "cold"):
        assert f">{word}</span>" in page
    assert "predicted: <b>negative</b>" in page


def test_sigterm_drains_and_exits_zero(server: tuple[subprocess.Popen[str], int]) -> None:
    proc, _ = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
