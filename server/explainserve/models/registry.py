"""Loading models from local directories and keeping them by name, each with its worker."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
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
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.utils import logging as hf_logging

from explainserve.errors import InvalidArgument, NotFound, quote
from explainserve.models.capture import capture, find_head, first_tensor, head_input_name
from explainserve.scheduling.jobs import GenerationOptions
from explainserve.scheduling.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)
# Loading prints per-weight progress bars otherwise; the server logs what it loaded itself.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

ReplacementFallback = Literal["unk", "pad", "eos", "zero_embedding"]
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


@dataclass(frozen=True)
class Replacement:
    """What a perturbed unit becomes: a token id, or a zero input embedding (`token_id = -1`)."""

    kind: str
    token_id: int

    @property
    def zero_embedding(self) -> bool:
        """True when replaced positions get a zero input embedding instead of a token."""
        return self.kind == "zero_embedding"


class _ModelRunner:
    """What every runner shares: the model, its pad id, its device and input embeddings."""

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self._embeddings = model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return next(self.model.parameters()).device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input (word) embeddings of `ids`."""
        out: torch.Tensor = self._embeddings(ids)
        return out


class ClassifierRunner(_ModelRunner):
    """The worker's view of a sequence classifier.

    Encoder classifiers (BERT, RoBERTa, ...) read the first token: batches are right-padded and
    run from ids. Decoder classifiers (GPT-2, Llama, ... : their head is `score`) read the last
    token and find it by looking for pad ids, which breaks when a replaced token is the pad token
    or when only embeddings are given; they run left-padded, from embeddings, with explicit
    position ids, so the last position is always the last real token.

    `head` is the classification head's attribute name (None when the model has none);
    `head_token_dim` says whether the head's input has a token dimension (RoBERTa's `classifier`,
    GPT-2's `score`: they read one position of it) or not (BERT's `classifier` reads the pooler).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        pad_id: int,
        head: str | None = None,
        head_token_dim: bool = False,
    ) -> None:
        super().__init__(model, pad_id)
        self.reads_last_token = hasattr(model, "score")
        self.padding_side = "left" if self.reads_last_token else "right"
        self.head = head
        self.head_token_dim = head_token_dim

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(b, C)` class logits."""
        if self.reads_last_token:
            if inputs_embeds is None:
                inputs_embeds = self.embed(ids)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            out = self.model(
                inputs_embeds=inputs_embeds, attention_mask=attention, position_ids=positions
            )
        elif inputs_embeds is not None:
            out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention)
        else:
            out = self.model(input_ids=ids, attention_mask=attention)
        logits: torch.Tensor = out.logits
        return logits

    def capture(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        split_points: list[str],
        with_logits: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The padded batch's activations at `split_points` (see `models.capture`), and its
        `(b, C)` logits when `with_logits`; without them the pass stops once all are captured."""
        return capture(
            self.model,
            split_points,
            lambda: self.logits(ids, attention),
            stop_early=not with_logits,
        )

    def run_head(self, inputs: torch.Tensor) -> torch.Tensor:
        """`(r, C)` logits of the classification head alone on `(r, *features)` rows of its input.

        A head whose input has a token dimension gets each row as a one-token sequence: the
        position it reads (the first for RoBERTa-style heads; `score` is applied per position).
        """
        if self.head is None:
            raise InvalidArgument("the model has no classification head")
        module: torch.nn.Module = getattr(self.model, self.head)
        x = inputs.to(self.device, dtype=next(module.parameters()).dtype)
        if self.head_token_dim:
            x = x.unsqueeze(1)
        out = first_tensor(module(x))
        if out is None:
            raise RuntimeError(f"the head '{self.head}' returned no tensor")
        return out.reshape(inputs.shape[0], -1)

    # What only causal LMs do (`scheduling.execute.Runner` declares it for every runner): a
    # classifier has no next-token logits, no prefix cache and does not generate.
    vocab_size = 0
    prefix_reuse = False

    def token_logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        keep: int,
        positions: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> torch.Tensor:
        """Classifiers have no next-token logits."""
        raise InvalidArgument("the model is a classifier: it has no next-token logits")

    def prefix_cache(self, ids: torch.Tensor, attention: torch.Tensor) -> None:
        """Classifiers keep no prefix cache."""
        return None

    def cache_rows(self, cache: Any, rows: torch.Tensor, length: int) -> Any:
        """Classifiers keep no prefix cache."""
        raise InvalidArgument("the model is a classifier: it has no prefix cache")

    def generate(
        self,
        prompts: list[torch.Tensor],
        options: GenerationOptions,
        stop_ids: set[int],
        on_token: Callable[[int], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[list[int] | None]:
        """Classifiers do not generate."""
        raise InvalidArgument("the model is a classifier: it cannot generate")


class CausalLMRunner(_ModelRunner):
    """The worker's view of a causal language model (AutoModelForCausalLM).

    Batches are left-padded, so every row ends at the last column and the positions whose
    next-token logits are wanted (the continuation's) are the same distance from the end in every
    row of a job; position ids are explicit (cumulative attention - 1, clamped at 0), so a left-
    padded row sees the positions it would see alone. Only the last `keep` positions' logits are
    computed (`logits_to_keep`), never the whole `(b, L, V)`.
    """

    padding_side = "left"

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        super().__init__(model, pad_id)
        head: Any = getattr(model, "get_output_embeddings")()  # noqa: B009 (untyped in HF)
        self.vocab_size = int(head.weight.shape[0])
        # The KV cache's argument and output field: `cache` in newer transformers (which drop
        # `past_key_values` in 5.40), `past_key_values` in older ones.
        forward = inspect.signature(model.forward).parameters
        self._cache_name = "cache" if "cache" in forward else "past_key_values"
        #: Whether forward rows may run on a cached prefix (`scheduling.prefix`); turned off for
        #: good the first time the model's cache is not one that can be cut per row and
        #: position (sliding-window, recurrent or static layers).
        self.prefix_reuse = True

    def token_logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        keep: int,
        positions: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> torch.Tensor:
        """`(b, keep, V)` next-token logits of the last `keep` positions of a left-padded batch.

        With a `cache` (from `cache_rows`), the rows continue it: `attention` then covers the
        cache's slots and the new positions, and `positions` gives the new positions' ids.
        """
        if inputs_embeds is None:
            inputs_embeds = self.embed(ids)
        if positions is None:
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cached: dict[str, Any] = {"use_cache": False}
        if cache is not None:
            cached = {"use_cache": True, self._cache_name: cache}
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention,
            position_ids=positions,
            logits_to_keep=keep,
            **cached,
        )
        logits: torch.Tensor = out.logits
        return logits

    def prefix_cache(self, ids: torch.Tensor, attention: torch.Tensor) -> DynamicCache | None:
        """The KV cache of a left-padded batch (explicit position ids, as `token_logits`), or
        None, and prefix reuse off for this model, when its cache has layers that cannot be cut
        per row and position."""
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=self.embed(ids),
            attention_mask=attention,
            position_ids=positions,
            logits_to_keep=1,
            use_cache=True,
        )
        cache = getattr(out, self._cache_name, None)
        if not isinstance(cache, DynamicCache) or any(
            type(layer) is not DynamicLayer for layer in cache.layers
        ):
            log.info("model cache %s cannot be cut per row: no prefix reuse", type(cache))
            self.prefix_reuse = False
            return None
        return cache

    def cache_rows(self, cache: DynamicCache, rows: torch.Tensor, length: int) -> DynamicCache:
        """A new cache of `cache`'s batch rows `rows` (repeats allowed), first `length` slots
        (`cache` is left as it is: the model appends to the new one)."""
        cut = []
        for layer in cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is None or values is None:
                raise RuntimeError("the prefix cache has a layer without keys or values")
            cut.append(
                (
                    keys[:, :, :length].index_select(0, rows),
                    values[:, :, :length].index_select(0, rows),
                )
            )
        return DynamicCache(cut)

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`(b, V)` next-token logits after the last position."""
        return self.token_logits(ids, attention, inputs_embeds, 1)[:, -1]

    def capture(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        split_points: list[str],
        with_logits: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Activations at `split_points` (see `models.capture`), and the `(b, V)` next-token
        logits when `with_logits`."""
        return capture(
            self.model,
            split_points,
            lambda: self.logits(ids, attention),
            stop_early=not with_logits,
        )

    def run_head(self, inputs: torch.Tensor) -> torch.Tensor:
        """Causal LMs have no classification head."""
        raise InvalidArgument("the model is a causal LM: it has no classification head")

    def generate(
        self,
        prompts: list[torch.Tensor],
        options: GenerationOptions,
        stop_ids: set[int],
        on_token: Callable[[int], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[list[int] | None]:
        """Continues the `(n_i,)` prompts together, token by token with the KV cache (left-padded,
        explicit position ids): greedy, or sampled with `options.temperature` / `options.top_p`
        from one generator per prompt seeded with `options.seed` (on the CPU, so a seed gives
        the same draws on every device and in every batch). A prompt stops after
        `options.max_new_tokens` or before a stop id (end of sequence, not returned);
        `on_token(i)` is called for each token prompt `i` draws. A prompt whose
        `is_cancelled(i)` turns true stops and gets None."""
        b = len(prompts)
        width = max(int(p.shape[0]) for p in prompts)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((b, width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - prompt.shape[0] :] = prompt
            attention[i, width - prompt.shape[0] :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generators = [torch.Generator().manual_seed(options.seed) for _ in range(b)]
        out: list[list[int] | None] = [[] for _ in range(b)]
        active = [True] * b
        past: Any = None
        device = self.device
        with torch.inference_mode():
            for _ in range(options.max_new_tokens):
                for i in range(b):
                    if active[i] and is_cancelled is not None and is_cancelled(i):
                        active[i] = False
                        out[i] = None
                if not any(active):
                    break
                result = self.model(
                    input_ids=ids.to(device),
                    attention_mask=attention.to(device),
                    position_ids=positions.to(device),
                    use_cache=True,
                    **{self._cache_name: past},
                )
                past = getattr(result, self._cache_name)
                logits = result.logits[:, -1].float().cpu()
                step = torch.full((b, 1), self.pad_id, dtype=torch.long)
                for i in range(b):
                    if not active[i]:
                        continue
                    if options.do_sample:
                        token = sample_token(
                            logits[i], options.temperature, options.top_p, generators[i]
                        )
                    else:
                        token = int(torch.argmax(logits[i]))
                    if on_token is not None:
                        on_token(i)
                    if token in stop_ids:
                        active[i] = False
                        continue
                    tokens = out[i]
                    assert tokens is not None
                    tokens.append(token)
                    step[i, 0] = token
                # Stopped prompts append a masked pad: the cache stays aligned.
                grown = torch.tensor([[int(a)] for a in active], dtype=torch.long)
                attention = torch.cat([attention, grown], dim=1)
                positions = positions[:, -1:] + 1
                ids = step
        return out


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """One token drawn from `softmax(logits / temperature)` restricted to the smallest set of most
    likely tokens whose probability reaches `top_p` (nucleus sampling)."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
        sorted_probs[before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator)[0])


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

    def close(self) -> None:
        """Stops the worker."""
        self.worker.close()


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
