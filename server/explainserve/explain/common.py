"""The steps both request paths (sequence classifiers: `service`, causal LMs: `causal_flow`)
share between a request's inputs and their scores: encode an input, bound its rows, start every
input's run, collect the scores (the runs' types: `explain.run`)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from explainserve.errors import InvalidArgument
from explainserve.explain.run import Item, Pending, Picked, Progress, RunContext
from explainserve.scheduling.jobs import ForwardJob

if TYPE_CHECKING:
    from explainserve.explain.method import Method
    from explainserve.models.registry import ServedModel


def count_rows(
    method: Method, index: int, n_units: int, n_targets: int, limit: int, fixes: str
) -> int:
    """The sequences `method` sends through the model for input `index`, refused beyond
    `limit` with a message that says what to change (`fixes`: the request's own options)."""
    n = method.n_rows(n_units, n_targets)
    if n > limit:
        raise InvalidArgument(
            f"input {index} would need {n} forward passes, the limit is {limit}: lower the "
            f"number of perturbations, steps or samples, {fixes}",
            field=f"inputs[{index}]",
        )
    return n


def start_runs(
    model: ServedModel, items: list[Item], method: Method, ctx: RunContext
) -> dict[int, Pending]:
    """`plan_runs`, then `submit_runs`."""
    runs = plan_runs(model, items, method, ctx)
    submit_runs(model, runs)
    return runs


def submit_runs(model: ServedModel, runs: dict[int, Pending]) -> None:
    """Every run's jobs, submitted together (so inputs share batches): one round."""
    model.worker.submit_all(job for run in runs.values() for job in run.jobs)


def plan_runs(
    model: ServedModel, items: list[Item], method: Method, ctx: RunContext
) -> dict[int, Pending]:
    """One run per item (not yet submitted). With reuse, an input identical to an earlier one
    of the request (same tokens, units and targets: for a method whose rows depend on nothing
    else, its scores are the same) shares that input's run."""
    runs: dict[int, Pending] = {}
    firsts: dict[tuple[bytes, ...], int] = {}
    for item in items:
        if method.shares_identical_inputs and model.worker.options.reuse:
            key = _identity(item)
            if key in firsts:
                runs[item.index] = _Twin(runs[firsts[key]], ctx.progress)
                continue
            firsts[key] = item.index
        runs[item.index] = method.start(item, ctx)
    return runs


def _identity(item: Item) -> tuple[bytes, ...]:
    """What a perturbation run's rows and scores depend on, besides the request's parameters."""
    e = item.encoded
    positions = b"" if item.positions is None else item.positions.tobytes()
    return (
        e.ids.tobytes(),
        e.attention.tobytes(),
        item.units.token_to_unit.tobytes(),
        item.targets.tobytes(),
        b"" if item.choice is None else item.choice.key(),
        positions,
    )


class _Twin:
    """The run of an input identical to another input of its request: it shares that input's
    jobs (submitted once, by the other) and scores; its own sequences count as done with them."""

    def __init__(self, run: Pending, progress: Progress) -> None:
        self._run = run
        self.n_rows = run.n_rows
        n = run.n_rows
        run.futures[0].add_done_callback(
            lambda f: progress.add(n) if f.exception() is None else None
        )

    @property
    def jobs(self) -> list[ForwardJob]:
        """None of its own."""
        return []

    @property
    def futures(self) -> list[Future[Any]]:
        """The other input's futures."""
        return self._run.futures

    def finish(self) -> NDArray[np.float64]:
        """The other input's scores."""
        return self._run.finish()

    @property
    def picked(self) -> Picked | None:
        """The other input's targets and logits."""
        return self._run.picked


def finished(runs: dict[int, Pending]) -> Iterator[tuple[int, NDArray[np.float64]]]:
    """Each run's index and scores, in the order they finish."""
    waiting = {f: i for i, run in runs.items() for f in run.futures}
    done_runs: set[int] = set()
    while waiting:
        done, _ = wait(list(waiting), return_when=FIRST_COMPLETED)
        for f in done:
            waiting.pop(f)
        for i, run in runs.items():
            if i in done_runs or not all(f.done() for f in run.futures):
                continue
            done_runs.add(i)
            yield i, run.finish()
