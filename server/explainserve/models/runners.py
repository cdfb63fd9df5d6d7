"""The worker's view of a loaded model: one runner per task (sequence classifier, causal LM).

A runner turns padded batches into logits (`logits`, `token_logits`), activations (`capture`),
head outputs (`run_head`) and continuations (`generate`); the worker (`scheduling`) only batches
rows and calls these. Both runners answer every call the worker makes; a call that does not apply
to a task raises.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from explainserve.errors import InvalidArgument
from explainserve.models.capture import capture, edited, first_tensor, head_input_name
from explainserve.models.first_position import FirstPositionLayer
from explainserve.models.heads import KeptPositions, plain_head
from explainserve.scheduling.jobs import GenerationOptions, position_ids

log = logging.getLogger(__name__)


class ModelRunner:
    """What every runner shares: the model, its pad id, its device, its input embeddings, and
    activation capture around `logits`."""

    #: "right" (encoders read the first token) or "left" (the last token is read).
    padding_side = "left"
    #: Size of the next-token vocabulary; 0 for models without next-token logits.
    vocab_size = 0
    #: Whether forward rows may run on a cached prefix (`scheduling.prefix`).
    prefix_reuse = False

    @property
    def packing(self) -> bool:
        """Whether rows may be packed several to a batch row on a cached prefix (`packed`)."""
        return False

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

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        """`(b, C)` logits of a padded batch (class logits, or next-token ones).

        `read_only`: compute only the positions the logits are read from, where the runner
        knows how (encoder classifiers' final layer at the first position: `first_position`);
        the logits are the same up to float rounding. Off where a hook may read other
        positions (activation capture)."""
        raise NotImplementedError

    def capture(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        split_points: list[str],
        with_logits: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The padded batch's activations at `split_points` (see `models.capture`), and its
        `logits` when `with_logits`; without them the pass stops once all are captured."""
        return capture(
            self.model,
            split_points,
            lambda: self.logits(ids, attention),
            stop_early=not with_logits,
        )

    def edited_logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        split_point: str,
        edit: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`(b, C)` logits with module `split_point`'s output replaced by `edit(output)` (the
        full pass: its positions after the split point may all be read)."""
        return edited(self.model, split_point, edit, lambda: self.logits(ids, attention))


class ClassifierRunner(ModelRunner):
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
        #: The final layer at the first position, for `logits(read_only=True)`; None where the
        #: model is not one `FirstPositionLayer` knows (decoder classifiers among them).
        self.first_position = None if self.reads_last_token else FirstPositionLayer.install(model)

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        """`(b, C)` class logits."""
        if read_only and self.first_position is not None:
            with self.first_position.active():
                return self.logits(ids, attention, inputs_embeds)
        if self.reads_last_token:
            if inputs_embeds is None:
                inputs_embeds = self.embed(ids)
            out = self.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention,
                position_ids=position_ids(attention),
            )
        elif inputs_embeds is not None:
            out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention)
        else:
            out = self.model(input_ids=ids, attention_mask=attention)
        logits: torch.Tensor = out.logits
        return logits

    def token_logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        keep: int,
        positions: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> torch.Tensor:
        """Sequence classifiers have no next-token logits (causal-LM jobs never reach them)."""
        raise RuntimeError("the model's runner has no next-token logits")

    def generate(
        self,
        prompts: list[torch.Tensor],
        options: GenerationOptions,
        stop_ids: set[int],
        on_token: Callable[[int], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[list[int] | None]:
        """Sequence classifiers do not generate (generation jobs never reach them)."""
        raise RuntimeError("the model cannot generate")

    def kept(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        keep: int,
        positions: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> KeptPositions:
        """Sequence classifiers have no next-token logits (causal-LM jobs never reach them)."""
        raise RuntimeError("the model's runner has no next-token logits")

    def prefix_cache(self, ids: torch.Tensor, attention: torch.Tensor, keep: int = 0) -> None:
        """Sequence classifiers keep no prefix cache."""
        return None

    def cache_rows(self, cache: Any, rows: torch.Tensor, length: int, expand: int = 0) -> Any:
        """Sequence classifiers keep no prefix cache (`prefix_reuse` is off for them)."""
        raise RuntimeError("the model's runner has no prefix cache")

    def packed(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        index: torch.Tensor,
    ) -> KeptPositions:
        """Sequence classifiers run no packed rows (`packing` is off for them)."""
        raise RuntimeError("the model's runner has no packed rows")

    def head_input(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        """`(b, *features)`: the head's input at the position the head reads (the first token
        for right-padded encoders, the last for left-padded decoder classifiers), the pass
        stopped once it is captured; `read_only` as in `logits` (what the head reads is
        unchanged). Differentiable when gradients are on."""
        if self.head is None:
            raise InvalidArgument("the model has no classification head")
        name = head_input_name(self.head)
        captured, _ = capture(
            self.model,
            [name],
            lambda: self.logits(ids, attention, inputs_embeds, read_only=read_only),
            stop_early=True,
        )
        rows = captured[name]
        if self.head_token_dim:
            rows = rows[:, -1] if self.padding_side == "left" else rows[:, 0]
        return rows

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


class CausalLMRunner(ModelRunner):
    """The worker's view of a causal language model (AutoModelForCausalLM).

    Batches are left-padded, so every row ends at the last column and the positions whose
    next-token logits are wanted (the continuation's) are the same distance from the end in every
    row of a job; position ids are explicit (`position_ids`), so a left-padded row sees the
    positions it would see alone. Only the last `keep` positions' logits are computed
    (`logits_to_keep`), never the whole `(b, L, V)`.
    """

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        super().__init__(model, pad_id)
        head: Any = getattr(model, "get_output_embeddings")()  # noqa: B009 (untyped in HF)
        self.vocab_size = int(head.weight.shape[0])
        # The KV cache's argument and output field: `cache` in newer transformers (which drop
        # `past_key_values` in 5.40), `past_key_values` in older ones.
        forward = inspect.signature(model.forward).parameters
        self._cache_name = "cache" if "cache" in forward else "past_key_values"
        # Turned off for good the first time the model's cache is not one that can be cut per
        # row and position (sliding-window, recurrent or static layers).
        self.prefix_reuse = True
        #: The LM head when only the target tokens' rows of it may be computed (`plain_head`);
        #: None computes the whole vocabulary at every kept position.
        self.target_head = plain_head(model)
        # Packed rows need a head whose target rows are read from hidden states, and an
        # attention that takes a 4D mask as given (SDPA's and the eager one do).
        attention_kind = getattr(model.config, "_attn_implementation", None)
        self._mask_4d = attention_kind in ("sdpa", "eager")
        # SDPA takes a boolean mask as it is; the eager attention adds the mask to its scores.
        self._additive_mask = attention_kind != "sdpa"

    @property
    def packing(self) -> bool:
        """Whether rows may be packed several to a batch row on a cached prefix (`packed`): the
        attention takes a 4D mask and the head is plain (`target_head`)."""
        return self._mask_4d and self.target_head is not None

    def _model_inputs(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        positions: torch.Tensor | None,
        cache: Any | None,
    ) -> dict[str, Any]:
        """The forward arguments of a left-padded batch (`token_logits`, `kept`): embeddings,
        explicit position ids, and the KV cache the rows continue, if any."""
        if inputs_embeds is None:
            inputs_embeds = self.embed(ids)
        if positions is None:
            positions = position_ids(attention)
        cached: dict[str, Any] = {"use_cache": False}
        if cache is not None:
            cached = {"use_cache": True, self._cache_name: cache}
        return {
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention,
            "position_ids": positions,
            **cached,
        }

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
        out = self.model(
            **self._model_inputs(ids, attention, inputs_embeds, positions, cache),
            logits_to_keep=keep,
        )
        logits: torch.Tensor = out.logits
        return logits

    def kept(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        keep: int,
        positions: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> KeptPositions:
        """The last `keep` positions of a left-padded batch (arguments as `token_logits`): their
        final hidden states when the model has a plain head (`target_head`), which the scores
        then read only what they need from, else their `(b, keep, V)` logits."""
        if self.target_head is None:
            logits = self.token_logits(ids, attention, inputs_embeds, keep, positions, cache)
            return KeptPositions(logits)
        out = self.model.base_model(
            **self._model_inputs(ids, attention, inputs_embeds, positions, cache)
        )
        hidden: torch.Tensor = out.last_hidden_state[:, -keep:]
        return KeptPositions(hidden, self.target_head)

    def prefix_cache(
        self, ids: torch.Tensor, attention: torch.Tensor, keep: int = 0
    ) -> tuple[DynamicCache, KeptPositions | None] | None:
        """The KV cache of a left-padded batch (explicit position ids, as `token_logits`) and,
        with `keep`, its last `keep` positions (as `kept`: rows equal to a reference are scored
        from its pass); or None, and prefix reuse off for this model, when its cache has layers
        that cannot be cut per row and position."""
        inputs: dict[str, Any] = {
            "inputs_embeds": self.embed(ids),
            "attention_mask": attention,
            "position_ids": position_ids(attention),
            "use_cache": True,
        }
        kept = None
        if keep and self.target_head is None:
            out = self.model(**inputs, logits_to_keep=keep)
            kept = KeptPositions(out.logits)
        else:
            # Without positions to keep, or with a plain head: the body's pass alone.
            body = self.model.base_model
            no_logits: dict[str, Any] = {"logits_to_keep": 1} if body is self.model else {}
            out = body(**inputs, **no_logits)
            if keep:
                kept = KeptPositions(out.last_hidden_state[:, -keep:], self.target_head)
        cache = getattr(out, self._cache_name, None)
        if not isinstance(cache, DynamicCache) or any(
            type(layer) is not DynamicLayer for layer in cache.layers
        ):
            log.info("model cache %s cannot be cut per row: no prefix reuse", type(cache))
            self.prefix_reuse = False
            return None
        return cache, kept

    def cache_rows(
        self, cache: DynamicCache, rows: torch.Tensor, length: int, expand: int = 0
    ) -> DynamicCache:
        """A new cache of `cache`'s batch rows `rows` (repeats allowed), first `length` slots
        (`cache` is left as it is: the model appends to the new one); with `expand`, `rows` is
        one row, viewed `expand` times instead of gathered."""
        cut = []
        for layer in cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if keys is None or values is None:
                raise RuntimeError("the prefix cache has a layer without keys or values")
            if expand:
                r = int(rows[0])
                keys = keys[r : r + 1, :, :length]
                values = values[r : r + 1, :, :length]
                cut.append((keys.expand(expand, -1, -1, -1), values.expand(expand, -1, -1, -1)))
            else:
                cut.append(
                    (
                        keys[:, :, :length].index_select(0, rows),
                        values[:, :, :length].index_select(0, rows),
                    )
                )
        return DynamicCache(cut)

    def packed(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        index: torch.Tensor,
    ) -> KeptPositions:
        """Packed rows on a cache (`packing` only): `(b, W, h)` input embeddings continuing
        `cache`, whose boolean `(b, 1, W, C + W)` `mask` says which cache slots and new
        positions each position sees (True: seen), and `(b, W)` position ids; returns the final
        hidden states at `index` (`(m, t)` flat positions `row * W + column`) as `(m, t)` kept
        positions."""
        if self._additive_mask:  # the eager attention: 0 where seen, the dtype's minimum else
            mask = torch.zeros(mask.shape, dtype=embeds.dtype, device=mask.device).masked_fill_(
                ~mask, torch.finfo(embeds.dtype).min
            )
        out = self.model.base_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_name: cache},
        )
        hidden: torch.Tensor = out.last_hidden_state
        states = hidden.reshape(-1, hidden.shape[-1])[index]
        return KeptPositions(states, self.target_head)

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        """`(b, V)` next-token logits after the last position (only the last position's are
        ever computed: `read_only` changes nothing)."""
        return self.token_logits(ids, attention, inputs_embeds, 1)[:, -1]

    def run_head(self, inputs: torch.Tensor) -> torch.Tensor:
        """Causal LMs have no classification head."""
        raise InvalidArgument("the model is a causal LM: it has no classification head")

    def head_input(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
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
        positions = position_ids(attention)
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
