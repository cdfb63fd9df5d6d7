"""Encoder classifiers' final layer at the first position only (`models.first_position`): the
logits equal the full layer's on every architecture it handles, padded rows, ids or embeddings,
eager and SDPA attention, gradients included; the feed-forward block really runs one position
per row; activation capture and other threads see the full layer; other models are left alone.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    CamembertConfig,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    PretrainedConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from explainserve.models.first_position import (
    FIRST_POSITION_LAYERS,
    MIN_ROWS,
    FirstPositionLayer,
)
from explainserve.models.runners import ClassifierRunner

SIZES: dict[str, Any] = {
    "vocab_size": 96,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "num_labels": 3,
}
CONFIGS: dict[str, type[PretrainedConfig]] = {
    "bert": BertConfig,
    "roberta": RobertaConfig,
    "xlm-roberta": XLMRobertaConfig,
    "camembert": CamembertConfig,
    "electra": ElectraConfig,
}
#: The one-query attention sums the same terms as the full layer's first row, in another order
#: (a (1, L) product instead of a row of an (L, L) one): float32 rounding, a few ulps of values
#: of order 1 after three layers.
ATOL = 1e-5


def _classifier(kind: str, attention: str) -> Any:
    torch.manual_seed(0)
    extra: dict[str, Any] = {"pad_token_id": 1} if kind != "bert" else {}
    config = CONFIGS[kind](**SIZES, **extra)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    return model.eval()


def _batch(runner: ClassifierRunner) -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded rows of 9, 6 and 4 tokens (ids from 3 on: no special ids)."""
    generator = torch.Generator().manual_seed(1)
    lengths = [9, 6, 4]
    ids = torch.full((3, 9), runner.pad_id, dtype=torch.long)
    attention = torch.zeros((3, 9), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, SIZES["vocab_size"], (n,), generator=generator)
        attention[i, :n] = 1
    return ids, attention


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_logits_equal_the_full_layers_and_the_feed_forward_runs_one_position_per_row(
    kind: str, attention: str
) -> None:
    model = _classifier(kind, attention)
    runner = ClassifierRunner(model, pad_id=1 if kind != "bert" else 0)
    assert runner.first_position is not None
    assert type(runner.first_position.layer).__name__ == FIRST_POSITION_LAYERS[type(model).__name__]
    ids, mask = _batch(runner)
    shapes: list[tuple[int, ...]] = []
    last = runner.first_position.layer
    hook = last.intermediate.register_forward_hook(lambda _m, i, _o: shapes.append(i[0].shape))
    try:
        with torch.inference_mode():
            full = runner.logits(ids, mask)
            short = runner.logits(ids, mask, read_only=True)
            embeds = runner.embed(ids) * 0.5
            full_embeds = runner.logits(ids, mask, embeds)
            short_embeds = runner.logits(ids, mask, embeds, read_only=True)
    finally:
        hook.remove()
    # The full layer's feed-forward runs every position, the short one the first only (of
    # at least MIN_ROWS rows: the 3 rows and copies of the first).
    short_rows = (MIN_ROWS, 1, 32)
    assert shapes == [(3, 9, 32), short_rows, (3, 9, 32), short_rows]
    assert full.shape == (3, 3)
    torch.testing.assert_close(short, full, rtol=0, atol=ATOL)
    torch.testing.assert_close(short_embeds, full_embeds, rtol=0, atol=ATOL)
    # Padding is masked in the short layer too: each row equals itself alone.
    with torch.inference_mode():
        for i, n in enumerate([9, 6, 4]):
            alone = runner.logits(ids[i : i + 1, :n], mask[i : i + 1, :n], read_only=True)
            torch.testing.assert_close(alone[0], full[i], rtol=0, atol=ATOL)


def test_gradients_through_the_short_layer_equal_the_full_layers() -> None:
    model = _classifier("bert", "sdpa")
    runner = ClassifierRunner(model, pad_id=0)
    ids, mask = _batch(runner)
    grads = []
    for read_only in (False, True):
        embeds = runner.embed(ids).detach().requires_grad_(True)
        score = runner.logits(ids, mask, embeds, read_only=read_only)[:, 1].sum()
        (grad,) = torch.autograd.grad(score, embeds)
        grads.append(grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=ATOL)


def test_capture_and_other_threads_see_the_full_final_layer() -> None:
    model = _classifier("roberta", "sdpa")
    runner = ClassifierRunner(model, pad_id=1)
    assert runner.first_position is not None
    ids, mask = _batch(runner)
    last = f"roberta.encoder.layer.{SIZES['num_hidden_layers'] - 1}"
    with torch.inference_mode():
        runner.logits(ids, mask, read_only=True)
        captured, logits = runner.capture(ids, mask, [last], True)
        assert captured[last].shape == (3, 9, 32)
        assert logits is not None
        torch.testing.assert_close(logits, runner.logits(ids, mask), rtol=0, atol=0)
        seen: list[torch.Tensor] = []
        with runner.first_position.active():
            inside = model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
            thread = threading.Thread(
                target=lambda: seen.append(
                    model.roberta(input_ids=ids, attention_mask=mask).last_hidden_state
                )
            )
            thread.start()
            thread.join()
    assert inside.shape == (3, 1, 32)
    assert seen[0].shape == (3, 9, 32)


@pytest.mark.parametrize(
    "config",
    [
        DistilBertConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
        GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, pad_token_id=0),
        BertConfig(**SIZES, is_decoder=True),
    ],
    ids=["distilbert", "gpt2", "bert-decoder"],
)
def test_other_models_keep_their_final_layer(config: PretrainedConfig) -> None:
    model = AutoModelForSequenceClassification.from_config(config).eval()
    assert FirstPositionLayer.install(model) is None
    runner = ClassifierRunner(model, pad_id=0)
    assert runner.first_position is None
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        torch.testing.assert_close(
            runner.logits(ids, mask, read_only=True), runner.logits(ids, mask), rtol=0, atol=0
        )
