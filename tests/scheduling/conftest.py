"""Fixtures of the worker's tests: a toy runner, a record of batches, workers closed after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from toy_worker import ToyRunner

from explainserve.scheduling.worker import Worker


@pytest.fixture
def runner() -> ToyRunner:
    """A toy runner whose batches cost nothing on its clock."""
    return ToyRunner()


@pytest.fixture
def batches() -> list[list[tuple[int, int, int]]]:
    """Filled by `record`: each batch attempt as (job id, start, stop) pieces."""
    return []


@pytest.fixture
def closing() -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    yield workers
    for w in workers:
        w.close()
