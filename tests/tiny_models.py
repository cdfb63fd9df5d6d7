"""Tiny Hugging Face models built offline with fixed seeds, saved with `save_pretrained`.

Weights are initialised with a wide normal (std 0.3 instead of 0.02) so that outputs depend
visibly on the input: explanation tests need non-trivial differences between perturbed inputs.
"""

from __future__ import annotations

from pathlib import Path

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


def build_bert_classifier(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer BERT sequence classifier (3 labels) for `tokenizer`, saved under `out`."""
    torch.manual_seed(seed)
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
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_gpt2_classifier(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer GPT-2 sequence classifier (head on the last non-pad token), no mask token."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_label_maps(),
    )
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_roberta_classifier(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer RoBERTa sequence classifier: its `classifier` head takes the whole sequence
    output and reads the first token (`<s>`) through `classifier.dense`."""
    torch.manual_seed(seed)
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
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_label_maps(),
    )
    model = RobertaForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_distilbert_classifier(
    out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> Path:
    """A 2-layer DistilBERT sequence classifier: `classifier` reads `pre_classifier`'s output of
    the first token ([CLS])."""
    torch.manual_seed(seed)
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
    model = DistilBertForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_gpt2_lm(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer GPT-2 causal LM (tied embeddings, learned positions), no mask token."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_llama_lm(out: Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> Path:
    """A 2-layer Llama-style causal LM (RoPE, RMSNorm, grouped-query attention, untied head)."""
    torch.manual_seed(seed)
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
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
