"""Helpers of the GetActivations domain tests (imported by their conftest and tests): the served
classifiers, the texts, and the reassembly of a reply's chunks. The reference they compare with
is `reference_models.Direct`, which takes what it needs from `output_hidden_states` or a hook on
the Hugging Face model itself, never through the worker or the capture code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve.activations.params import ActivationChunk, ActivationParams
from explainserve.activations.service import Activator
from explainserve.activations.tensors import decode
from explainserve.vocabulary import InputSpec

#: Served name -> directory fixture.
SERVED = {
    "bert": "tiny_bert_dir",
    "roberta": "tiny_roberta_dir",
    "distilbert": "tiny_distilbert_dir",
    "gpt2": "tiny_gpt2_dir",
}

#: Texts of different lengths (so batches are padded), several words and sentences each.
TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Dr. Smith arrived. He sat down! Did he eat?",
    "A short line.",
    "Tokens, words and sentences are units of explanation.",
    "It's a dog's life, isn't it? Deep learning models need careful explanations.",
]


@dataclass
class Gathered:
    """A whole GetActivations reply reassembled from its chunks."""

    chunks: list[ActivationChunk]
    #: Split point -> float32 rows of every input, stacked.
    values: dict[str, NDArray[np.float32]]
    #: `(inputs + 1,)` row offsets over the whole reply.
    offsets: NDArray[np.int64]
    logits: NDArray[np.float32] | None
    predicted: list[int]

    def rows(self, name: str, index: int) -> NDArray[np.float32]:
        """Input `index`'s rows at split point `name`."""
        return self.values[name][self.offsets[index] : self.offsets[index + 1]]


def gather(chunks: list[ActivationChunk]) -> Gathered:
    """Appends chunks, checking they cover consecutive inputs."""
    at = 0
    offsets = [0]
    values: dict[str, list[NDArray[np.float32]]] = {}
    logits = []
    predicted: list[int] = []
    for chunk in chunks:
        assert chunk.input_start == at
        at += chunk.input_count
        assert chunk.row_offsets[0] == 0
        assert len(chunk.row_offsets) == chunk.input_count + 1
        offsets.extend((offsets[-1] + chunk.row_offsets[1:]).tolist())
        for name, tensor in chunk.activations:
            rows = decode(tensor, name)
            assert rows.shape[0] == chunk.row_offsets[-1]
            values.setdefault(name, []).append(rows)
        if chunk.logits is not None:
            logits.append(decode(chunk.logits, "logits"))
            predicted.extend(chunk.predicted)
    return Gathered(
        chunks=chunks,
        values={k: np.concatenate(v) for k, v in values.items()},
        offsets=np.asarray(offsets, dtype=np.int64),
        logits=np.concatenate(logits) if logits else None,
        predicted=predicted,
    )


def run_texts(activator: Activator, model: str, texts: list[str], **fields: Any) -> Gathered:
    """GetActivations on `texts`, reassembled."""
    params = ActivationParams(model=model, inputs=[InputSpec(text=t) for t in texts], **fields)
    return gather(list(activator.get_activations(params)))
