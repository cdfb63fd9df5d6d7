"""Explain: validates a request, prepares inputs, runs the method through the model's worker and
yields each input's explanation as soon as it is finished."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from explainserve.errors import InvalidArgument
from explainserve.explain import gradient, perturbation
from explainserve.explain.common import Item, Pending, Progress
from explainserve.explain.params import (
    ExplainParams,
    Explanation,
    Gradient,
    InputSpec,
    KernelShap,
    Lime,
    Sobol,
)
from explainserve.explain.units import Encoded, encode_ids, encode_text, make_units
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.worker import ForwardJob

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
        if not params.inputs:
            raise InvalidArgument("the request has no inputs", field="inputs")
        if len(params.inputs) > self.limits.max_inputs:
            raise InvalidArgument(
                f"the request has {len(params.inputs)} inputs, the limit is "
                f"{self.limits.max_inputs}",
                field="inputs",
            )
        validate_method(params)
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
        runs: dict[int, Pending] = {}
        for item in items:
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
                scores = run.finish()
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
                    forward_passes=run.n_rows + 1,
                    elapsed_ms=(time.perf_counter() - started) * 1000.0,
                )
