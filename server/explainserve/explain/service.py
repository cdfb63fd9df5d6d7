"""Explain: validates a request, prepares inputs, runs the method through the model's worker and
yields each input's explanation as soon as it is finished."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explainserve.errors import InvalidArgument
from explainserve.explain import causal, gradient, perturbation
from explainserve.explain.common import Item, Pending, Progress
from explainserve.explain.params import (
    ExplainParams,
    Explanation,
    Generation,
    Gradient,
    InputSpec,
    KernelShap,
    Lime,
    Sobol,
)
from explainserve.explain.units import Encoded, encode_ids, encode_text, make_units
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.jobs import ForwardJob, GenerateJob, InferenceMode, RequestTag

# Noise beyond this many standard deviations of the embeddings only measures the noise (and
# overflows float16/bfloat16 models).
MAX_NOISE_STD = 100.0


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every limit is enforced with a clear message."""

    max_inputs: int = 256
    #: Sequences one input may send through the model (perturbations, steps x targets, ...).
    max_rows_per_input: int = 50_000
    max_targets: int = 64
    #: Causal LMs: generation and continuation lengths.
    causal: causal.CausalLimits = field(default_factory=causal.CausalLimits)


def _finite_positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidArgument(f"{name} must be a finite number {bound}, got {value}", field=name)


def validate_method(params: ExplainParams) -> None:
    """Checks the method's parameters (ranges, NaN)."""
    m = params.method
    if isinstance(m, Lime):
        if m.n_perturbations < 2:
            raise InvalidArgument(
                f"lime.n_perturbations must be at least 2, got {m.n_perturbations}",
                field="lime.n_perturbations",
            )
        p = m.perturb_probability
        if not (math.isfinite(p) and 0.0 < p < 1.0):
            raise InvalidArgument(
                f"lime.perturb_probability must be in (0, 1), got {p}",
                field="lime.perturb_probability",
            )
        if m.kernel_width is not None:
            _finite_positive(m.kernel_width, "lime.kernel_width")
        _finite_positive(m.alpha, "lime.alpha", allow_zero=True)
    elif isinstance(m, KernelShap):
        if m.n_perturbations < 2:
            raise InvalidArgument(
                f"kernel_shap.n_perturbations must be at least 2, got {m.n_perturbations}",
                field="kernel_shap.n_perturbations",
            )
    elif isinstance(m, Sobol):
        if m.n_points < 1:
            raise InvalidArgument(
                f"sobol.n_points must be at least 1, got {m.n_points}", field="sobol.n_points"
            )
    elif isinstance(m, Gradient):
        if m.kind == "integrated_gradients" and m.n_steps < 1:
            raise InvalidArgument(
                f"integrated_gradients.n_steps must be at least 1, got {m.n_steps}",
                field=f"{m.kind}.n_steps",
            )
        if m.kind in ("smooth_grad", "square_grad", "var_grad", "gradient_shap"):
            if m.n_samples < 1:
                raise InvalidArgument(
                    f"{m.kind}.n_samples must be at least 1, got {m.n_samples}",
                    field=f"{m.kind}.n_samples",
                )
            _finite_positive(m.noise_std, f"{m.kind}.noise_std", allow_zero=True)
            if m.noise_std > MAX_NOISE_STD:
                raise InvalidArgument(
                    f"{m.kind}.noise_std is relative to the embeddings' standard deviation and "
                    f"must be at most {MAX_NOISE_STD:g}, got {m.noise_std:g}",
                    field=f"{m.kind}.noise_std",
                )


def _encode(model: ServedModel, spec: InputSpec, index: int) -> Encoded:
    field = f"inputs[{index}]"
    if spec.text is not None:
        if not spec.text.strip():
            raise InvalidArgument(f"input {index} is an empty string", field=f"{field}.text")
        return encode_text(model.tokenizer, spec.text, model.max_length, field)
    if spec.ids is not None:
        return encode_ids(model.tokenizer, spec.ids, spec.attention, model.max_length, field)
    raise InvalidArgument(f"input {index} has neither text nor token_ids", field=field)


