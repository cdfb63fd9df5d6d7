"""Loading (`models.loading`): the task named in the configuration must match the model's
architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from explainserve.errors import InvalidArgument
from explainserve.models.loading import ModelConfig, load_model


def test_explicit_task_must_match_the_architecture(
    tiny_gpt2_lm_dir: Path, tiny_gpt2_dir: Path
) -> None:
    with pytest.raises(InvalidArgument, match="is not a sequence classifier"):
        load_model(ModelConfig("x", tiny_gpt2_lm_dir, device="cpu", task="sequence-classification"))
    with pytest.raises(InvalidArgument, match="is not a causal LM"):
        load_model(ModelConfig("x", tiny_gpt2_dir, device="cpu", task="causal-lm"))
