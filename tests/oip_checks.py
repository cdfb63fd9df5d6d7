"""What the Open Inference Protocol tests (gRPC and REST) share: their Triton client script run
in a process of its own and what it saw, and GetActivations' rows and logits as numpy arrays to
compare tritonclient's outputs with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve.v1 import explain_pb2 as pb

TEXTS = ["The food was cold.", "A wonderful, warm evening with friends!", "Fine."]
POINTS = ["classifier:input", "bert.encoder.layer.1"]
#: OIP and GetActivations run the same rows through the same worker, but not necessarily in
#: batches of the same size and padding, which may change float32 sums in the last bits: 1e-6
#: is about ten float32 ulps at these magnitudes (|x| < 10).
TOL = 1e-6


def run_triton(script: Path, target: str, out: Path) -> tuple[Any, dict[str, Any]]:
    """Runs a Triton client `script` against `target` on `TEXTS`; what it saw (result.json) and
    its arrays (arrays.npz)."""
    subprocess.run([sys.executable, str(script), target, str(out), *TEXTS], check=True, timeout=300)
    result = json.loads((out / "result.json").read_text())
    with np.load(out / "arrays.npz") as arrays:
        return result, {k: arrays[k] for k in arrays.files}


def rows(chunks: list[pb.GetActivationsResponse], name: str) -> NDArray[np.float32]:
    """One split point's rows of a GetActivations stream, chunks appended."""
    parts = []
    for chunk in chunks:
        for a in chunk.activations:
            if a.split_point == name:
                parts.append(np.frombuffer(a.values.data, "<f4").reshape(list(a.values.shape)))
    return np.concatenate(parts)


def logits(chunks: list[pb.GetActivationsResponse]) -> NDArray[np.float32]:
    """The logits of a GetActivations stream (include_predictions)."""
    return np.concatenate(
        [np.frombuffer(c.logits.data, "<f4").reshape(list(c.logits.shape)) for c in chunks]
    )
