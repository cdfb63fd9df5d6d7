"""Tiny Hugging Face models built offline with fixed seeds, saved with `save_pretrained`.

Weights are initialised with a wide normal (std 0.3 instead of 0.02) so that outputs depend
visibly on the input: explanation tests need non-trivial differences between perturbed inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    RobertaConfig,
    RobertaForSequenceClassification,
)

LABELS = ["negative", "neutral", "positive"]


def _label_maps() -> dict[str, object]:
    return {
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: i for i, label in enumerate(LABELS)},
    }


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _save(
    out: Path, tokenizer: PreTrainedTokenizerBase, seed: int, model_class: Any, config: Any
) -> Path:
    """Initialises `model_class(config)` from `seed` and saves it with `tokenizer` under `out`."""
    assert isinstance(config, PretrainedConfig)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _gpt2_config(tokenizer: PreTrainedTokenizerBase, **extra: Any) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        initializer_range=0.3,
        **_special_ids(tokenizer),
        **extra,
    )


def build_bert_classifier(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer BERT sequence classifier (3 labels) for `tokenizer`, saved under `out`."""
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id or 0,
        **_label_maps(),
    )
    return _save(out, tokenizer, seed, BertForSequenceClassification, config)


def build_gpt2_classifier(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer GPT-2 sequence classifier (head on the last non-pad token), no mask token."""
    config = _gpt2_config(tokenizer, **_label_maps())
    return _save(out, tokenizer, seed, GPT2ForSequenceClassification, config)


def build_roberta_classifier(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer RoBERTa sequence classifier: its `classifier` head takes the whole sequence
    output and reads the first token (`<s>`) through `classifier.dense`."""
    pad = tokenizer.pad_token_id
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        # RoBERTa's positions start after the pad id.
        max_position_embeddings=128 + pad + 1,
        type_vocab_size=1,
        initializer_range=0.3,
        **_special_ids(tokenizer),
        **_label_maps(),
    )
    return _save(out, tokenizer, seed, RobertaForSequenceClassification, config)


def build_distilbert_classifier(
    out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> Path:
    """A 2-layer DistilBERT sequence classifier: `classifier` reads `pre_classifier`'s output of
    the first token ([CLS])."""
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=128,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id or 0,
        **_label_maps(),
    )
    return _save(out, tokenizer, seed, DistilBertForSequenceClassification, config)


def build_gpt2_lm(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer GPT-2 causal LM (tied embeddings, learned positions), no mask token."""
    return _save(out, tokenizer, seed, GPT2LMHeadModel, _gpt2_config(tokenizer))


def build_llama_lm(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer Llama-style causal LM (RoPE, RMSNorm, grouped-query attention, untied head)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        tie_word_embeddings=False,
        **_special_ids(tokenizer),
    )
    return _save(out, tokenizer, seed, LlamaForCausalLM, config)
