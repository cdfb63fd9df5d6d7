"""ExplainConcepts: which concepts drive a prediction.

Each input is one concept job of its model's worker: the model runs up to the classification
head's input (h(x), the row the head reads, the pass stopped there), and the request's
`ConceptAnalysis` takes it from there on the worker's thread, for every input of the batch at
once: C = t(h), ĥ = t⁻¹(C), the head g on h, on ĥ and on t⁻¹(0), and one backward pass per
target through g∘t⁻¹ alone, never through the transformer. Inputs of concurrent requests share
the batches of the pass like every other job kind.

Semantics are Interpreto's `concept_output_gradient` (C ⊙ ∂(g∘t⁻¹)/∂C, each target's divided by
the sum of its absolute values), plus what it drops: the residual's share, so that a user sees
how much of the prediction the concepts explain (`ConceptExplanation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve.concepts.limits import ConceptLimits
from explainserve.concepts.params import ConceptExplanation, ConceptParams, ConceptRef
from explainserve.concepts.registry import BoundConceptSet, ConceptRegistry
from explainserve.errors import InvalidArgument
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.jobs import ConceptJob, HeadFn, RequestTag
from explainserve.scheduling.scores import apply_mode
from explainserve.vocabulary import InferenceMode


@dataclass(frozen=True)
class AnalysisResult:
    """One input's numbers, as `ConceptAnalysis` computes them on the worker."""

    targets: NDArray[np.int64]
    concepts: NDArray[np.float32]
    contributions: NDArray[np.float32]
    outputs: NDArray[np.float32]
    residual: NDArray[np.float32]
    bias: NDArray[np.float32]
    concept_sum: NDArray[np.float32]
    logits: NDArray[np.float32]
    reconstruction_error: float


class ConceptAnalysis:
    """A request's analysis of its inputs' head-input rows (the worker calls it once per batch
    for the request's inputs in it; `scheduling.jobs.HeadInputAnalysis`). Each job's payload is
    its class targets, or None for the predicted class."""

    def __init__(
        self,
        bound: BoundConceptSet,
        mode: InferenceMode,
        concepts_x_gradients: bool,
        normalization: bool,
    ) -> None:
        self.bound = bound
        self.mode = mode
        self.concepts_x_gradients = concepts_x_gradients
        self.normalization = normalization

    def __call__(self, rows: torch.Tensor, head: HeadFn, payloads: list[Any]) -> list[Any]:
        """Every job's `AnalysisResult` (see `ConceptExplanation` for what each number is)."""
        codec = self.bound.codec
        n = rows.shape[0]
        h = rows.float().reshape(n, -1)
        with torch.no_grad():
            concepts = codec.encode(h)
            logits = head(rows).float()
            outputs = apply_mode(logits, self.mode)
            empty = codec.decode(torch.zeros_like(concepts[:1]))
            bias = apply_mode(head(empty.to(rows.dtype)).float(), self.mode)[0]
        targets = [
            np.asarray([int(torch.argmax(logits[i]))], dtype=np.int64) if p is None else p
            for i, p in enumerate(payloads)
        ]
        width = max(len(t) for t in targets)
        picked = torch.tensor(
            np.stack([np.resize(t, width) for t in targets]), device=rows.device
        )  # (n, T): a job with fewer targets repeats them (the extra columns are dropped)
        leaf = concepts.detach().clone().requires_grad_(True)
        decoded = codec.decode(leaf)
        reconstructed = apply_mode(head(decoded.to(rows.dtype)).float(), self.mode)
        grads = []
        for t in range(width):
            score = reconstructed.gather(1, picked[:, t : t + 1]).sum()
            (grad,) = torch.autograd.grad(score, leaf, retain_graph=t < width - 1)
            grads.append(grad)
        with torch.no_grad():
            gradient = torch.stack(grads, dim=1)  # (n, T, K)
            product = concepts.unsqueeze(1) * gradient
            raw = product if self.concepts_x_gradients else gradient
            if self.normalization:
                total = raw.abs().sum(dim=-1, keepdim=True)
                # An input whose contributions are all 0 keeps them (Interpreto divides by 0).
                raw = torch.where(
                    total > 0, raw / total.clamp_min(torch.finfo(raw.dtype).tiny), raw
                )
            residual = outputs.gather(1, picked) - reconstructed.detach().gather(1, picked)
            error = torch.linalg.vector_norm(
                h - decoded.detach(), dim=-1
            ) / torch.linalg.vector_norm(h, dim=-1).clamp_min(torch.finfo(h.dtype).tiny)
            host = {
                "concepts": concepts.cpu().numpy(),
                "raw": raw.cpu().numpy(),
                "sum": product.sum(dim=-1).cpu().numpy(),
                "outputs": outputs.gather(1, picked).cpu().numpy(),
                "residual": residual.cpu().numpy(),
                "bias": bias[picked].cpu().numpy(),
                "logits": logits.cpu().numpy(),
                "error": error.cpu().numpy(),
            }
        out = []
        for i, wanted in enumerate(targets):
            k = len(wanted)
            out.append(
                AnalysisResult(
                    targets=wanted,
                    concepts=host["concepts"][i : i + 1],
                    contributions=np.ascontiguousarray(host["raw"][i, :k, None, :]),
                    outputs=host["outputs"][i, :k],
                    residual=host["residual"][i, :k],
                    bias=host["bias"][i, :k],
                    concept_sum=host["sum"][i, :k],
                    logits=host["logits"][i],
                    reconstruction_error=float(host["error"][i]),
                )
            )
        return out


