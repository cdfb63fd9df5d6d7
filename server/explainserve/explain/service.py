"""Explain: validates a request, prepares inputs, runs the method through the model's worker and
yields each input's explanation as soon as it is finished. Sequence classifiers are explained
here; causal LMs in `causal_flow`, with the same steps (`common`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
from numpy.typing import NDArray

from explainserve.errors import InvalidArgument
from explainserve.explain.causal_flow import explain_causal
from explainserve.explain.common import (
    count_rows,
    encode,
    finished,
    plan_runs,
    start_runs,
    submit_runs,
)
from explainserve.explain.limits import Limits
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.run import Item, Picked, Progress, RunContext, TargetChoice
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.jobs import ForwardJob, RequestTag
from explainserve.vocabulary import InputSpec, make_units


def _target_choice(model: ServedModel, spec: InputSpec, index: int, limits: Limits) -> TargetChoice:
    """The request's targets of input `index`, checked; none: the predicted class."""
    if not spec.targets:
        return TargetChoice()
    if len(spec.targets) > limits.max_targets:
        raise InvalidArgument(
            f"input {index} asks for {len(spec.targets)} targets, the limit is "
            f"{limits.max_targets}",
            field=f"inputs[{index}].targets",
        )
    out = []
    n_classes = len(model.labels)
    for j, target in enumerate(spec.targets):
        if isinstance(target, str):
            out.append(model.label_index(target))
        elif 0 <= target < n_classes:
            out.append(target)
        else:
            raise InvalidArgument(
                f"target {target} of input {index} is out of range: the model has {n_classes} "
                f"classes (0..{n_classes - 1})",
                field=f"inputs[{index}].targets[{j}]",
            )
    return TargetChoice(np.asarray(out, dtype=np.int64))


class Explainer:
    """Runs Explain requests against the registry's models."""

    def __init__(self, registry: Registry, limits: Limits | None = None) -> None:
        self.registry = registry
        self.limits = limits or Limits()

    def explain(
        self,
        params: ExplainParams,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[Explanation]:
        """Yields one explanation per input, in the order they finish.

        Validation happens before the first forward; errors are domain exceptions.
        """
        started = time.perf_counter()
        model = self.registry.get(params.model)
        # Every job of the request shares this tag: the worker keys the request by it.
        is_cancelled = RequestTag(is_cancelled, isolated=params.isolate, priority=params.priority)
        if not params.inputs:
            raise InvalidArgument("the request has no inputs", field="inputs")
        if len(params.inputs) > self.limits.max_inputs:
            raise InvalidArgument(
                f"the request has {len(params.inputs)} inputs, the limit is "
                f"{self.limits.max_inputs}",
                field="inputs",
            )
        params.method.validate()
        if model.is_causal_lm:
            yield from explain_causal(
                model, params, self.limits, started, on_progress, is_cancelled
            )
            return
        for i, spec in enumerate(params.inputs):
            if spec.has_continuation:
                raise InvalidArgument(
                    f"input {i} has a continuation, but model '{model.name}' is a sequence "
                    "classifier: continuations are for causal LMs",
                    field=f"inputs[{i}].continuation",
                )
        if params.generation is not None:
            raise InvalidArgument(
                f"model '{model.name}' is a sequence classifier: generation is for causal LMs",
                field="generation",
            )
        encoded = [encode(model, spec, i) for i, spec in enumerate(params.inputs)]
        units = [make_units(e, params.granularity, model.tokenizer) for e in encoded]
        for i, u in enumerate(units):
            if u.n_units == 0:
                raise InvalidArgument(
                    f"input {i} has no {params.granularity} units to explain",
                    field=f"inputs[{i}]",
                )
        rows = [
            count_rows(
                params.method,
                i,
                u.n_units,
                max(1, len(params.inputs[i].targets)),
                self.limits.max_rows_per_input,
                "or use a coarser granularity",
            )
            for i, u in enumerate(units)
        ]
        choices = [
            _target_choice(model, spec, i, self.limits) for i, spec in enumerate(params.inputs)
        ]
        ctx_args = (params.mode, params.aggregation, params.seed)
        if params.method.picks_targets_late:
            # One round: each input's job carries its unperturbed row, the targets are picked
            # from it once the rows are in.
            progress = Progress(0, on_progress)
            ctx = RunContext(model, *ctx_args, progress, is_cancelled)
            empty = np.zeros(0, dtype=np.int64)
            items = [
                Item(i, encoded[i], units[i], empty, choice=choices[i]) for i in range(len(encoded))
            ]
            runs = plan_runs(model, items, params.method, ctx)
            progress.extend(sum(run.n_rows for run in runs.values()))
            model.worker.admit(progress.total)  # a full queue refuses the request at once
            submit_runs(model, runs)
            for i, scores in finished(runs):
                picked = runs[i].picked
                if picked is None:
                    raise RuntimeError(
                        f"method {params.method.name} picks its targets once the rows are in "
                        f"(picks_targets_late), but its run of input {i} picked none"
                    )
                yield self._explanation(model, items[i], scores, picked, runs[i].n_rows, started)
            return
        progress = Progress(len(encoded) + sum(rows), on_progress)
        n_classes = len(model.labels)
        base_jobs = [
            ForwardJob(
                ids=e.ids[None, :],
                attention=e.attention,
                targets=np.arange(n_classes, dtype=np.int64),
                on_rows_done=progress.add,
                is_cancelled=is_cancelled,
            )
            for e in encoded
        ]
        model.worker.admit(progress.total)  # a full queue refuses the request at once
        model.worker.submit_all(base_jobs)
        logits = [job.future.result()[0] for job in base_jobs]
        items = [
            Item(
                index=i,
                encoded=encoded[i],
                units=units[i],
                targets=choices[i].pick(logits[i]),
            )
            for i in range(len(encoded))
        ]
        ctx = RunContext(model, *ctx_args, progress, is_cancelled)
        runs = start_runs(model, items, params.method, ctx)
        for i, scores in finished(runs):
            item = items[i]
            picked = Picked(item.targets, logits[i])
            yield self._explanation(model, item, scores, picked, runs[i].n_rows + 1, started)

    @staticmethod
    def _explanation(
        model: ServedModel,
        item: Item,
        scores: NDArray[np.float64],
        picked: Picked,
        forward_passes: int,
        started: float,
    ) -> Explanation:
        """Input `item`'s explanation: its scores for targets `picked.targets`."""
        return Explanation(
            input_index=item.index,
            units=item.units,
            target_indices=[int(t) for t in picked.targets],
            target_labels=[model.labels[int(t)] for t in picked.targets],
            scores=np.ascontiguousarray(scores, dtype=np.float32),
            logits=picked.logits.astype(np.float32),
            token_ids=item.encoded.ids,
            text=item.encoded.text,
            forward_passes=forward_passes,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
        )
