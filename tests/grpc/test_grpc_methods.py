"""Every method is one object: the registry, the proto's `method` oneof and each method's
parameters stay in step, and an unset proto field takes the method's own default."""

from __future__ import annotations

import dataclasses

import pytest

from explainserve.errors import InvalidArgument
from explainserve.explain.method import methods
from explainserve.grpc.convert import generation_from_proto, method_from_proto
from explainserve.v1 import explain_pb2 as pb

ONEOF = [f.name for f in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields]


def test_registry_serves_exactly_the_proto_methods() -> None:
    assert sorted(methods()) == sorted(ONEOF)
    assert len(ONEOF) == 11
    for name, cls in methods().items():
        assert cls.name == name


@pytest.mark.parametrize("name", ONEOF)
def test_every_proto_field_is_a_parameter(name: str) -> None:
    """A proto field without a dataclass field of the same name would be silently ignored."""
    message = pb.ExplainRequest.DESCRIPTOR.fields_by_name[name].message_type
    parameters = {f.name for f in dataclasses.fields(methods()[name])}
    assert {f.name for f in message.fields} <= parameters


@pytest.mark.parametrize("name", ONEOF)
def test_unset_fields_take_the_method_defaults(name: str) -> None:
    request = pb.ExplainRequest()
    getattr(request, name).SetInParent()
    assert method_from_proto(request) == methods()[name]()


def test_set_fields_are_converted() -> None:
    request = pb.ExplainRequest(
        lime=pb.Lime(
            n_perturbations=7,
            perturb_probability=0.25,
            distance=pb.LIME_DISTANCE_HAMMING,
            kernel_width=2.0,
            alpha=0.0,
        )
    )
    lime = methods()["lime"]
    assert method_from_proto(request) == lime(
        n_perturbations=7, perturb_probability=0.25, distance="hamming", kernel_width=2.0, alpha=0.0
    )
    request = pb.ExplainRequest(
        gradient_shap=pb.GradientShap(
            n_samples=3,
            noise_std=0.0,
            baseline=pb.BASELINE_REPLACEMENT,
            reduction=pb.GRADIENT_REDUCTION_MEAN_ABS,
        )
    )
    shap = methods()["gradient_shap"]
    assert method_from_proto(request) == shap(
        n_samples=3, noise_std=0.0, baseline="replacement", reduction="mean_abs"
    )


def test_unknown_enum_value_names_the_field() -> None:
    request = pb.ExplainRequest(integrated_gradients=pb.IntegratedGradients(rule=99))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="unknown value 99") as err:
        method_from_proto(request)
    assert err.value.field == "integrated_gradients.rule"


def test_generation_defaults_and_values() -> None:
    request = pb.ExplainRequest()
    assert generation_from_proto(request) is None
    request.generation.SetInParent()
    generation = generation_from_proto(request)
    assert generation is not None
    assert (generation.max_new_tokens, generation.do_sample) == (None, False)
    assert (generation.temperature, generation.top_p) == (1.0, 1.0)
    request.generation.max_new_tokens = 5
    request.generation.temperature = 0.5
    generation = generation_from_proto(request)
    assert generation is not None
    assert (generation.max_new_tokens, generation.temperature) == (5, 0.5)
