"""A toy runner and helpers for the worker's tests: rows that do not depend on their batch, and
a clock that the runner advances by a fixed cost per batch and per token, so that batch timings
(and what the worker learns from them) are exact on a loaded machine."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from explainserve.scheduling.jobs import ForwardJob, Job
from explainserve.scheduling.options import WorkerOptions
from explainserve.scheduling.worker import Worker

VOCAB = 64


class ToyRunner:
    """Logits = sum of the real positions' embeddings: exact whatever the batch and padding,
    because every embedding is a small multiple of 1/4 (float32 adds those exactly in any order,
    so the summation order that batch shapes change cannot show). `gate`, while cleared, holds
    every batch (to fill the queue)."""

    pad_id = 0
    padding_side = "right"
    vocab_size = 0

    def __init__(self, overhead: float = 0.0, per_token: float = 0.0) -> None:
        #: The fake clock (seconds) and what a batch adds to it: `overhead + per_token x tokens`.
        self.now = 0.0
        self.overhead = overhead
        self.per_token = per_token
        quarters = torch.randint(-8, 9, (VOCAB, 3), generator=torch.Generator().manual_seed(0))
        self.table = quarters.float() / 4
        self.gate = threading.Event()
        self.gate.set()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        self.gate.wait()
        self.now += self.overhead + self.per_token * ids.shape[0] * ids.shape[1]
        embeds = self.embed(ids) if inputs_embeds is None else inputs_embeds
        return (embeds * attention[..., None]).sum(1)

    def expected(self, job: ForwardJob) -> np.ndarray:
        full = self.table[torch.from_numpy(job.ids)].sum(1).double().numpy()
        return full[:, job.targets]


def make_job(rows: int, length: int, seed: int, **kwargs: object) -> ForwardJob:
    rng = np.random.default_rng(seed)
    return ForwardJob(
        ids=rng.integers(1, VOCAB, size=(rows, length)),
        attention=np.ones(length, dtype=np.int64),
        targets=np.array([0, 2]),
        **kwargs,  # type: ignore[arg-type]
    )


def start(runner: ToyRunner, **options: object) -> Worker:
    """A worker on `runner`, timed by its fake clock (no batching wait unless asked)."""
    defaults: dict[str, object] = {"batch_wait_seconds": 0.0}
    return Worker(
        runner,  # type: ignore[arg-type]
        WorkerOptions(**{**defaults, **options}),  # type: ignore[arg-type]
        name="toy",
        clock=lambda: runner.now,
    )


def record(
    into: list[list[tuple[int, int, int]]],
) -> Callable[[Sequence[tuple[Job, int, int]]], None]:
    """A fault hook that records each batch attempt as (job id, start, stop) pieces."""

    def hook(pieces: Sequence[tuple[Job, int, int]]) -> None:
        into.append([(id(job), start, stop) for job, start, stop in pieces])

    return hook