class ConceptExplainer:
    """Runs ExplainConcepts requests against the registry's models and concept sets."""

    def __init__(
        self,
        registry: Registry,
        concepts: ConceptRegistry | None = None,
        limits: ConceptLimits | None = None,
    ) -> None:
        self.registry = registry
        self.concepts = concepts or ConceptRegistry()
        self.limits = limits or ConceptLimits()

    def resolve(self, model: ServedModel, ref: ConceptRef) -> BoundConceptSet:
        """The request's concept set for `model` (`ConceptRegistry.resolve`)."""
        return self.concepts.resolve(model, ref, self.limits)

    def explain(
        self,
        params: ConceptParams,
        *,
        bound: BoundConceptSet | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[ConceptExplanation]:
        """Yields one concept explanation per input, in the order they finish (with the
        request's concept set `bound` when the caller has resolved it already). Validation
        happens before the first forward; errors are domain exceptions."""
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
        if bound is None:
            bound = self.resolve(model, params.concepts)
        encoded = []
        payloads: list[NDArray[np.int64] | None] = []
        for i, spec in enumerate(params.inputs):
            if spec.has_continuation:
                raise InvalidArgument(
                    f"input {i} has a continuation: concept explanations are for classifiers",
                    field=f"inputs[{i}].continuation",
                )
            encoded.append(model.encode(spec, i))
            targets = model.class_targets(spec.targets, i)
            if len(set(targets.tolist())) < len(targets):
                raise InvalidArgument(
                    f"input {i} names a target twice", field=f"inputs[{i}].targets"
                )
            payloads.append(targets if len(targets) else None)
        tag = RequestTag(is_cancelled, isolated=params.isolate, priority=params.priority)
        analysis = ConceptAnalysis(
            bound, params.mode, params.concepts_x_gradients, params.normalization
        )
        jobs = [
            ConceptJob(
                ids=e.ids, attention=e.attention, analysis=analysis, payload=p, is_cancelled=tag
            )
            for e, p in zip(encoded, payloads, strict=True)
        ]
        model.worker.admit(len(jobs))  # a full queue refuses the request at once
        model.worker.submit_all(jobs)
        waiting = {job.future: i for i, job in enumerate(jobs)}
        while waiting:
            done, _ = wait(list(waiting), return_when=FIRST_COMPLETED)
            for future in done:
                i = waiting.pop(future)
                result: AnalysisResult = future.result()
                yield ConceptExplanation(
                    input_index=i,
                    target_indices=[int(t) for t in result.targets],
                    target_labels=[model.labels[int(t)] for t in result.targets],
                    concepts=result.concepts,
                    contributions=result.contributions,
                    outputs=result.outputs,
                    residual=result.residual,
                    bias=result.bias,
                    concept_sum=result.concept_sum,
                    logits=result.logits,
                    reconstruction_error=result.reconstruction_error,
                    token_ids=encoded[i].ids,
                    text=encoded[i].text,
                    forward_passes=1,
                    elapsed_ms=(time.perf_counter() - started) * 1000.0,
                )
