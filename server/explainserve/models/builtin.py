"""Models this package builds offline, served with `--model NAME=builtin:KEY`.

- `minilm-sentiment`: the embedded default sentiment classifier (`default_model`).
- `tiny-gpt2`: a 2-layer GPT-2 causal LM, so the causal-LM API can be tried without a download.
  Its architecture is the shipped `data/tiny_gpt2.json`; its byte-level BPE tokenizer is trained
  here on the shipped sentences (`data/sentiment_*.tsv`), its weights are drawn from a fixed seed.
  It is untrained: its continuations are gibberish, but every code path of a real causal LM
  (generation, teacher forcing, prompt and continuation units) runs on it, deterministically.

Each is built once into the cache (`default_model.cache_root()`), in a directory named after a
hash of its recipe, and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["BUILTIN_MODELS", "builtin_model_dir", "tiny_gpt2_dir"]

_LOG = logging.getLogger(__name__)
_TINY_GPT2_CONFIG = "tiny_gpt2.json"
_CORPUS_FILES = ("sentiment_train.tsv", "sentiment_heldout.tsv")
_SPECIALS = ("<|endoftext|>",)
#: Bumped whenever the build changes in a way the recipe hash would not see.
_TINY_GPT2_BUILD_VERSION = 1


def _data(name: str) -> bytes:
    return (resources.files("explainserve.models") / "data" / name).read_bytes()


def _corpus() -> list[str]:
    """The shipped sentences (the text after the label of each `label<TAB>sentence` line)."""
    lines = []
    for name in _CORPUS_FILES:
        for line in _data(name).decode("utf-8").splitlines():
            if "\t" in line:
                lines.append(line.split("\t", 1)[1])
    return lines


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE (no mask token, `<|endoftext|>` as BOS/EOS/padding) trained
    on the shipped sentences; offsets not trimmed, as GPT-2's own tokenizer (a token's span
    includes the space it encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=_SPECIALS[0],
        eos_token=_SPECIALS[0],
        unk_token=_SPECIALS[0],
        model_max_length=256,
    )


def build_tiny_gpt2(out: Path) -> None:
    """Builds the tiny GPT-2 LM into `out` (save_pretrained layout)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    recipe = json.loads(_data(_TINY_GPT2_CONFIG))
    seed = int(recipe.pop("seed"))
    tokenizer = _train_tokenizer(int(recipe.pop("tokenizer_vocab_size")))
    recipe.pop("model_type")
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        **recipe,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _recipe_key(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:16]


def tiny_gpt2_dir(cache_dir: Path | None = None) -> Path:
    """The built tiny GPT-2 LM's directory, building it first when it is not cached."""
    from explainserve.models.default_model import cache_root

    key = _recipe_key(
        [
            str(_TINY_GPT2_BUILD_VERSION).encode(),
            _data(_TINY_GPT2_CONFIG),
            *(_data(name) for name in _CORPUS_FILES),
        ]
    )
    parent = (cache_dir if cache_dir is not None else cache_root()) / "builtin"
    final = parent / f"tiny-gpt2-{key}"
    done = final / "config.json"
    if done.is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=parent))
    try:
        _LOG.info("building builtin:tiny-gpt2 into %s", final)
        build_tiny_gpt2(staging)
        try:
            staging.rename(final)
        except OSError:
            if not done.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _minilm_sentiment_dir() -> Path:
    from explainserve.models.default_model import default_model_dir

    return default_model_dir()


#: Built-in model keys -> a function returning the built model's directory.
BUILTIN_MODELS: dict[str, Callable[[], Path]] = {
    "minilm-sentiment": _minilm_sentiment_dir,
    "tiny-gpt2": tiny_gpt2_dir,
}


def builtin_model_dir(key: str) -> Path:
    """The directory of built-in model `key` (built on first use)."""
    return BUILTIN_MODELS[key]()
