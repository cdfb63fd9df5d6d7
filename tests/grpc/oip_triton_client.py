"""Calls a live server with Triton's own gRPC client (`tritonclient.grpc`), as a Triton user would.

Run as a script by tests/grpc/test_oip.py, in a process of its own: tritonclient registers its
`inference` messages (Triton's grpc_service.proto) in protobuf's default descriptor pool, where
the server's copy of the same protocol already sits in the test process, and protobuf refuses the
same symbols from two files.

Usage: python oip_triton_client.py URL OUT_DIR TEXT... ; writes OUT_DIR/result.json (metadata,
readiness, errors) and OUT_DIR/arrays.npz (the outputs of the inference calls).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton

# The shared part, in tests/ (this script runs from its own folder).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_calls import MODEL, POINTS, common_errors


def main() -> int:
    url, out = sys.argv[1], Path(sys.argv[2])
    texts = sys.argv[3:]
    client = triton.InferenceServerClient(url=url)
    result: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(MODEL),
        "server_metadata": client.get_server_metadata(as_json=True),
        "model_metadata": client.get_model_metadata(MODEL, as_json=True),
    }
    arrays: dict[str, np.ndarray[Any, Any]] = {}

    # Texts (BYTES): logits and two split points' rows, in one call.
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    outputs = [triton.InferRequestedOutput(name) for name in ["logits", *POINTS]]
    reply = client.infer(MODEL, [text], outputs=outputs, request_id="oip-text-1")
    result["text_id"] = reply.get_response().id
    result["text_outputs"] = [
        {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        for o in reply.get_response().outputs
    ]
    for name in ["logits", *POINTS]:
        arrays[f"text/{name}"] = reply.as_numpy(name)

    # No output asked for: the logits alone.
    reply = client.infer(MODEL, [text])
    result["default_outputs"] = [o.name for o in reply.get_response().outputs]
    arrays["default/logits"] = reply.as_numpy("logits")

    # Token ids (INT64 [batch, tokens]) with an attention mask, every token's rows.
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    ids_input = triton.InferInput("input_ids", list(ids.shape), "INT64")
    ids_input.set_data_from_numpy(ids)
    mask_input = triton.InferInput("attention_mask", list(mask.shape), "INT64")
    mask_input.set_data_from_numpy(mask)
    reply = client.infer(
        MODEL,
        [ids_input, mask_input],
        outputs=[triton.InferRequestedOutput(n) for n in ["logits", "bert.encoder.layer.1"]],
        parameters={"granularity": "all_tokens"},
    )
    arrays["ids/logits"] = reply.as_numpy("logits")
    arrays["ids/bert.encoder.layer.1"] = reply.as_numpy("bert.encoder.layer.1")
    arrays["ids/input_ids"] = ids
    arrays["ids/attention_mask"] = mask

    # Errors as tritonclient reports them.
    result["errors"] = common_errors(triton, client, text)
    (out / "result.json").write_text(json.dumps(result))
    np.savez(out / "arrays.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
