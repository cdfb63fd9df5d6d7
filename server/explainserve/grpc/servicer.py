"""ExplainService: proto in, domain call, proto out; errors through the status table."""

from __future__ import annotations

import contextvars
import dataclasses
import queue
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import TypeVar

import grpc

from explainserve.activations.params import ActivationParams
from explainserve.activations.service import Activator
from explainserve.concepts.params import ConceptParams
from explainserve.concepts.service import ConceptExplainer
from explainserve.errors import ResourceExhausted
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.service import Explainer
from explainserve.grpc import convert
from explainserve.grpc.status import abort
from explainserve.inputs import fit_inputs
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

P = TypeVar("P", ExplainParams, ActivationParams, ConceptParams)


class ExplainServicer(explain_pb2_grpc.ExplainServiceServicer):
    """The gRPC face of an `Explainer` and an `Activator` (on the same registry)."""

    def __init__(
        self,
        explainer: Explainer,
        activator: Activator | None = None,
        max_tokens_per_input: int = 0,
        max_response_bytes: int = 0,
        concept_explainer: ConceptExplainer | None = None,
    ) -> None:
        self.explainer = explainer
        self.activator = activator or Activator(explainer.registry)
        self.concept_explainer = concept_explainer or ConceptExplainer(
            explainer.registry, explainer.concepts
        )
        #: The server's token limit per input (0 = each model's maximum).
        self.max_tokens_per_input = max_tokens_per_input
        #: The largest message the server sends (its max_message_bytes; 0 = unchecked here).
        self.max_response_bytes = max_response_bytes

    def _check_size(
        self,
        message: pb.ExplainResponse | pb.ExplainStreamResponse | pb.ExplainConceptsResponse,
    ) -> None:
        """A clear RESOURCE_EXHAUSTED (and an error in the metrics, not an OK) for a reply
        gRPC would refuse to send."""
        size = message.ByteSize()
        if self.max_response_bytes and size > self.max_response_bytes:
            raise ResourceExhausted(
                f"the response is {size} bytes, over the server's max_message_bytes "
                f"({self.max_response_bytes}): explain fewer inputs per request, or use "
                "ExplainStream (one message per input)"
            )

    def _fit(self, params: P, truncate: bool) -> P:
        """`params` with its inputs within the character and token limits (cut when
        `truncate`): the first thing every RPC with inputs does, before any tokenizing."""
        model = self.explainer.registry.get(params.model)
        inputs = fit_inputs(model, params.inputs, self.max_tokens_per_input, truncate=truncate)
        return dataclasses.replace(params, inputs=inputs)

    def Explain(  # noqa: N802 (gRPC method name)
        self, request: pb.ExplainRequest, context: grpc.ServicerContext
    ) -> pb.ExplainResponse:
        """All inputs' explanations, in request order."""
        try:
            params = self._fit(convert.params_from_proto(request), request.truncate)
            done = sorted(
                self.explainer.explain(params, is_cancelled=lambda: not context.is_active()),
                key=lambda e: e.input_index,
            )
            response = pb.ExplainResponse(
                model=request.model, explanations=[convert.explanation_to_proto(e) for e in done]
            )
            self._check_size(response)
            return response
        except Exception as exc:
            abort(context, exc)

    def ExplainStream(  # noqa: N802 (gRPC method name)
        self, request: pb.ExplainStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExplainStreamResponse]:
        """Progress events and each input's explanation as soon as it is finished."""
        events: queue.Queue[pb.ExplainStreamResponse | BaseException | None] = queue.Queue()

        def on_progress(done: int, total: int) -> None:
            events.put(
                pb.ExplainStreamResponse(
                    progress=pb.Progress(forward_passes_done=done, forward_passes_total=total)
                )
            )

        def produce() -> None:
            try:
                params = self._fit(
                    convert.params_from_proto(request.request), request.request.truncate
                )
                explanation: Explanation
                for explanation in self.explainer.explain(
                    params,
                    on_progress=on_progress,
                    is_cancelled=lambda: not context.is_active(),
                ):
                    message = pb.ExplainStreamResponse(
                        explanation=convert.explanation_to_proto(explanation)
                    )
                    self._check_size(message)
                    events.put(message)
            except BaseException as exc:
                events.put(exc)
            finally:
                events.put(None)

        # In a copy of this thread's context: the jobs it queues belong to this RPC's trace.
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(produce,),
            name="explain-stream",
            daemon=True,
        ).start()
        while True:
            event = events.get()
            if event is None:
                return
            if isinstance(event, BaseException):
                abort(context, event)
            yield event

    def ListModels(  # noqa: N802 (gRPC method name)
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every loaded model."""
        concepts = self.explainer.concepts
        return pb.ListModelsResponse(
            models=[
                convert.model_to_proto(m, concepts.of_model(m.name))
                for m in self.explainer.registry.list()
            ]
        )

    def GetModel(  # noqa: N802 (gRPC method name)
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.GetModelResponse:
        """One model's metadata; NOT_FOUND lists the loaded models."""
        try:
            served = self.explainer.registry.get(request.name)
            return pb.GetModelResponse(
                model=convert.model_to_proto(served, self.explainer.concepts.of_model(served.name)),
                batching=convert.batching_to_proto(served),
            )
        except Exception as exc:
            abort(context, exc)

    def GetActivations(  # noqa: N802 (gRPC method name)
        self, request: pb.GetActivationsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetActivationsResponse]:
        """Chunks of consecutive inputs' activations, in request order. The domain generator
        computes a bounded number of chunks ahead of the one gRPC is writing (backpressure)."""
        try:
            params = self._fit(convert.activation_params_from_proto(request), request.truncate)
            chunks = self.activator.get_activations(
                params,
                is_cancelled=lambda: not context.is_active(),
            )
            with closing(chunks):
                for chunk in chunks:
                    yield convert.activation_chunk_to_proto(chunk)
        except Exception as exc:
            abort(context, exc)

    def PredictFromActivations(  # noqa: N802 (gRPC method name)
        self, request: pb.PredictFromActivationsRequest, context: grpc.ServicerContext
    ) -> pb.PredictFromActivationsResponse:
        """The classification head's logits for rows of activations at its input."""
        try:
            prediction = self.activator.predict_from_activations(
                convert.head_params_from_proto(request),
                is_cancelled=lambda: not context.is_active(),
            )
            return convert.head_prediction_to_proto(prediction)
        except Exception as exc:
            abort(context, exc)

    def ExplainConcepts(  # noqa: N802 (gRPC method name)
        self, request: pb.ExplainConceptsRequest, context: grpc.ServicerContext
    ) -> pb.ExplainConceptsResponse:
        """Every input's concept activations and contributions, in request order."""
        try:
            params = self._fit(convert.concept_params_from_proto(request), request.truncate)
            bound = self.concept_explainer.resolve(
                self.explainer.registry.get(params.model), params.concepts
            )
            done = sorted(
                self.concept_explainer.explain(
                    params, bound=bound, is_cancelled=lambda: not context.is_active()
                ),
                key=lambda e: e.input_index,
            )
            response = pb.ExplainConceptsResponse(
                model=request.model,
                concept_set=bound.name,
                concept_labels=bound.labels,
                explanations=[convert.concept_explanation_to_proto(e) for e in done],
            )
            self._check_size(response)
            return response
        except Exception as exc:
            abort(context, exc)
