"""Loading a sequence classifier or a causal LM from a local directory into a `ServedModel`:
device, dtype, task, tokenizer, replacement token, split points, runner and worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from explainserve.errors import InvalidArgument
from explainserve.models.capture import find_head, first_tensor, head_input_name
from explainserve.models.options import ReplacementFallback
from explainserve.models.registry import Replacement, ServedModel
from explainserve.models.runners import CausalLMRunner, ClassifierRunner
from explainserve.scheduling.options import WorkerOptions
from explainserve.scheduling.worker import Worker

log = logging.getLogger(__name__)
# Loading prints per-weight progress bars otherwise; the server logs what it loaded itself.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

#: What a served model does; "auto" detects it from the config's architectures.
Task = Literal["auto", "sequence-classification", "causal-lm"]
TASKS: tuple[str, ...] = ("auto", "sequence-classification", "causal-lm")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Tokenizers report this for "no limit"; the position embeddings are the real bound then.
_HUGE_MAX_LENGTH = 1_000_000


@dataclass(frozen=True)
class ModelConfig:
    """How to load and serve one model."""

    name: str
    path: Path
    device: str = "auto"
    dtype: str = "float32"
    replacement_fallback: ReplacementFallback = "unk"
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    task: Task = "auto"


def resolve_device(device: str) -> torch.device:
    """ "auto" = CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(f"device '{device}' requested but CUDA is not available")
    return resolved


def choose_replacement(
    tokenizer: PreTrainedTokenizerBase, fallback: ReplacementFallback
) -> Replacement:
    """The tokenizer's mask token when it has one, else the configured fallback."""
    if tokenizer.mask_token_id is not None:
        return Replacement("mask_token", int(tokenizer.mask_token_id))
    if fallback == "zero_embedding":
        return Replacement("zero_embedding", -1)
    token_id = getattr(tokenizer, f"{fallback}_token_id", None)
    if token_id is None:
        raise InvalidArgument(
            f"the tokenizer has no mask token and no {fallback} token; choose another "
            "replacement fallback (unk, pad, eos, zero_embedding)"
        )
    return Replacement(f"{fallback}_token", int(token_id))


def probe_split_points(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> list[tuple[str, list[int]]]:
    """Runs one short forward with hooks on every named module (it doubles as a warm-up) and
    returns each module's output shape, batch and sequence dimensions written -1; the input of
    the classification head, if any, is listed as "<head>:input" just before the head."""
    shapes: dict[str, list[int]] = {}
    device = next(model.parameters()).device
    enc = tokenizer("a b c d e f g", return_tensors="pt")
    seq = int(enc["input_ids"].shape[1])
    head = find_head(model)

    def shape_of(tensor: torch.Tensor | None) -> list[int] | None:
        if tensor is None or tensor.dim() < 1:
            return None
        dims = [int(d) for d in tensor.shape]
        dims[0] = -1
        if len(dims) > 2 and dims[1] == seq:
            dims[1] = -1
        return dims

    def hook(name: str) -> Any:
        def record(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            dims = shape_of(first_tensor(output))
            if dims is not None:
                shapes.setdefault(name, dims)

        return record

    def head_hook(_module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        assert head is not None
        dims = shape_of(first_tensor(inputs))
        if dims is not None:
            shapes.setdefault(head_input_name(head), dims)

    handles = [
        module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name
    ]
    if head is not None:
        handles.append(getattr(model, head).register_forward_pre_hook(head_hook))
    try:
        with torch.inference_mode():
            model(**{k: v.to(device) for k, v in enc.items()})
    finally:
        for handle in handles:
            handle.remove()
    out: list[tuple[str, list[int]]] = []
    for name, _ in model.named_modules():
        if head is not None and name == head and head_input_name(head) in shapes:
            out.append((head_input_name(head), shapes[head_input_name(head)]))
        if name in shapes:
            out.append((name, shapes[name]))
    return out


def detect_task(config: ModelConfig, architectures: list[str]) -> str:
    """The model's task: the configured one, else from the config's architectures (a
    `...ForCausalLM` / `...LMHeadModel` is a causal LM; anything else, or none, a classifier)."""
    if config.task not in TASKS:
        raise InvalidArgument(f"unknown task '{config.task}', expected one of {list(TASKS)}")
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if config.task == "auto":
        return "causal-lm" if causal else "sequence-classification"
    if config.task == "sequence-classification" and causal:
        raise InvalidArgument(
            f"model '{config.name}' ({', '.join(architectures)}) is not a sequence classifier"
        )
    if config.task == "causal-lm" and architectures and not causal:
        raise InvalidArgument(
            f"model '{config.name}' ({', '.join(architectures)}) is not a causal LM"
        )
    return config.task


def load_model(config: ModelConfig) -> ServedModel:
    """Loads a sequence classifier or a causal LM from a local directory; never touches the
    network."""
    if config.dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype '{config.dtype}', expected one of {list(DTYPES)}")
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    hf_config = AutoConfig.from_pretrained(config.path, local_files_only=True)
    architectures: list[str] = list(getattr(hf_config, "architectures", None) or [])
    task = detect_task(config, architectures)
    if (
        task == "sequence-classification"
        and architectures
        and not any(a.endswith("ForSequenceClassification") for a in architectures)
    ):
        raise InvalidArgument(
            f"model '{config.name}' ({', '.join(architectures)}) is not a sequence classifier"
        )
    tokenizer = AutoTokenizer.from_pretrained(config.path, local_files_only=True)
    if not tokenizer.is_fast:
        raise InvalidArgument(
            f"model '{config.name}' needs a fast tokenizer (tokenizer.json) for character offsets"
        )
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    model: Any
    if task == "causal-lm":
        model = AutoModelForCausalLM.from_pretrained(config.path, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(config.path, **kwargs)
    model.to(device)
    model.eval()
    # Gradients are only ever taken with respect to the inputs.
    model.requires_grad_(False)
    labels: list[str] = []
    if task == "sequence-classification":
        n_labels = int(model.config.num_labels)
        id2label = dict(model.config.id2label or {})
        labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(n_labels)]
    max_positions = int(getattr(model.config, "max_position_embeddings", 0) or _HUGE_MAX_LENGTH)
    tok_max = int(tokenizer.model_max_length or _HUGE_MAX_LENGTH)
    max_length = min(max_positions, tok_max)
    replacement = choose_replacement(tokenizer, config.replacement_fallback)
    split_points = probe_split_points(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    runner: ClassifierRunner | CausalLMRunner
    head = None
    if task == "causal-lm":
        # Padding is masked out; GPT-2 and Llama tokenizers often have no pad token.
        fill = pad_id if pad_id is not None else tokenizer.eos_token_id
        runner = CausalLMRunner(model, int(fill) if isinstance(fill, int) else 0)
    else:
        head = find_head(model)
        head_shape = dict(split_points).get(head_input_name(head)) if head is not None else None
        runner = ClassifierRunner(
            model,
            int(pad_id) if pad_id is not None else 0,
            head=head,
            head_token_dim=head_shape is not None and len(head_shape) > 2 and head_shape[1] == -1,
        )
    worker = Worker(runner, config.worker, name=config.name)
    log.info(
        "loaded %s (%s) from %s on %s (%s), %d labels, replacement %s",
        config.name,
        task,
        config.path,
        device,
        config.dtype,
        len(labels),
        replacement.kind,
    )
    return ServedModel(
        name=config.name,
        task=task,
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        max_length=max_length,
        device=device,
        dtype=dtype,
        replacement=replacement,
        runner=runner,
        worker=worker,
        split_points=split_points,
        head=head,
    )
