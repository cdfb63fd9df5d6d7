"""References and helpers of the GetActivations domain tests (imported by their conftest and
tests): the tiny classifiers' weights loaded a second time and called directly, one unpadded
input at a time, and the reassembly of a reply's chunks.

The references take what they need from `output_hidden_states` or a hook on the Hugging Face
model itself, never through the worker or the capture code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import AutoModelForSequenceClassification, AutoTokenizer

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


class Direct:
    """A served model's weights loaded a second time and called directly, one input at a time."""

    def __init__(self, path: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, dtype=torch.float32
        )
        self.model = model.eval()
        self.model.requires_grad_(False)

    def ids(self, text: str) -> torch.Tensor:
        """`(1, n)` token ids of `text`, special tokens included."""
        return torch.as_tensor([self.tokenizer(text)["input_ids"]])

    def forward(self, text: str) -> Any:
        """The model's output on `text` alone, hidden states included."""
        ids = self.ids(text)
        with torch.no_grad():
            return self.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
            )

    def module_output(self, text: str, name: str) -> NDArray[np.float32]:
        """Output of module `name` on `text` alone (`(n, *features)` or `(*features,)`)."""
        seen: list[torch.Tensor] = []

        def hook(_m: torch.nn.Module, _i: Any, out: Any) -> None:
            seen.append(out[0] if isinstance(out, tuple) else out)

        handle = self.model.get_submodule(name).register_forward_hook(hook)
        try:
            self.forward(text)
        finally:
            handle.remove()
        out: NDArray[np.float32] = seen[0][0].numpy()
        return out

    def hidden(self, text: str, index: int) -> NDArray[np.float32]:
        """`(n, h)` hidden states number `index` (0 = embeddings, k = after layer k - 1)."""
        out: NDArray[np.float32] = self.forward(text).hidden_states[index][0].numpy()
        return out

    def head_input(self, text: str) -> NDArray[np.float32]:
        """`(h,)` what the classification head reads, computed from the last hidden states the
        way each architecture's forward does it (eval mode: dropout is the identity)."""
        model: Any = self.model
        last = self.forward(text).hidden_states[-1]
        with torch.no_grad():
            kind = type(model).__name__
            if kind == "BertForSequenceClassification":
                row = model.bert.pooler(last)[0]
            elif kind == "RobertaForSequenceClassification":
                row = last[0, 0]
            elif kind == "DistilBertForSequenceClassification":
                row = torch.relu(model.pre_classifier(last[:, 0]))[0]
            elif kind == "GPT2ForSequenceClassification":
                row = last[0, -1]  # the input alone: its last token is its last non-pad token
            else:
                raise AssertionError(kind)
        out: NDArray[np.float32] = row.numpy()
        return out

    def head(self, rows: NDArray[np.float32]) -> NDArray[np.float32]:
        """`(r, C)` the classification head module called directly on `(r, h)` rows."""
        model: Any = self.model
        x = torch.from_numpy(np.ascontiguousarray(rows))
        with torch.no_grad():
            if hasattr(model, "score"):
                out = model.score(x)
            elif type(model).__name__ == "RobertaForSequenceClassification":
                out = model.classifier(x[:, None, :])  # the head reads position 0
            else:
                out = model.classifier(x)
        result: NDArray[np.float32] = out.numpy()
        return result

    def logits(self, text: str) -> NDArray[np.float32]:
        """`(C,)` logits of `text` alone."""
        out: NDArray[np.float32] = self.forward(text).logits[0].numpy()
        return out


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
