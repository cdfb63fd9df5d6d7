"""The servers the client packages' tests call (started by tests/clients/conftest.py), and the
concept sets they serve."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from sklearn.decomposition import PCA

from explainserve.concepts import convert
from explainserve.concepts.registry import bind
from explainserve.concepts.sets import ModelBinding, load, with_labels
from explainserve.explain.service import Explainer
from explainserve.grpc.server import RunningServer
from explainserve_client import Client, Explanation, pb
from explainserve_client.v1 import explain_pb2_grpc

TOKEN = "client-test-token"
#: The concept examples' server: its concept set's name and size, and how many held-out
#: sentences it is fitted on.
CONCEPT_SET = "pca8"
N_CONCEPTS = 8
N_FIT_TEXTS = 48
#: Inputs per GetActivations chunk.
CHUNK_INPUTS = 2


@dataclass(frozen=True)
class ClientServer:
    """The running server, the address clients dial and the token it wants."""

    running: RunningServer
    explainer: Explainer
    token: str = TOKEN

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.running.port}"


def serve_pca_set(
    server: ClientServer, model: str, name: str, texts: Sequence[str], n_concepts: int, path: Path
) -> PCA:
    """Fits a PCA of `n_concepts` components on the head-input rows of `texts` (GetActivations'
    default split point, through the light client), writes it as a concept set file at `path`
    (concepts labelled "pc0", "pc1", ...) and serves the file as `name`, read back as
    `explainserve serve --concepts NAME=PATH` reads it. Returns the fitted PCA."""
    with Client(server.target, token=server.token) as client:
        acts = client.activations(model, list(texts))
        info = client.get_model(model)
    # One split point asked for (the head's input), one row per input.
    ((head, rows),) = acts.values.items()
    pca = PCA(n_concepts, random_state=0).fit(rows)
    concept_set = convert.from_sklearn(
        pca, ModelBinding(name=model, labels=info.labels), split_point=head
    )
    with_labels(concept_set, [f"pc{k}" for k in range(n_concepts)]).save(path)
    explainer = server.explainer
    explainer.concepts.add(bind(name, load(path), explainer.registry.get(model), str(path)))
    return pca


def raw_call(server: ClientServer, method: str, request: Any) -> Any:
    """The same request through the generated stub's unary `method`, with the token by hand."""
    with grpc.insecure_channel(server.target) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        return getattr(stub, method)(
            request, timeout=60, metadata=[("authorization", f"Bearer {server.token}")]
        )


def assert_same(e: Explanation, proto: pb.Explanation) -> None:
    """The client's Explanation holds exactly what the message holds."""
    assert e.input_index == proto.input_index
    assert e.text == proto.text
    assert [(u.text, u.start, u.end, list(u.token_indices)) for u in e.units] == [
        (u.text, u.char_start, u.char_end, list(u.token_indices)) for u in proto.units
    ]
    assert [(t.index, t.label) for t in e.targets] == [(t.index, t.label) for t in proto.targets]
    assert e.scores.dtype == np.float32
    assert e.scores.shape == (proto.scores.rows, proto.scores.cols)
    # Both are the float32 values of the same message: bit for bit.
    assert e.scores.ravel().tolist() == list(proto.scores.values)
    assert e.logits.tolist() == list(proto.logits)
    assert e.token_ids.tolist() == list(proto.token_ids)
    assert e.forward_passes == proto.counters.forward_passes
    assert e.concept_activations.tolist() == list(proto.concept_activations)


@contextmanager
def handler_server(handler: grpc.GenericRpcHandler) -> Iterator[str]:
    """A bare gRPC server of `handler` on loopback (a stand-in for the real one) until the block
    ends; yields the address to dial."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
