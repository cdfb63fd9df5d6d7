"""What the Triton client scripts (tests/grpc/oip_triton_client.py over gRPC,
tests/http/oip_triton_http_client.py over HTTP) share: the model and split points they ask for,
and how a call that must fail is reported. Imports tritonclient: only those scripts, each in a
process of its own, import this."""

from __future__ import annotations

from typing import Any

from tritonclient.utils import InferenceServerException

MODEL = "bert"
POINTS = ["classifier:input", "bert.encoder.layer.1"]


def error_of(call: Any) -> dict[str, str]:
    """The status and message tritonclient reports for a call that must fail."""
    try:
        call()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": str(e.message())}
    raise AssertionError("the call succeeded")


def common_errors(triton: Any, client: Any, text: Any) -> dict[str, dict[str, str]]:
    """The errors both clients provoke, as `triton` (tritonclient.grpc or .http) reports them:
    an unknown model, an unknown output, token ids of the wrong datatype."""
    import numpy as np

    floats = triton.InferInput("input_ids", [1, 2], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    return {
        "unknown_model": error_of(lambda: client.infer("nope", [text])),
        "unknown_output": error_of(
            lambda: client.infer(
                MODEL, [text], outputs=[triton.InferRequestedOutput("bert.encoder.layer.9")]
            )
        ),
        "bad_datatype": error_of(lambda: client.infer(MODEL, [floats])),
    }