def _resolve_targets(
    model: ServedModel, spec: InputSpec, index: int, logits: NDArray[np.float64], limits: Limits
) -> NDArray[np.int64]:
    if not spec.targets:
        return np.asarray([int(np.argmax(logits))], dtype=np.int64)
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
    return np.asarray(out, dtype=np.int64)


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
        validate_method(params)
        if model.is_causal_lm:
            yield from self._explain_causal(model, params, started, on_progress, is_cancelled)
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
        encoded = [_encode(model, spec, i) for i, spec in enumerate(params.inputs)]
        units = [make_units(e, params.granularity, model.tokenizer) for e in encoded]
        for i, u in enumerate(units):
            if u.n_units == 0:
                raise InvalidArgument(
                    f"input {i} has no {params.granularity} units to explain",
                    field=f"inputs[{i}]",
                )
        method = params.method
        rows = []
        for i, u in enumerate(units):
            n_targets = max(1, len(params.inputs[i].targets))
            if isinstance(method, Gradient):
                n = gradient.n_rows(method, n_targets)
            else:
                n = perturbation.n_rows(method, u.n_units)
            if n > self.limits.max_rows_per_input:
                raise InvalidArgument(
                    f"input {i} would need {n} forward passes, the limit is "
                    f"{self.limits.max_rows_per_input}: lower the number of perturbations, "
                    "steps or samples, or use a coarser granularity",
                    field=f"inputs[{i}]",
                )
            rows.append(n)
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
                targets=_resolve_targets(model, params.inputs[i], i, logits[i], self.limits),
            )
            for i in range(len(encoded))
        ]
        runs = _start_runs(model, items, params, progress, is_cancelled)
        for i, scores in _finished(runs):
            item = items[i]
            yield Explanation(
                input_index=i,
                units=item.units,
                target_indices=[int(t) for t in item.targets],
                target_labels=[model.labels[int(t)] for t in item.targets],
                scores=np.ascontiguousarray(scores, dtype=np.float32),
                logits=logits[i].astype(np.float32),
                token_ids=item.encoded.ids,
                text=item.encoded.text,
                forward_passes=runs[i].n_rows + 1,
                elapsed_ms=(time.perf_counter() - started) * 1000.0,
            )

    def _explain_causal(
        self,
        model: ServedModel,
        params: ExplainParams,
        started: float,
        on_progress: Callable[[int, int], None] | None,
        is_cancelled: Callable[[], bool] | None,
    ) -> Iterator[Explanation]:
        """Explain for a causal LM: each input is a prompt, explained for its continuation
        (given, or generated first on the model's worker); see `explain.causal`."""
        limits = self.limits.causal
        tokenizer = model.tokenizer
        for i, spec in enumerate(params.inputs):
            if spec.targets:
                raise InvalidArgument(
                    f"input {i} has class targets, but model '{model.name}' is a causal LM: give "
                    "a continuation (text or token ids) or none to explain the generated one",
                    field=f"inputs[{i}].targets",
                )
        to_generate = [i for i, spec in enumerate(params.inputs) if not spec.has_continuation]
        options = None
        if to_generate or params.generation is not None:
            options = causal.generation_options(
                params.generation or Generation(), params.seed, limits
            )
        prompts = []
        for i, spec in enumerate(params.inputs):
            prompt = _encode(model, spec, i)
            if spec.text is not None:
                prompt = causal.strip_end_of_sequence(tokenizer, prompt)
            prompts.append(prompt)
        continuations: dict[int, Encoded] = {}
        for i, spec in enumerate(params.inputs):
            if spec.has_continuation:
                continuations[i] = causal.encode_continuation(tokenizer, spec, i, limits)
                n = prompts[i].n_tokens + continuations[i].n_tokens
                if n > model.max_length:
                    raise InvalidArgument(
                        f"input {i}'s prompt and continuation have {n} tokens, more than the "
                        f"model's maximum of {model.max_length}",
                        field=f"inputs[{i}].continuation",
                    )
            else:
                assert options is not None
                n = prompts[i].n_tokens + options.max_new_tokens
                if n > model.max_length:
                    raise InvalidArgument(
                        f"input {i}'s prompt ({prompts[i].n_tokens} tokens) and "
                        f"generation.max_new_tokens ({options.max_new_tokens}) exceed the "
                        f"model's maximum of {model.max_length} tokens",
                        field="generation.max_new_tokens",
                    )
        planned = len(to_generate) * (options.max_new_tokens if options else 0)
        progress = Progress(planned + len(prompts), on_progress)
        if to_generate:
            assert options is not None
            stop_ids = _stop_ids(model)
            jobs = {
                i: GenerateJob(
                    prompt=prompts[i].ids,
                    options=options,
                    stop_ids=stop_ids,
                    on_rows_done=progress.add,
                    is_cancelled=is_cancelled,
                )
                for i in to_generate
            }
            model.worker.submit_all(jobs.values())
            for i, job in jobs.items():
                tokens = job.future.result()
                if not tokens:
                    raise InvalidArgument(
                        f"the model ended input {i}'s continuation at once (end of sequence): "
                        "there is nothing to explain; give a continuation",
                        field=f"inputs[{i}]",
                    )
                continuations[i] = causal.generated_continuation(tokenizer, tokens)
        items = []
        layouts = []
        rows = []
        method = params.method
        for i, prompt in enumerate(prompts):
            cont = continuations[i]
            full = causal.join(prompt, cont)
            layout = causal.causal_units(
                prompt, cont, full, params.granularity, tokenizer, params.target_context
            )
            if layout.inputs.n_units == 0 or layout.targets.n_units == 0:
                what = "prompt" if layout.inputs.n_units == 0 else "continuation"
                raise InvalidArgument(
                    f"input {i}'s {what} has no {params.granularity} units to explain",
                    field=f"inputs[{i}]",
                )
            n_targets = cont.n_tokens
            if isinstance(method, Gradient):
                n = gradient.n_rows(method, n_targets)
            else:
                n = perturbation.n_rows(method, layout.inputs.n_units)
            if n > self.limits.max_rows_per_input:
                raise InvalidArgument(
                    f"input {i} would need {n} forward passes, the limit is "
                    f"{self.limits.max_rows_per_input}: lower the number of perturbations, "
                    "steps or samples, shorten the continuation or use a coarser granularity",
                    field=f"inputs[{i}]",
                )
            rows.append(n)
            layouts.append(layout)
            p = prompt.n_tokens
            items.append(
                Item(
                    index=i,
                    encoded=full,
                    units=layout.inputs,
                    targets=cont.ids,
                    positions=np.arange(p - 1, p - 1 + cont.n_tokens, dtype=np.int64),
                )
            )
        progress.extend(sum(rows))
        base_jobs = [_teacher_forced(item, params.mode, progress, is_cancelled) for item in items]
        model.worker.submit_all(base_jobs)
        runs = _start_runs(model, items, params, progress, is_cancelled)
        for i, token_scores in _finished(runs):
            item = items[i]
            cont = continuations[i]
            yield Explanation(
                input_index=i,
                units=item.units,
                target_indices=[],
                target_labels=[],
                scores=causal.to_target_units(token_scores, layouts[i], params.aggregation),
                logits=np.zeros(0, dtype=np.float32),
                token_ids=item.encoded.ids,
                text=item.encoded.text,
                forward_passes=runs[i].n_rows + 1,
                elapsed_ms=(time.perf_counter() - started) * 1000.0,
                target_units=layouts[i].targets,
                valid=layouts[i].valid,
                continuation=cont.text,
                continuation_ids=cont.ids,
                generated=i in to_generate,
                prompt_tokens=prompts[i].n_tokens,
                continuation_scores=base_jobs[i].future.result()[0].astype(np.float32),
            )


