"""The served models: each loaded model with its tokenizer, metadata, runner and worker
(`ServedModel`), kept by name (`Registry`). Loading them is `models.loading`'s job."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from explainserve.errors import InvalidArgument, NotFound, quote
from explainserve.models.capture import head_input_name
from explainserve.models.runners import CausalLMRunner, ClassifierRunner
from explainserve.scheduling.worker import Worker
from explainserve.vocabulary import Encoded, InputSpec, encode_ids, encode_text


@dataclass(frozen=True)
class Replacement:
    """What a perturbed unit becomes: a token id, or a zero input embedding (`token_id = -1`)."""

    kind: str
    token_id: int

    @property
    def zero_embedding(self) -> bool:
        """True when replaced positions get a zero input embedding instead of a token."""
        return self.kind == "zero_embedding"


@dataclass
class ServedModel:
    """A loaded model, its tokenizer, its metadata and its worker."""

    name: str
    task: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    max_length: int
    device: torch.device
    dtype: torch.dtype
    replacement: Replacement
    runner: ClassifierRunner | CausalLMRunner
    worker: Worker
    #: Module names whose output can be captured, with output shapes (-1 = batch / sequence),
    #: and the head's input ("<head>:input") just before the head's own entry.
    split_points: list[tuple[str, list[int]]] = field(default_factory=list)
    #: Attribute name of the classification head (`classifier`, `classification_head`, `score`).
    head: str | None = None

    @property
    def is_causal_lm(self) -> bool:
        """True for causal language models (explained for a continuation of the input)."""
        return self.task == "causal-lm"

    @property
    def head_input(self) -> str | None:
        """The split point of the head's input (GetActivations' default), if there is a head."""
        return None if self.head is None else head_input_name(self.head)

    @property
    def dtype_name(self) -> str:
        """ "float32", "bfloat16" or "float16"."""
        return str(self.dtype).removeprefix("torch.")

    def label_index(self, label: str) -> int:
        """Index of a label name; NotFound lists the valid ones."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise NotFound(
                f"model '{self.name}' has no label '{quote(label)}'; labels are: "
                f"{', '.join(self.labels)}"
            ) from None

    def encode(self, spec: InputSpec, index: int) -> Encoded:
        """Input `index` tokenized (text) or checked and decoded (token ids)."""
        field = f"inputs[{index}]"
        if spec.text is not None:
            if not spec.text.strip():
                raise InvalidArgument(f"input {index} is an empty string", field=f"{field}.text")
            return encode_text(self.tokenizer, spec.text, self.max_length, field)
        if spec.ids is not None:
            return encode_ids(self.tokenizer, spec.ids, spec.attention, self.max_length, field)
        raise InvalidArgument(f"input {index} has neither text nor token_ids", field=field)

    def class_targets(self, targets: list[int | str], index: int) -> NDArray[np.int64]:
        """Input `index`'s targets (class indices or label names) as class indices, checked."""
        out = []
        n_classes = len(self.labels)
        for j, target in enumerate(targets):
            if isinstance(target, str):
                out.append(self.label_index(target))
            elif 0 <= target < n_classes:
                out.append(target)
            else:
                raise InvalidArgument(
                    f"target {target} of input {index} is out of range: the model has "
                    f"{n_classes} classes (0..{n_classes - 1})",
                    field=f"inputs[{index}].targets[{j}]",
                )
        return np.asarray(out, dtype=np.int64)

    def close(self) -> None:
        """Stops the worker."""
        self.worker.close()


class Registry:
    """The served models by name."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()

    def add(self, model: ServedModel) -> None:
        """Registers a loaded model under its name."""
        with self._lock:
            if model.name in self._models:
                raise InvalidArgument(f"model name '{model.name}' is used twice")
            self._models[model.name] = model

    def get(self, name: str) -> ServedModel:
        """The model called `name`; NotFound lists the loaded ones."""
        try:
            return self._models[name]
        except KeyError:
            names = ", ".join(sorted(self._models)) or "(none)"
            raise NotFound(f"no model named '{quote(name)}'; loaded models: {names}") from None

    def list(self) -> list[ServedModel]:
        """Every model, by name."""
        return [self._models[k] for k in sorted(self._models)]

    def close(self) -> None:
        """Stops every worker."""
        for model in self._models.values():
            model.close()
