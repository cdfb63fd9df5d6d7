"""A real ExplainService on loopback, shared by the gRPC tests of a session.

The server binds port 0 and serves both tiny models ("bert": WordPiece with a mask token, "gpt2":
byte-level BPE without one). Its limits are small enough that a limit test can trip them
(`max_rows_per_input=1000`) and large enough for every other test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from concept_sets import served_concepts
from served import served_models

from explainserve.explain.limits import CausalLimits, Limits
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import RunningServer, start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: The server's limit on sequences per input; the limit test asks for more.
MAX_ROWS_PER_INPUT = 1000


@dataclass(frozen=True)
class LiveServer:
    """The running server, a client stub on it, and the domain `Explainer` it serves."""

    running: RunningServer
    channel: grpc.Channel
    stub: explain_pb2_grpc.ExplainServiceStub
    explainer: Explainer

    @property
    def port(self) -> int:
        """The port the server bound."""
        return self.running.port


@pytest.fixture(scope="session")
def live_server(tiny_bert_dir: Path, tiny_gpt2_dir: Path) -> Iterator[LiveServer]:
    """Starts the server once per session; stops it and closes the models at the end."""
    with served_models({"bert": tiny_bert_dir, "gpt2": tiny_gpt2_dir}) as registry:
        explainer = Explainer(
            registry, Limits(max_rows_per_input=MAX_ROWS_PER_INPUT), served_concepts(registry)
        )
        running = start(ServerOptions(port=0), explainer)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
                stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
                yield LiveServer(running, channel, stub, explainer)
        finally:
            running.stop(grace=None)


@pytest.fixture(scope="session")
def stub(live_server: LiveServer) -> explain_pb2_grpc.ExplainServiceStub:
    """A client of the shared server."""
    return live_server.stub


@pytest.fixture(scope="session")
def explainer(live_server: LiveServer) -> Explainer:
    """The domain object behind the shared server (same models, same worker threads)."""
    return live_server.explainer


@pytest.fixture
def assert_serving(stub: explain_pb2_grpc.ExplainServiceStub) -> Callable[[], None]:
    """A check that the server still answers a good request correctly (after a bad one)."""

    def check() -> None:
        for model in ("bert", "gpt2"):
            reply = stub.Explain(
                pb.ExplainRequest(
                    model=model, inputs=[pb.Input(text="Still serving.")], occlusion=pb.Occlusion()
                ),
                timeout=30,
            )
            (explanation,) = reply.explanations
            assert [u.text for u in explanation.units] == ["Still", "serving", "."]
            assert explanation.scores.rows == 1
            assert explanation.scores.cols == 3
            assert len(explanation.logits) == 3

    return check


@pytest.fixture(scope="module")
def lm_stub(
    tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path
) -> Iterator[explain_pb2_grpc.ExplainServiceStub]:
    """A server of the two tiny causal LMs ("gpt2-lm", "llama-lm") on a free port, one per test
    module, with continuations and generations limited to 20 tokens."""
    registry = Registry()
    try:
        registry.add(load_model(ModelConfig(name="gpt2-lm", path=tiny_gpt2_lm_dir, device="cpu")))
        registry.add(load_model(ModelConfig(name="llama-lm", path=tiny_llama_lm_dir, device="cpu")))
        limits = Limits(causal=CausalLimits(max_new_tokens=20, max_continuation_tokens=20))
        running = start(ServerOptions(port=0), Explainer(registry, limits))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
                yield explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        finally:
            running.stop(grace=None)
    finally:
        registry.close()
