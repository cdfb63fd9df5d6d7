"""Chunking, bounded look-ahead and cancellation of GetActivations' generator."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from activation_refs import TEXTS, gather, run_texts

from explainserve.activations.limits import ActivationLimits
from explainserve.activations.params import ActivationParams
from explainserve.activations.service import Activator
from explainserve.errors import Cancelled
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.options import WorkerOptions
from explainserve.vocabulary import InputSpec


def params(n: int, *, same_length: bool = False, **fields: object) -> ActivationParams:
    """`n` inputs cycling through TEXTS, or all TEXTS[1] (the worker then batches them in
    request order: with equal lengths, its closest-length choice is first come first served)."""
    texts = [TEXTS[1] if same_length else TEXTS[i % len(TEXTS)] for i in range(n)]
    return ActivationParams(model="bert", inputs=[InputSpec(text=t) for t in texts], **fields)  # type: ignore[arg-type]


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_chunks_cover_consecutive_inputs_and_match_one_big_chunk(
    small_chunks: Activator, activator: Activator
) -> None:
    fields = {"split_points": ["bert.encoder.layer.1"], "granularity": "all_tokens"}
    chunked = gather(list(small_chunks.get_activations(params(20, **fields))))
    assert [(c.input_start, c.input_count) for c in chunked.chunks] == [
        (0, 3),
        (3, 3),
        (6, 3),
        (9, 3),
        (12, 3),
        (15, 3),
        (18, 2),
    ]
    whole = gather(list(activator.get_activations(params(20, **fields))))
    assert len(whole.chunks) == 1
    np.testing.assert_array_equal(chunked.offsets, whole.offsets)
    np.testing.assert_allclose(
        chunked.values["bert.encoder.layer.1"],
        whole.values["bert.encoder.layer.1"],
        rtol=1e-4,
        atol=1e-5,
    )


def test_chunks_are_cut_by_bytes(registry: Registry) -> None:
    # One input of TEXTS[1] at all tokens of a 32-wide layer: 12 tokens x 32 x 4 = 1536 bytes.
    tight = Activator(registry, ActivationLimits(chunk_bytes=4000))
    got = gather(
        list(
            tight.get_activations(
                ActivationParams(
                    model="bert",
                    inputs=[InputSpec(text=TEXTS[1])] * 5,
                    split_points=["bert.encoder.layer.0"],
                    granularity="all_tokens",
                )
            )
        )
    )
    assert [c.input_count for c in got.chunks] == [2, 2, 1]
    assert all(c.n_bytes <= 4000 for c in got.chunks)


def test_the_generator_computes_a_bounded_number_of_chunks_ahead(
    registry: Registry, small_chunks: Activator
) -> None:
    """Chunks of 3 inputs, one chunk ahead: a consumer that stops pulling stops the work after
    two chunks, whatever the number of inputs."""
    worker = registry.get("bert").worker
    stats = worker.stats
    before = stats.rows
    chunks = small_chunks.get_activations(params(300))
    first = next(chunks)
    assert first.input_count == 3
    # The generator submits only inside `next`: once the worker is idle, what it has run is
    # all it was given (a generator that ran ahead would have queued more, and the wait would
    # run that too).
    worker.wait_idle()
    assert stats.rows - before == 6
    second = next(chunks)
    assert second.input_start == 3
    worker.wait_idle()
    assert stats.rows - before == 9
    chunks.close()


@pytest.fixture(scope="module")
def ten_row_batches(tiny_bert_dir: Path) -> Iterator[Registry]:
    """The tiny BERT again, its worker cutting batches of 10 rows."""
    reg = Registry()
    config = ModelConfig(
        name="bert", path=tiny_bert_dir, device="cpu", worker=WorkerOptions(max_batch_rows=10)
    )
    reg.add(load_model(config))
    yield reg
    reg.close()


class Gates:
    """A pre-hook holding the model's forward passes: the first until `first` is set, every
    later one until `later` is set."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.first = threading.Event()
        self.later = threading.Event()
        self.calls = 0
        self.handle = model.get_submodule("bert.embeddings").register_forward_pre_hook(self.hold)

    def hold(self, *_args: object) -> None:
        self.calls += 1
        (self.first if self.calls == 1 else self.later).wait(10)

    def close(self) -> None:
        self.first.set()
        self.later.set()
        self.handle.remove()