def _stop_ids(model: ServedModel) -> frozenset[int]:
    """Token ids that end a generation: the tokenizer's and the generation config's EOS."""
    ids = set()
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    config = getattr(model.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(e) for e in eos)
    return frozenset(ids)


def _teacher_forced(
    item: Item,
    mode: InferenceMode,
    progress: Progress,
    is_cancelled: Callable[[], bool] | None,
) -> ForwardJob:
    """The unperturbed prompt + continuation: the score of every continuation token."""
    return ForwardJob(
        ids=item.encoded.ids[None, :],
        attention=item.encoded.attention,
        targets=item.targets,
        mode=mode,
        positions=item.positions,
        on_rows_done=progress.add,
        is_cancelled=is_cancelled,
    )


def _start_runs(
    model: ServedModel,
    items: list[Item],
    params: ExplainParams,
    progress: Progress,
    is_cancelled: Callable[[], bool] | None,
) -> dict[int, Pending]:
    """One run per item, their jobs submitted together (so inputs share batches). With reuse,
    an input identical to an earlier one of the request (same tokens, units and targets: its
    perturbations and so its scores are the same) shares that input's run."""
    method = params.method
    runs: dict[int, Pending] = {}
    firsts: dict[tuple[bytes, ...], int] = {}
    for item in items:
        if not isinstance(method, Gradient) and model.worker.options.reuse:
            key = _identity(item)
            if key in firsts:
                runs[item.index] = _Twin(runs[firsts[key]], progress)
                continue
            firsts[key] = item.index
        if isinstance(method, Gradient):
            runs[item.index] = gradient.GradientRun(
                model,
                item,
                method,
                params.mode,
                params.aggregation,
                params.seed,
                progress,
                is_cancelled,
            )
        else:
            runs[item.index] = perturbation.PerturbationRun(
                model, item, method, params.mode, params.seed, progress, is_cancelled
            )
    model.worker.submit_all(job for run in runs.values() for job in run.jobs)
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


def _finished(runs: dict[int, Pending]) -> Iterator[tuple[int, NDArray[np.float64]]]:
    """Each run's index and scores, in the order they finish."""
    waiting = {f: i for i, run in runs.items() for f in run.futures}
    finished: set[int] = set()
    while waiting:
        done, _ = wait(list(waiting), return_when=FIRST_COMPLETED)
        for f in done:
            waiting.pop(f)
        for i, run in runs.items():
            if i in finished or not all(f.done() for f in run.futures):
                continue
            finished.add(i)
            yield i, run.finish()
