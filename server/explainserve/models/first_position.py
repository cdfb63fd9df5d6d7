"""Encoder classifiers' final layer run at the first position only.

A BERT-style sequence classifier reads one position of its final layer: the first (`[CLS]`,
`<s>`), through BERT's pooler or the RoBERTa / ELECTRA classification head (`features[:, 0]`).
In that layer every position's keys and values are still needed, since the first position
attends to them, but the queries, the attention output, its projection and the feed-forward
block are needed at the first position only: of the layer's ~12 d^2 multiply-adds per token
(4 d^2 in the projections, 8 d^2 in the feed-forward), 2 d^2 per token remain. On the default
6-layer MiniLM that is ~14 % of the model's matrix work; measured on a batch of 27 rows x 19
tokens (`bench/peers.py`'s Occlusion shape), 1 thread, this CPU: 239 -> 219 ms (1.09x; the
embeddings, masks and per-layer Python are not reduced).

The results equal the full layer's up to float rounding (the first position's attention is the
same sums, computed along each row's own vectors), and like the full layer's they do not depend
on how many rows share the batch (`ONE_QUERY_ATTENTION`, `MIN_ROWS`), which the bit-for-bit
checks of tests/explain rely on. tests/models/test_first_position.py checks every
architecture below, padded rows, embeddings given instead of ids, eager and SDPA attention, and
gradients through it.

Only the architectures whose final layer and head were read in transformers' modeling code are
handled (`FIRST_POSITION_LAYERS`); any other model runs its full final layer. The layer's
`forward` is wrapped once (`FirstPositionLayer.install`) and does the short computation only
inside `FirstPositionLayer.active()`, per thread, so activation capture (which may read the
final layer's every position) on another thread or outside it sees the unchanged layer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel

#: Sequence classifiers whose head reads only the final layer's first position (BERT's pooler:
#: `hidden_states[:, 0]`; the RoBERTa-style heads: `features[:, 0, :]`), and the class of their
#: encoder's layers, whose forward (self-attention, its output block, the feed-forward block) is
#: BERT's, line for line, in the transformers these were read in (5.24).
FIRST_POSITION_LAYERS = {
    "BertForSequenceClassification": "BertLayer",
    "RobertaForSequenceClassification": "RobertaLayer",
    "XLMRobertaForSequenceClassification": "XLMRobertaLayer",
    "CamembertForSequenceClassification": "CamembertLayer",
    "ElectraForSequenceClassification": "ElectraLayer",
}
#: Attention implementations whose result the short layer reproduces: scaled dot products,
#: softmax with the padding mask (additive or boolean), nothing else (no relative positions,
#: no sliding window). The short layer computes it itself (`_first_position`): SDPA with one
#: query per row, and the eager one's (1, L) matrix products, take kernels whose rounding
#: depends on the batch's size, so a row's logits would differ in the last bits between
#: batches (the full layer's L-query attention does not).
ONE_QUERY_ATTENTION = frozenset({"eager", "sdpa"})
#: The fewest rows the short layer's matrix products take: a batch of fewer is filled with
#: copies of its first row. The full layer's products have rows x tokens rows; the short
#: layer's, rows: on this CPU (torch 2.15, MKL) a product of 1-3, 5-7 or 9-11 rows is rounded
#: differently from the same rows in a larger one (another kernel), so a row's logits would
#: depend in their last bits on how many rows share its batch. With at least 16 they do not
#: (no more than with the full layer).
MIN_ROWS = 16


class FirstPositionLayer:
    """A model's final encoder layer, computed at the first position only while `active`."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.layer = layer
        self._forward = layer.forward
        self._local = threading.local()

    @classmethod
    def install(cls, model: PreTrainedModel) -> FirstPositionLayer | None:
        """Wrap the final layer of `model` when its head reads the first position only and its
        layer is one this module knows (`FIRST_POSITION_LAYERS`); None otherwise."""
        layer_class = FIRST_POSITION_LAYERS.get(type(model).__name__)
        config = model.config
        if layer_class is None or getattr(config, "is_decoder", False):
            return None
        if getattr(config, "add_cross_attention", False):
            return None
        if config._attn_implementation not in ONE_QUERY_ATTENTION:
            return None
        layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
            return None
        last = layers[-1]
        if type(last).__name__ != layer_class:
            return None
        wrapper = cls(last)
        # An instance attribute: `Module.__call__` (and so its hooks) calls it instead of the
        # class's forward.
        last.forward = wrapper._call
        return wrapper

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within this block, on this thread, the layer returns `(b, 1, d)`: its first position."""
        before = getattr(self._local, "on", False)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = before

    def _call(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if not getattr(self._local, "on", False) or hidden_states.shape[1] == 1:
            return self._forward(hidden_states, attention_mask, *args, **kwargs)
        return self._first_position(hidden_states, attention_mask)

    def _first_position(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """BERT's layer forward (self-attention, its output block, the feed-forward block) with
        the queries and everything after the attention at position 0 only."""
        layer: Any = self.layer
        attention = layer.attention.self
        rows, length = hidden_states.shape[:2]
        # Contiguous: a product of strided rows is rounded differently from one of the same
        # rows copied out (another kernel path), and small batches are copied (`MIN_ROWS`).
        first = hidden_states[:, :1].contiguous()
        heads = (-1, attention.attention_head_size)
        query = _at_least_min_rows(attention.query, first)
        query = query.view(rows, 1, *heads).transpose(1, 2)  # (b, h, 1, d)
        key = attention.key(hidden_states).view(rows, length, *heads).transpose(1, 2)
        value = attention.value(hidden_states).view(rows, length, *heads).transpose(1, 2)
        # One query per row, as products and sums along the row's own vectors (see
        # `one_query_attention`): the first position's row of the full layer's attention.
        scores = (key * query).sum(-1) * attention.scaling  # (b, h, L)
        if attention_mask is not None:
            mask = attention_mask[:, :, 0] if attention_mask.dim() == 4 else attention_mask
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + mask
        weights = scores.softmax(-1)
        if attention.training and attention.dropout.p:
            weights = attention.dropout(weights)
        context = (weights.unsqueeze(-1) * value).sum(-2)  # (b, h, d)
        context = context.reshape(rows, 1, -1)
        attended = _at_least_min_rows(layer.attention.output, context, first)
        out: torch.Tensor = _at_least_min_rows(layer.feed_forward_chunk, attended)
        return out


def _at_least_min_rows(module: Any, *inputs: torch.Tensor) -> torch.Tensor:
    """`module(*inputs)` on at least `MIN_ROWS` rows: fewer are filled with copies of the first
    row, and the result cut back."""
    rows = inputs[0].shape[0]
    if rows >= MIN_ROWS:
        out: torch.Tensor = module(*inputs)
        return out
    fill = MIN_ROWS - rows
    filled = [torch.cat([x, x[:1].expand(fill, *x.shape[1:])]) for x in inputs]
    out = module(*filled)
    return out[:rows]