def test_closing_the_generator_drops_the_jobs_not_yet_run(ten_row_batches: Registry) -> None:
    served = ten_row_batches.get("bert")
    stats = served.worker.stats
    gates = Gates(served.model)
    eager = Activator(ten_row_batches, ActivationLimits(chunk_inputs=10, prefetch_chunks=5))
    try:
        chunks = eager.get_activations(params(200, same_length=True))
        first: list[object] = []
        reader = threading.Thread(target=lambda: first.append(next(chunks)))
        reader.start()
        wait_for(lambda: stats.rows == 10)  # batch 1 (chunk 0) is in the model, held
        gates.first.set()
        reader.join(10)
        assert first, "the first chunk never came"
        wait_for(lambda: stats.rows == 20)  # batch 2 is in the model, held
        chunks.close()  # 40 inputs of chunks 2 to 5 are still queued: dropped
        gates.later.set()
        served.worker.wait_idle()  # dropped, or (were they not) run
        assert stats.rows == 20
    finally:
        gates.close()


def test_cancellation_ends_the_stream_with_cancelled(ten_row_batches: Registry) -> None:
    served = ten_row_batches.get("bert")
    stats = served.worker.stats
    before = stats.rows
    gates = Gates(served.model)
    cancelled = threading.Event()
    eager = Activator(ten_row_batches, ActivationLimits(chunk_inputs=10, prefetch_chunks=2))
    try:
        chunks = eager.get_activations(params(100, same_length=True), is_cancelled=cancelled.is_set)
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for _ in chunks:
                    pass
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        wait_for(lambda: stats.rows - before == 10)  # batch 1 is in the model, held
        cancelled.set()
        gates.close()
        reader.join(10)
        assert not reader.is_alive()
        assert len(errors) == 1
        assert isinstance(errors[0], Cancelled)
        assert stats.rows - before == 10  # the held batch only
    finally:
        gates.close()


def test_run_texts_after_cancellation_still_works(activator: Activator) -> None:
    got = run_texts(activator, "bert", TEXTS)
    assert got.offsets[-1] == len(TEXTS)


@pytest.mark.parametrize("n", [1, 256, 257, 600])
def test_default_chunking_by_count(activator: Activator, n: int) -> None:
    got = gather(list(activator.get_activations(params(n))))
    counts = [c.input_count for c in got.chunks]
    assert sum(counts) == n
    assert all(c <= 256 for c in counts)
    assert len(counts) == -(-n // 256)


def test_batches_group_inputs_of_close_lengths(registry: Registry, activator: Activator) -> None:
    """Short and long inputs interleaved: once a batch has `activation_fill_tokens` real tokens,
    the worker only adds inputs of (nearly) its length, so the short and the long ones go in
    separate batches, with no padding."""
    stats = registry.get("bert").worker.stats
    long = "The quick brown fox jumps over the lazy dog. " * 4
    texts = [long if i % 2 else "Hi." for i in range(400)]
    before = (stats.batches, stats.padded_tokens, stats.real_tokens)
    got = run_texts(activator, "bert", texts, split_points=["bert.encoder.layer.0"])
    batches = stats.batches - before[0]
    padded = stats.padded_tokens - before[1]
    real = stats.real_tokens - before[2]
    assert real == 200 * 4 + 200 * 42  # [CLS] Hi . [SEP]; 40 words and 2 specials
    assert padded == real
    assert batches == 3  # the short ones; the long ones, in two under the token budget
    np.testing.assert_allclose(
        got.rows("bert.encoder.layer.0", 2), got.rows("bert.encoder.layer.0", 0)
    )


def test_a_small_request_goes_in_one_batch(registry: Registry, activator: Activator) -> None:
    """Under `activation_fill_tokens` real tokens, inputs of any length share a batch."""
    stats = registry.get("bert").worker.stats
    before = stats.batches
    run_texts(activator, "bert", TEXTS)
    assert stats.batches - before == 1
