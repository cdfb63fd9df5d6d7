"""The built-in models: `builtin:tiny-gpt2` is built deterministically, offline, and loads as a
causal LM with GPT-2-style offsets (a token's span includes the space it encodes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from explainserve.config import ConfigError, ServeConfig
from explainserve.models.builtin import BUILTIN_MODELS, tiny_gpt2_dir


def test_tiny_gpt2_builds_the_same_bytes_twice(tmp_path: Path) -> None:
    first = tiny_gpt2_dir(tmp_path / "a")
    second = tiny_gpt2_dir(tmp_path / "b")
    assert first.name == second.name  # the recipe's hash
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # Cached: a second call returns the directory without building.
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_gpt2_dir(tmp_path / "a") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(first, local_files_only=True)
    assert config.architectures == ["GPT2LMHeadModel"]
    assert (config.n_layer, config.n_embd) == (2, 64)
    tokenizer = AutoTokenizer.from_pretrained(first, local_files_only=True)
    assert tokenizer.mask_token_id is None
    enc = tokenizer("cold and", return_offsets_mapping=True)
    assert enc["offset_mapping"][-1] == (4, 8)  # " and": the space is in the token's span


def test_builtin_names_are_checked() -> None:
    assert set(BUILTIN_MODELS) == {"minilm-sentiment", "tiny-gpt2"}
    config = ServeConfig(models={"w": Path("builtin:tiny-gpt3")})
    with pytest.raises(ConfigError, match="unknown built-in model 'tiny-gpt3'") as err:
        config.check_model_paths()
    assert err.value.key == "models.w"
