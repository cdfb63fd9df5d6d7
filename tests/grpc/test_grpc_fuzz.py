"""Fuzz of the request surface: hypothesis builds Explain, GetActivations and
PredictFromActivations requests over every proto field (unknown models and enum values, NaN and
infinite floats, empty and odd texts, ids outside the vocabulary, ragged masks, bad tensors,
truncation), Explain requests for causal LMs (continuations as text or ids or none,
generation parameters, targets where none belong), and concept requests (ExplainConcepts and
concept targets: served, unknown and inline sets of any encoder, shape and value). The server
answers each with a result or a client-error status: never INTERNAL or UNKNOWN, never a crash
(the servers keep serving)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st

from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}

# Mostly plausible values, so that most requests reach the model; sometimes anything.
models = st.sampled_from(["bert", "bert", "gpt2", "gpt2", "gpt2", "", "nope"])
enums = st.integers(0, 3) | st.integers(0, 3) | st.integers(-2, 9)
floats = st.sampled_from([0.1, 0.5, 1.0, 2.0]) | st.floats(width=32)
small = st.integers(0, 40)
words = st.sampled_from(["Hello", "world", "good", "bad", ".", "!", "é", "😀", "我", " ", "\n"])
texts = (
    st.lists(words, min_size=1, max_size=12).map(" ".join)
    | st.lists(words, max_size=12).map("".join)
    | st.text(max_size=30)
)
ids = st.lists(st.integers(100, 2000), min_size=1, max_size=14) | st.lists(
    st.integers(-3, 60_000), max_size=14
)
masks = st.just([]) | st.lists(st.integers(0, 1), max_size=14) | st.lists(st.integers(-1, 2))
targets = st.lists(
    st.builds(pb.Target, index=st.integers(-2, 4))
    | st.builds(pb.Target, label=st.sampled_from(["positive", "neutral", "nope", ""])),
    max_size=3,
) | st.just([])
inputs = st.lists(
    st.builds(pb.Input, text=texts, targets=targets)
    | st.builds(
        pb.Input,
        token_ids=st.builds(pb.TokenIds, ids=ids, attention_mask=masks),
        targets=targets,
    )
    | st.just(pb.Input()),
    min_size=1,
    max_size=3,
) | st.lists(st.builds(pb.Input, text=texts), max_size=2)


def opt(**strategies: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    """Each field set or left unset."""
    return st.fixed_dictionaries({}, optional=strategies)


methods = st.one_of(
    st.just({"occlusion": pb.Occlusion()}),
    opt(
        n_perturbations=small,
        perturb_probability=floats,
        distance=enums,
        kernel_width=floats,
        alpha=floats,
    ).map(lambda f: {"lime": pb.Lime(**f)}),
    opt(n_perturbations=small).map(lambda f: {"kernel_shap": pb.KernelShap(**f)}),
    opt(n_points=st.integers(0, 6), order=enums, sampler=enums).map(
        lambda f: {"sobol": pb.Sobol(**f)}
    ),
    opt(reduction=enums).map(lambda f: {"saliency": pb.Saliency(**f)}),
    opt(reduction=enums).map(lambda f: {"input_x_gradient": pb.InputXGradient(**f)}),
    opt(n_steps=small, baseline=enums, rule=enums, reduction=enums).map(
        lambda f: {"integrated_gradients": pb.IntegratedGradients(**f)}
    ),
    *[
        opt(n_samples=st.integers(0, 6), noise_std=floats, reduction=enums).map(
            lambda f, name=name, message=message: {name: message(**f)}
        )
        for name, message in [
            ("smooth_grad", pb.SmoothGrad),
            ("square_grad", pb.SquareGrad),
            ("var_grad", pb.VarGrad),
        ]
    ],
    opt(n_samples=st.integers(0, 6), noise_std=floats, baseline=enums, reduction=enums).map(
        lambda f: {"gradient_shap": pb.GradientShap(**f)}
    ),
    st.just({}),
)


def explain_requests_of(
    model_names: st.SearchStrategy[str],
    request_inputs: st.SearchStrategy[list[pb.Input]],
    **fields: st.SearchStrategy[object],
) -> st.SearchStrategy[pb.ExplainRequest]:
    """Explain requests: a model, inputs, a method and any of the common fields (and `fields`)."""
    return st.builds(
        lambda model, inputs, method, rest: pb.ExplainRequest(
            model=model, inputs=inputs, **method, **rest
        ),
        model_names,
        request_inputs,
        methods,
        opt(
            granularity=enums,
            aggregation=enums,
            inference_mode=enums,
            seed=st.integers(0, 2**64 - 1),
            truncate=st.booleans(),
            isolate_batches=st.booleans(),
            **fields,
        ),
    )


explain_requests = explain_requests_of(models, inputs)

activation_requests = st.builds(
    lambda model, inputs, rest: pb.GetActivationsRequest(model=model, inputs=inputs, **rest),
    models,
    inputs,
    opt(
        split_points=st.lists(
            st.sampled_from(["bert.encoder.layer.0", "classifier:input", "score:input", "x", ""]),
            max_size=2,
        ),
        granularity=enums,
        aggregation=enums,
        dtype=st.sampled_from(["", "float32", "float16", "bfloat16", "int8", "f4"]),
        include_predictions=st.booleans(),
        omit_units=st.booleans(),
        truncate=st.booleans(),
    ),
)

tensors = st.builds(
    pb.Tensor,
    dtype=st.sampled_from(["", "float32", "float16", "bfloat16", "int64"]),
    shape=st.lists(st.integers(0, 40), max_size=3),
    data=st.binary(max_size=300),
)
head_requests = st.builds(
    lambda model, t: pb.PredictFromActivationsRequest(model=model, activations=t),
    models,
    tensors,
)


# Concept sets: the shared server's (tests/concept_sets.py `CONCEPT_SETS`), unknown ones, and
# inline sets with any encoder kind, top_k and tensors (right-sized ones often enough that some
# reach the model).
sized = st.builds(
    lambda rows, cols, fill: pb.Tensor(
        dtype="float32",
        shape=[rows, cols],
        data=np.full((rows, cols), fill, dtype="<f4").tobytes(),
    ),
    st.sampled_from([1, 3, 6]),
    st.sampled_from([32, 32, 31]),
    st.sampled_from([0.1, -0.5, 0.0, float("nan"), float("inf")]),
)
inline_sets = st.builds(
    lambda f: pb.InlineConceptSet(**f),
    opt(
        split_point=st.sampled_from(["", "classifier:input", "score:input", "bert.pooler", "x"]),
        encoder=enums | st.integers(4, 6),
        encoder_weight=sized | tensors,
        encoder_bias=tensors,
        encoder_center=tensors,
        encoder_threshold=tensors,
        top_k=st.integers(0, 8),
        relu_input=st.booleans(),
        decoder_weight=sized | tensors,
        decoder_bias=tensors,
        labels=st.lists(st.sampled_from(["a", "", "é"]), max_size=4),
    ),
)
concept_refs = (
    st.builds(
        pb.ConceptSetRef,
        name=st.sampled_from(["bert-relu", "bert-layer", "gpt2-nnls", "nope", ""]),
    )
    | st.builds(pb.ConceptSetRef, inline=inline_sets)
    | st.just(pb.ConceptSetRef())
)
concept_requests = st.builds(
    lambda model, inputs, concepts, rest: pb.ExplainConceptsRequest(
        model=model, inputs=inputs, concepts=concepts, **rest
    ),
    models,
    inputs,
    concept_refs,
    opt(
        inference_mode=enums,
        concepts_x_gradients=st.booleans(),
        normalization=st.booleans(),
        granularity=enums,
        aggregation=enums,
        truncate=st.booleans(),
        isolate_batches=st.booleans(),
        priority=enums,
    ),
)
concept_targets = st.builds(
    lambda concepts, explained: pb.ConceptTarget(concepts=concepts, concepts_explained=explained),
    concept_refs,
    targets | st.lists(st.builds(pb.Target, label=st.sampled_from(["c0", "c5", "x"])), max_size=2),
)
concept_target_requests = explain_requests_of(models, inputs, concept_target=concept_targets)

lm_models = st.sampled_from(["gpt2-lm", "gpt2-lm", "llama-lm", "llama-lm", "bert", "nope"])
continuations = (
    st.builds(pb.Continuation, text=texts)
    | st.builds(pb.Continuation, token_ids=st.builds(pb.TokenIds, ids=ids, attention_mask=masks))
    | st.just(pb.Continuation())
)
lm_inputs = st.lists(
    st.builds(
        lambda prompt, continuation, with_continuation, t: pb.Input(
            text=prompt,
            targets=t,
            **({"continuation": continuation} if with_continuation else {}),
        ),
        texts,
        continuations,
        st.booleans(),
        st.just([]) | targets,
    )
    | st.builds(
        pb.Input,
        token_ids=st.builds(pb.TokenIds, ids=ids, attention_mask=masks),
        continuation=continuations,
    ),
    min_size=1,
    max_size=3,
)
generations = st.builds(
    lambda f: pb.Generation(**f),
    opt(
        max_new_tokens=st.integers(0, 40),
        do_sample=st.booleans(),
        temperature=floats,
        top_p=floats,
    ),
)
causal_requests = explain_requests_of(
    lm_models, lm_inputs, generation=generations, prompt_units_only=st.booleans()
)


def answered(call: Callable[[], object]) -> None:
    code, details = grpc.StatusCode.OK, ""
    try:
        call()
    except grpc.RpcError as err:
        code, details = err.code(), err.details()
    event(code.name)  # pytest --hypothesis-show-statistics: the spread of outcomes
    assert code == grpc.StatusCode.OK or code in CLIENT_ERRORS, (code, details)


@given(request=explain_requests)
def test_explain_never_fails_internally(
    stub: explain_pb2_grpc.ExplainServiceStub, request: pb.ExplainRequest
) -> None:
    answered(lambda: stub.Explain(request, timeout=60))


@given(request=explain_requests)
def test_explain_stream_never_fails_internally(
    stub: explain_pb2_grpc.ExplainServiceStub, request: pb.ExplainRequest
) -> None:
    stream = pb.ExplainStreamRequest(request=request)
    answered(lambda: list(stub.ExplainStream(stream, timeout=60)))


@given(request=activation_requests)
def test_get_activations_never_fails_internally(
    stub: explain_pb2_grpc.ExplainServiceStub, request: pb.GetActivationsRequest
) -> None:
    answered(lambda: list(stub.GetActivations(request, timeout=60)))


@given(request=head_requests)
def test_predict_from_activations_never_fails_internally(
    stub: explain_pb2_grpc.ExplainServiceStub, request: pb.PredictFromActivationsRequest
) -> None:
    answered(lambda: stub.PredictFromActivations(request, timeout=60))


@given(request=concept_requests)
def test_explain_concepts_never_fails_internally(
    stub: explain_pb2_grpc.ExplainServiceStub, request: pb.ExplainConceptsRequest
) -> None:
    answered(lambda: stub.ExplainConcepts(request, timeout=60))


@given(request=concept_target_requests)
def test_explain_with_a_concept_target_never_fails_internally(
    stub: explain_pb2_grpc.ExplainServiceStub, request: pb.ExplainRequest
) -> None:
    answered(lambda: stub.Explain(request, timeout=60))


@given(request=causal_requests)
def test_causal_explain_never_fails_internally(
    lm_stub: explain_pb2_grpc.ExplainServiceStub, request: pb.ExplainRequest
) -> None:
    answered(lambda: lm_stub.Explain(request, timeout=60))
    reply = lm_stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert {m.name for m in reply.models} == {"gpt2-lm", "llama-lm"}  # still serving


def test_the_server_still_serves_after_the_fuzz(assert_serving: Callable[[], None]) -> None:
    assert_serving()
