"""Explain: validates a request, prepares inputs, runs the method through the model's worker and
yields each input's explanation as soon as it is finished. Sequence classifiers are explained
here; causal LMs in `causal_flow`, with the same steps (`common`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from explainserve.concepts.limits import ConceptLimits
from explainserve.concepts.registry import ConceptRegistry
from explainserve.errors import InvalidArgument
from explainserve.explain.causal_flow import explain_causal
from explainserve.explain.common import (
    count_rows,
    finished,
    plan_runs,
    start_runs,
    submit_runs,
)
from explainserve.explain.gradient import GradientMethod
from explainserve.explain.limits import Limits
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.run import Item, Picked, Progress, RunContext, TargetChoice
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.jobs import ForwardJob, OutputHead, RequestTag
from explainserve.vocabulary import InputSpec, check_input_count, make_units


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
    return TargetChoice(model.class_targets(spec.targets, index))


@dataclass(frozen=True)
class _Explained:
    """What a classifier's Explain request explains: its classes, or a concept set's concepts
    (a concept target: an output head whose first K outputs are the concepts, the class logits
    riding after them)."""

    #: Target index -> label.
    labels: list[str]
    #: The output head; None: the logits.
    head: OutputHead | None = None
    #: The head's outputs per row, and the concepts among them (0: no head).
    n_outputs: int = 0
    n_concepts: int = 0
    #: The concept target's targets (the same for every input).
    choice: TargetChoice | None = None


class Explainer:
    """Runs Explain requests against the registry's models."""

    def __init__(
        self,
        registry: Registry,
        limits: Limits | None = None,
        concepts: ConceptRegistry | None = None,
        concept_limits: ConceptLimits | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        #: The concept sets served with the models (concept targets, ExplainConcepts).
        self.concepts = concepts or ConceptRegistry()
        self.concept_limits = concept_limits or ConceptLimits()

    def _explained(self, model: ServedModel, params: ExplainParams) -> _Explained:
        """The request's classes, or its concept target's concepts, checked."""
        target = params.concept_target
        if target is None:
            return _Explained(labels=model.labels)
        field = "concept_target"
        if model.is_causal_lm:
            raise InvalidArgument(
                f"model '{model.name}' is a causal LM: concept targets explain a classifier's "
                "concepts at its head's input",
                field=field,
            )
        if params.mode != "logits":
            raise InvalidArgument(
                "a concept target is explained as it is: leave inference_mode unset (or LOGITS), "
                f"not {params.mode}",
                field="inference_mode",
            )
        for i, spec in enumerate(params.inputs):
            if spec.targets:
                raise InvalidArgument(
                    f"input {i} has class targets, but the request explains concepts "
                    "(concept_target.concepts_explained names them)",
                    field=f"inputs[{i}].targets",
                )
        bound = self.concepts.resolve(
            model, replace(target.concepts, field=f"{field}.concepts"), self.concept_limits
        )
        if not bound.at_head:
            raise InvalidArgument(
                f"concept set '{bound.name}' reads split point "
                f"'{bound.concept_set.split_point}', one row per token: a concept target is a "
                "concept of a set at the classification head's input (one activation per input)",
                field=f"{field}.concepts",
            )
        if isinstance(params.method, GradientMethod) and not bound.codec.differentiable:
            raise InvalidArgument(
                f"concept set '{bound.name}' encodes by non-negative least squares, which has "
                f"no gradient: use a perturbation method (occlusion, lime, kernel_shap, sobol)",
                field=f"{field}.concepts",
            )
        if len(target.explained) > self.limits.max_targets:
            raise InvalidArgument(
                f"the request explains {len(target.explained)} concepts, the limit is "
                f"{self.limits.max_targets}",
                field=f"{field}.concepts_explained",
            )
        explicit = None
        if target.explained:
            explicit = np.asarray(
                [
                    bound.concept_index(c, f"{field}.concepts_explained[{j}]")
                    for j, c in enumerate(target.explained)
                ],
                dtype=np.int64,
            )
        k = bound.n_concepts
        return _Explained(
            labels=bound.labels,
            head=bound.output_head,
            n_outputs=k + len(model.labels),
            n_concepts=k,
            choice=TargetChoice(explicit, among=k),
        )

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
        check_input_count(params.inputs, self.limits.max_inputs)
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
        encoded = [model.encode(spec, i) for i, spec in enumerate(params.inputs)]
        units = [make_units(e, params.granularity, model.tokenizer) for e in encoded]
        for i, u in enumerate(units):
            if u.n_units == 0:
                raise InvalidArgument(
                    f"input {i} has no {params.granularity} units to explain",
                    field=f"inputs[{i}]",
                )
        explained = self._explained(model, params)
        if explained.choice is not None:
            choices = [explained.choice] * len(params.inputs)
        else:
            choices = [
                _target_choice(model, spec, i, self.limits) for i, spec in enumerate(params.inputs)
            ]
        rows = [
            count_rows(
                params.method,
                i,
                u.n_units,
                choices[i].count,
                self.limits.max_rows_per_input,
                "or use a coarser granularity",
            )
            for i, u in enumerate(units)
        ]
        ctx_args = (params.mode, params.aggregation, params.seed)
        head = (explained.head, explained.n_outputs)
        if params.method.picks_targets_late:
            # One round: each input's job carries its unperturbed row, the targets are picked
            # from it once the rows are in.
            progress = Progress(0, on_progress)
            ctx = RunContext(model, *ctx_args, progress, is_cancelled, *head)
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
                yield self._explanation(
                    items[i], scores, picked, runs[i].n_rows, started, explained
                )
            return
        progress = Progress(len(encoded) + sum(rows), on_progress)
        n_outputs = explained.n_outputs if explained.head is not None else len(model.labels)
        base_jobs = [
            ForwardJob(
                ids=e.ids[None, :],
                attention=e.attention,
                targets=np.arange(n_outputs, dtype=np.int64),
                output=explained.head,
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
        ctx = RunContext(model, *ctx_args, progress, is_cancelled, *head)
        runs = start_runs(model, items, params.method, ctx)
        for i, scores in finished(runs):
            item = items[i]
            picked = Picked(item.targets, logits[i])
            yield self._explanation(item, scores, picked, runs[i].n_rows + 1, started, explained)

    @staticmethod
    def _explanation(
        item: Item,
        scores: NDArray[np.float64],
        picked: Picked,
        forward_passes: int,
        started: float,
        explained: _Explained,
    ) -> Explanation:
        """Input `item`'s explanation: its scores for targets `picked.targets` (with a concept
        target, `picked.logits` holds the concepts' activations, then the class logits)."""
        k = explained.n_concepts
        return Explanation(
            input_index=item.index,
            units=item.units,
            target_indices=[int(t) for t in picked.targets],
            target_labels=[explained.labels[int(t)] for t in picked.targets],
            scores=np.ascontiguousarray(scores, dtype=np.float32),
            logits=picked.logits[k:].astype(np.float32),
            token_ids=item.encoded.ids,
            text=item.encoded.text,
            forward_passes=forward_passes,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            concept_activations=picked.logits[:k].astype(np.float32) if k else None,
        )
