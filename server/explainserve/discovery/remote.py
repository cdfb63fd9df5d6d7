"""The calls concept discovery makes to a running server, beside the bulk extraction
(`discovery.extract`): a model's metadata, a few inputs' rows, the head on rows, and concept
contributions with a set sent inline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.sets import ConceptSet
from explainserve.discovery.extract import GRANULARITIES, ExtractError, Servers, _decode, rpc_error
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


def _tensor(values: NDArray[np.float32]) -> pb.Tensor:
    x = np.ascontiguousarray(values, dtype="<f4")
    return pb.Tensor(dtype="float32", shape=list(x.shape), data=x.tobytes())


def inline_set(concept_set: ConceptSet) -> pb.InlineConceptSet:
    """A concept set as a request's inline set."""
    enc = concept_set.encoder
    kinds = {
        "linear": pb.CONCEPT_ENCODER_LINEAR,
        "relu": pb.CONCEPT_ENCODER_RELU,
        "topk": pb.CONCEPT_ENCODER_TOPK,
        "jumprelu": pb.CONCEPT_ENCODER_JUMPRELU,
        "nnls": pb.CONCEPT_ENCODER_NNLS,
    }
    message = pb.InlineConceptSet(
        split_point=concept_set.split_point,
        encoder=kinds[enc.kind],
        top_k=enc.top_k,
        relu_input=enc.relu_input,
        decoder_weight=_tensor(concept_set.decoder_weight),
        labels=concept_set.labels(),
    )
    for name, value in (
        ("encoder_weight", enc.weight),
        ("encoder_bias", enc.bias),
        ("encoder_center", enc.center),
        ("encoder_threshold", enc.threshold),
        ("decoder_bias", concept_set.decoder_bias),
    ):
        if value is not None:
            getattr(message, name).CopyFrom(_tensor(value))
    return message


class Remote:
    """One server (the first of `servers`) for the small calls."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self._channel = servers.channels()[0]
        self.stub = explain_pb2_grpc.ExplainServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self.servers.metadata, timeout=self.servers.timeout)
        except grpc.RpcError as e:
            raise rpc_error(self.servers, e) from None

    def model(self, name: str) -> pb.ModelInfo:
        """The model's metadata."""
        info: pb.ModelInfo = self._call(self.stub.GetModel, pb.GetModelRequest(name=name)).model
        return info

    def rows(self, model: str, texts: Sequence[str], split_point: str) -> NDArray[np.float32]:
        """`texts`' CLS_TOKEN rows at `split_point`, one per text."""
        request = pb.GetActivationsRequest(
            model=model,
            inputs=[pb.Input(text=t) for t in texts],
            split_points=[split_point],
            granularity=GRANULARITIES["cls"],
            omit_units=True,
            truncate=True,
        )
        try:
            chunks = list(
                self.stub.GetActivations(
                    request, metadata=self.servers.metadata, timeout=self.servers.timeout
                )
            )
        except grpc.RpcError as e:
            raise rpc_error(self.servers, e) from None
        return np.concatenate([_decode(c.activations[0].values) for c in chunks])

    def predict(self, model: str, rows: NDArray[np.float32]) -> NDArray[np.float32]:
        """The head's logits on rows of its input."""
        request = pb.PredictFromActivationsRequest(model=model, activations=_tensor(rows))
        return _decode(self._call(self.stub.PredictFromActivations, request).logits)

    def contributions(
        self, model: str, texts: Sequence[str], concept_set: ConceptSet, classes: int
    ) -> list[NDArray[np.float32]]:
        """Per text, `(classes, K)` raw contributions C ⊙ ∂(g∘t⁻¹)/∂C (every class), the set
        sent inline."""
        request = pb.ExplainConceptsRequest(
            model=model,
            inputs=[
                pb.Input(text=t, targets=[pb.Target(index=c) for c in range(classes)])
                for t in texts
            ],
            concepts=pb.ConceptSetRef(inline=inline_set(concept_set)),
            normalization=False,
            truncate=True,
        )
        reply = self._call(self.stub.ExplainConcepts, request)
        out = []
        for e in reply.explanations:
            out.append(
                np.stack([np.asarray(t.contributions.values, np.float32) for t in e.targets])
            )
        return out


def explain_limit_error(e: ExtractError) -> bool:
    """Whether a failed inline call was refused for the set's size (the server's
    max_inline_concept_values)."""
    return "the inline concept set has" in str(e)
