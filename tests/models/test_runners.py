"""The model runners (`models.runners`): position ids of left-padded rows, next-token logits of a
left-padded batch equal each row's alone, capture around the runner's own logits, and the calls
that do not apply to a task."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import ServedModel
from explainserve.models.runners import CausalLMRunner, ClassifierRunner
from explainserve.scheduling.jobs import position_ids


def test_position_ids_count_real_tokens_from_zero_and_pads_get_zero() -> None:
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(position_ids(attention), expected)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(
    request: pytest.FixtureRequest, tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path
) -> Iterator[ServedModel]:
    path = tiny_gpt2_lm_dir if request.param == "gpt2" else tiny_llama_lm_dir
    served = load_model(ModelConfig(request.param, path, device="cpu"))
    yield served
    served.close()


def test_left_padded_next_token_logits_equal_each_row_alone(lm: ServedModel) -> None:
    runner = lm.runner
    assert isinstance(runner, CausalLMRunner)
    assert runner.vocab_size == lm.model.get_output_embeddings().weight.shape[0]
    rows = [torch.tensor([5, 9, 13, 2, 7, 11]), torch.tensor([4, 8, 3])]
    width = 6
    ids = torch.full((2, width), runner.pad_id, dtype=torch.long)
    attention = torch.zeros((2, width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        attention[i, width - len(row) :] = 1
    with torch.inference_mode():
        batch = runner.token_logits(ids, attention, None, 3)
        assert batch.shape == (2, 3, runner.vocab_size)
        for i, row in enumerate(rows):
            alone = runner.token_logits(
                row[None], torch.ones((1, len(row)), dtype=torch.long), None, 3
            )
            # The same sums with padded (masked, exactly zero-weighted) columns: float32
            # rounding of a different reduction order, far below the logits' scale (~1).
            torch.testing.assert_close(batch[i], alone[0], rtol=0, atol=1e-5)
        # `logits` is the last kept position's, and `capture` returns those same logits.
        last = runner.logits(ids, attention)
        captured, logits = runner.capture(ids, attention, [lm.split_points[0][0]], True)
    assert torch.equal(last, batch[:, -1])
    assert logits is not None
    assert torch.equal(logits, last)
    assert captured[lm.split_points[0][0]].shape[0] == 2


def test_calls_that_do_not_apply_to_a_task_raise(lm: ServedModel, tiny_bert_dir: Path) -> None:
    bert = load_model(ModelConfig("bert", tiny_bert_dir, device="cpu"))
    try:
        runner = bert.runner
        assert isinstance(runner, ClassifierRunner)
        assert runner.vocab_size == 0
        assert not runner.prefix_reuse
        ids = torch.tensor([[1, 2, 3]])
        with pytest.raises(RuntimeError, match="no next-token logits"):
            runner.token_logits(ids, torch.ones_like(ids), None, 1)
        with pytest.raises(RuntimeError, match="cannot generate"):
            runner.generate([ids[0]], None, set())  # type: ignore[arg-type]
    finally:
        bert.close()
    with pytest.raises(Exception, match="no classification head"):
        lm.runner.run_head(torch.zeros((1, 4)))
