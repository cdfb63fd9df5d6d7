"""Causal LMs' heads: when the target tokens' rows of the LM head may be computed alone
(`plain_head`), and the kept positions of a batch that scores are read from (`KeptPositions`)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

#: Causal LMs whose forward computes the logits as exactly `lm_head(final hidden states)`, with
#: `lm_head` a plain `nn.Linear` (read in their transformers modeling code): no logit scale,
#: multiplier, softcapping or masking after the head. Only for these are the target tokens' rows
#: of the head computed alone (`KeptPositions`); any other model computes the whole vocabulary.
PLAIN_HEAD_MODELS = frozenset(
    {
        "GPT2LMHeadModel",
        "GPTNeoXForCausalLM",
        "GemmaForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Olmo2ForCausalLM",
        "OlmoForCausalLM",
        "Phi3ForCausalLM",
        "PhiForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "SmolLM3ForCausalLM",
        "StableLmForCausalLM",
        "Starcoder2ForCausalLM",
    }
)
#: Configuration fields that some architectures apply to the logits after the head (Gemma 2's
#: softcapping, Cohere's scale, Granite's scaling, Falcon-H1's multiplier): a model whose config
#: sets one is never given the target-row head, whatever its class.
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
)


def plain_head(model: PreTrainedModel) -> torch.nn.Linear | None:
    """The model's LM head when the logits are exactly that `nn.Linear` applied to the base
    model's last hidden states (`PLAIN_HEAD_MODELS`, no `LOGIT_TRANSFORMS` set), else None."""
    if type(model).__name__ not in PLAIN_HEAD_MODELS or model.base_model is model:
        return None
    if any(getattr(model.config, name, None) is not None for name in LOGIT_TRANSFORMS):
        return None
    head: Any = getattr(model, "get_output_embeddings")()  # noqa: B009 (untyped in HF)
    return head if type(head) is torch.nn.Linear else None


class KeptPositions:
    """The last `keep` positions of a batch, from which each row's scores are read.

    `states` is `(b, keep, V)` logits, or, when `head` is given (a plain head: `plain_head`),
    the `(b, keep, d)` final hidden states before it: then only what is read is computed, the
    whole vocabulary at the positions asked for (`logits`), or only the target tokens' rows of
    the head (`target_logits`, `hidden · W[target] + b[target]`), which in logits mode is all a
    score needs: `d` multiply-adds per score instead of `d * V` per position.
    """

    def __init__(self, states: torch.Tensor, head: torch.nn.Linear | None = None) -> None:
        self.states = states
        self.head = head

    def logits(self, rows: slice | torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """`(n, t, V)` logits of batch rows `rows` at kept positions `cols` `(t,)`."""
        states = self.states[rows][:, cols]
        if self.head is None:
            return states
        out: torch.Tensor = self.head(states)
        return out

    def target_logits(
        self, rows: slice | torch.Tensor, cols: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """`(n, t)` logit of token `targets[k]` at kept position `cols[k]`, for batch rows
        `rows`."""
        states = self.states[rows][:, cols]
        if self.head is None:
            index = targets.view(1, -1, 1).expand(states.shape[0], -1, 1)
            return states.gather(2, index)[..., 0]
        # Accumulated in float32 like the head's matrix product, then rounded to the model's
        # dtype like its output.
        weight = self.head.weight[targets].float()
        out = torch.einsum("ntd,td->nt", states.float(), weight)
        if self.head.bias is not None:
            out = out + self.head.bias[targets].float()
        return out.to(states.dtype)
