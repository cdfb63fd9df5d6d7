"""Calls a live server's HTTP port with Triton's own HTTP client (`tritonclient.http`), as a
Triton user would: binary tensors (its default) and JSON ones, texts and token ids.

Run as a script by tests/http/test_http_oip.py, in a process of its own (tritonclient.http
brings gevent, which the test process has no business loading).

Usage: python oip_triton_http_client.py HOST:PORT OUT_DIR TEXT... ; writes OUT_DIR/result.json
(metadata, readiness, errors) and OUT_DIR/arrays.npz (the outputs of the inference calls).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton

# The shared part, in tests/ (this script runs from its own folder).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from triton_calls import MODEL, POINTS, common_errors, error_of


def main() -> int:
    url, out = sys.argv[1], Path(sys.argv[2])
    texts = sys.argv[3:]
    client = triton.InferenceServerClient(url=url)
    result: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(MODEL),
        "unknown_ready": client.is_model_ready("nope"),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(MODEL),
        "versioned_metadata": client.get_model_metadata(MODEL, model_version="1"),
    }
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    batch = np.array([t.encode() for t in texts], dtype=np.object_)

    # Texts as binary BYTES, outputs binary (tritonclient's defaults): logits and split points.
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(batch)
    outputs = [triton.InferRequestedOutput(name) for name in ["logits", *POINTS]]
    reply = client.infer(MODEL, [text], outputs=outputs, request_id="oip-http-1")
    response = reply.get_response()
    result["binary_id"] = response["id"]
    result["binary_outputs"] = response["outputs"]
    for name in ["logits", *POINTS]:
        arrays[f"binary/{name}"] = reply.as_numpy(name)

    # The same in JSON both ways (binary_data=False), through the versioned route.
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(batch, binary_data=False)
    outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ["logits", *POINTS]]
    reply = client.infer(MODEL, [text], outputs=outputs, model_version="1")
    result["json_outputs"] = [
        {k: v for k, v in o.items() if k != "data"} for o in reply.get_response()["outputs"]
    ]
    for name in ["logits", *POINTS]:
        arrays[f"json/{name}"] = reply.as_numpy(name)

    # No output asked for: the logits alone, binary (binary_data_output).
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(batch)
    reply = client.infer(MODEL, [text])
    result["default_outputs"] = [o["name"] for o in reply.get_response()["outputs"]]
    arrays["default/logits"] = reply.as_numpy("logits")

    # Token ids (INT64 [batch, tokens]) with an attention mask, every token's rows, compressed.
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    ids_input = triton.InferInput("input_ids", list(ids.shape), "INT64")
    ids_input.set_data_from_numpy(ids)
    mask_input = triton.InferInput("attention_mask", list(mask.shape), "INT64")
    mask_input.set_data_from_numpy(mask, binary_data=False)
    reply = client.infer(
        MODEL,
        [ids_input, mask_input],
        outputs=[triton.InferRequestedOutput(n) for n in ["logits", "bert.encoder.layer.1"]],
        parameters={"granularity": "all_tokens"},
        request_compression_algorithm="gzip",
    )
    arrays["ids/logits"] = reply.as_numpy("logits")
    arrays["ids/bert.encoder.layer.1"] = reply.as_numpy("bert.encoder.layer.1")
    arrays["ids/input_ids"] = ids
    arrays["ids/attention_mask"] = mask

    # Errors as tritonclient reports them.
    result["errors"] = {
        **common_errors(triton, client, text),
        "unknown_metadata": error_of(lambda: client.get_model_metadata("nope")),
    }
    (out / "result.json").write_text(json.dumps(result))
    np.savez(out / "arrays.npz", **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
