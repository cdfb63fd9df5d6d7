"""ExplainConcepts: which concepts drive a prediction.

Each input is one concept job of its model's worker: the model runs up to the classification
head's input (h(x), the row the head reads, the pass stopped there), and the request's
`ConceptAnalysis` takes it from there on the worker's thread, for every input of the batch at
once: C = t(h), ĥ = t⁻¹(C), the head g on h, on ĥ and on t⁻¹(0), and one backward pass per
target through g∘t⁻¹ alone, never through the transformer. Inputs of concurrent requests share
the batches of the pass like every other job kind.

At a split point with a token dimension (a concept set fitted on a layer's tokens, words or
sentences), each input is one concept layer job: `ConceptLayerAnalysis` reads the layer's rows
(tokens, or the request's units aggregated), encodes and decodes them, puts each reconstruction
back in place of its tokens' activations and runs the rest of the model on that, then
differentiates through it to C, one backward pass per target; the batch's passes are the
request's own (`ConceptLayerJob`).

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
from explainserve.scheduling.jobs import (
    ConceptJob,
    ConceptLayerJob,
    HeadFn,
    LayerBatch,
    RequestTag,
)
from explainserve.scheduling.scores import apply_mode
from explainserve.vocabulary import (
    Aggregation,
    Encoded,
    InferenceMode,
    Units,
    check_input_count,
    make_units,
)


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


class _Analysis:
    """What a request's analysis of its rows knows: its set, its inference mode and options."""

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


class ConceptAnalysis(_Analysis):
    """A request's analysis of its inputs' head-input rows (the worker calls it once per batch
    for the request's inputs in it; `scheduling.jobs.HeadInputAnalysis`). Each job's payload is
    its class targets, or None for the predicted class."""

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
        targets = [_targets(p, logits[i]) for i, p in enumerate(payloads)]
        leaf = concepts.detach().clone().requires_grad_(True)
        decoded = codec.decode(leaf)
        reconstructed = apply_mode(head(decoded.to(rows.dtype)).float(), self.mode)
        grads = _gradients(reconstructed, targets, leaf)
        with torch.no_grad():
            gradient = grads.transpose(0, 1)  # (n, T, K)
            return [
                _result(
                    wanted,
                    concepts[i : i + 1],
                    gradient[i, : len(wanted)].unsqueeze(1),
                    outputs[i],
                    reconstructed.detach()[i],
                    bias,
                    logits[i],
                    h[i : i + 1],
                    decoded.detach()[i : i + 1],
                    self.concepts_x_gradients,
                    self.normalization,
                )
                for i, wanted in enumerate(targets)
            ]


def _result(
    targets: NDArray[np.int64],
    concepts: torch.Tensor,
    gradient: torch.Tensor,
    outputs: torch.Tensor,
    reconstructed: torch.Tensor,
    bias: torch.Tensor,
    logits: torch.Tensor,
    rows: torch.Tensor,
    decoded: torch.Tensor,
    concepts_x_gradients: bool,
    normalization: bool,
) -> AnalysisResult:
    """One input's result from its `(rows, K)` concepts and `(T, rows, K)` gradients, its
    outputs on the activations, on their reconstruction and with every concept off (each
    `(C,)` under the mode), its logits, and its rows and their reconstructions `(rows, d)`."""
    index = torch.from_numpy(targets).to(concepts.device)
    product = concepts.unsqueeze(0) * gradient
    raw = product if concepts_x_gradients else gradient
    if normalization:
        # Interpreto's normalization: over the input's rows and concepts, per target. An input
        # whose contributions are all 0 keeps them (Interpreto would divide by 0).
        total = raw.abs().sum(dim=(1, 2), keepdim=True)
        raw = torch.where(total > 0, raw / total.clamp_min(torch.finfo(raw.dtype).tiny), raw)
    error = torch.linalg.vector_norm(rows - decoded) / torch.linalg.vector_norm(rows).clamp_min(
        torch.finfo(rows.dtype).tiny
    )
    return AnalysisResult(
        targets=targets,
        concepts=concepts.cpu().numpy(),
        contributions=np.ascontiguousarray(raw.cpu().numpy()),
        outputs=outputs[index].cpu().numpy(),
        residual=(outputs[index] - reconstructed[index]).cpu().numpy(),
        bias=bias[index].cpu().numpy(),
        concept_sum=product.sum(dim=(1, 2)).cpu().numpy(),
        logits=logits.cpu().numpy(),
        reconstruction_error=float(error),
    )


def _targets(payload: NDArray[np.int64] | None, logits: torch.Tensor) -> NDArray[np.int64]:
    """A job's class targets: its own, or the predicted class."""
    if payload is None:
        return np.asarray([int(torch.argmax(logits))], dtype=np.int64)
    return payload


def _gradients(
    outputs: torch.Tensor, targets: list[NDArray[np.int64]], leaf: torch.Tensor
) -> torch.Tensor:
    """`(T, N, K)`: for target column t, the gradient of each input's t-th target output
    `outputs[i]` (inputs with fewer targets repeat theirs) with respect to the concept rows
    `leaf` `(N, K)` (an input's output depends on its own rows only). One backward pass per
    column."""
    width = max(len(t) for t in targets)
    picked = torch.tensor(np.stack([np.resize(t, width) for t in targets]), device=leaf.device)
    grads = []
    for t in range(width):
        score = outputs.gather(1, picked[:, t : t + 1]).sum()
        (grad,) = torch.autograd.grad(score, leaf, retain_graph=t < width - 1)
        grads.append(grad)
    return torch.stack(grads)


@dataclass(frozen=True)
class LayerPayload:
    """A concept layer job's own part: its class targets (None: the predicted class) and its
    rows, as a token -> row map (-1: not in a row) over its `n` tokens."""

    targets: NDArray[np.int64] | None
    token_to_row: NDArray[np.int64]
    n_rows: int


class ConceptLayerAnalysis(_Analysis):
    """A request's analysis at a split point with a token dimension (`scheduling.jobs.
    LayerAnalysis`): rows read from the layer (a unit's tokens aggregated), encoded, decoded and
    put back in place of their tokens (each token gets its row's reconstruction; with SUM, an
    equal share), the rest of the model run on that, and one backward pass per target column to
    C. Three passes a batch: the activations (and logits), the reconstruction, every concept
    off."""

    def __init__(
        self,
        bound: BoundConceptSet,
        mode: InferenceMode,
        concepts_x_gradients: bool,
        normalization: bool,
        aggregation: Aggregation,
    ) -> None:
        super().__init__(bound, mode, concepts_x_gradients, normalization)
        self.aggregation = aggregation

    def _aggregate(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(m, d)` token rows -> `(d,)`."""
        how = self.aggregation
        if how == "mean":
            return tokens.mean(dim=0)
        if how == "sum":
            return tokens.sum(dim=0)
        if how == "max":
            return tokens.max(dim=0).values
        if how == "min":
            return tokens.min(dim=0).values
        picked = tokens.abs().argmax(dim=0, keepdim=True)  # signed_max
        return tokens.gather(0, picked)[0]

    def __call__(self, batch: LayerBatch, payloads: list[Any]) -> list[Any]:
        """Every job's `AnalysisResult`."""
        codec = self.bound.codec
        activations, logits = batch.capture()
        layer = activations.float()
        places: list[tuple[int, torch.Tensor]] = []  # per row: (batch row, its positions)
        for i, payload in enumerate(payloads):
            start = batch.columns[i].start or 0
            t2r = torch.from_numpy(payload.token_to_row)
            for r in range(payload.n_rows):
                places.append((i, start + torch.nonzero(t2r == r)[:, 0]))
        device = layer.device
        places = [(i, pos.to(device)) for i, pos in places]
        rows = torch.stack([self._aggregate(layer[i, pos]) for i, pos in places])
        with torch.no_grad():
            concepts = codec.encode(rows)

        def edit_with(values: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            def edit(output: torch.Tensor) -> torch.Tensor:
                out = output.clone()
                for r, (i, pos) in enumerate(places):
                    value = values[r] / len(pos) if self.aggregation == "sum" else values[r]
                    out[i, pos] = value.to(out.dtype).expand(len(pos), -1)
                return out

            return edit

        leaf = concepts.detach().clone().requires_grad_(True)
        decoded = codec.decode(leaf)
        reconstructed = apply_mode(batch.logits_with(edit_with(decoded)).float(), self.mode)
        with torch.no_grad():
            off = batch.logits_with(edit_with(codec.decode(torch.zeros_like(concepts))))
            bias_all = apply_mode(off.float(), self.mode)
            outputs = apply_mode(logits.float(), self.mode)
        targets = [_targets(p.targets, logits[i]) for i, p in enumerate(payloads)]
        rows_of = [p.n_rows for p in payloads]
        gradient = _gradients(reconstructed, targets, leaf)
        out = []
        first = 0
        with torch.no_grad():
            for i, wanted in enumerate(targets):
                rows_i = slice(first, first + rows_of[i])
                first += rows_of[i]
                out.append(
                    _result(
                        wanted,
                        concepts[rows_i],
                        gradient[: len(wanted), rows_i],
                        outputs[i],
                        reconstructed.detach()[i],
                        bias_all[i],
                        logits[i].float(),
                        rows[rows_i],
                        decoded.detach()[rows_i],
                        self.concepts_x_gradients,
                        self.normalization,
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

    @staticmethod
    def _rows(
        model: ServedModel, encoded: Encoded, granularity: str, index: int
    ) -> tuple[NDArray[np.int64], int, Units | None]:
        """Input `index`'s rows at a split point with a token dimension: its token -> row map,
        how many rows, and what they are (None for CLS_TOKEN: the one token the head reads)."""
        n = encoded.n_tokens
        if granularity == "cls_token":
            token_to_row = np.full(n, -1, dtype=np.int64)
            token_to_row[n - 1 if model.runner.padding_side == "left" else 0] = 0
            return token_to_row, 1, None
        units = make_units(encoded, granularity, model.tokenizer)  # type: ignore[arg-type]
        if units.n_units == 0:
            raise InvalidArgument(
                f"input {index} has no {granularity} rows", field=f"inputs[{index}]"
            )
        return units.token_to_unit, units.n_units, units

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
        check_input_count(params.inputs, self.limits.max_inputs)
        if bound is None:
            bound = self.resolve(model, params.concepts)
        granularity = params.granularity
        if bound.at_head and granularity not in (None, "cls_token"):
            raise InvalidArgument(
                f"concept set '{bound.name}' reads the head's input, one row per input: only "
                f"granularity cls_token applies to it, not {granularity}",
                field="granularity",
            )
        rows_at = granularity or bound.concept_set.granularity
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
        units: list[Units | None] = [None] * len(encoded)
        jobs: list[ConceptJob | ConceptLayerJob]
        if bound.at_head:
            analysis = ConceptAnalysis(
                bound, params.mode, params.concepts_x_gradients, params.normalization
            )
            jobs = [
                ConceptJob(
                    ids=e.ids, attention=e.attention, analysis=analysis, payload=p, is_cancelled=tag
                )
                for e, p in zip(encoded, payloads, strict=True)
            ]
        else:
            layer = ConceptLayerAnalysis(
                bound,
                params.mode,
                params.concepts_x_gradients,
                params.normalization,
                params.aggregation,
            )
            jobs = []
            for i, (e, p) in enumerate(zip(encoded, payloads, strict=True)):
                token_to_row, n_rows, units[i] = self._rows(model, e, rows_at, i)
                jobs.append(
                    ConceptLayerJob(
                        ids=e.ids,
                        attention=e.attention,
                        split_point=bound.concept_set.split_point,
                        analysis=layer,
                        payload=LayerPayload(p, token_to_row, n_rows),
                        is_cancelled=tag,
                    )
                )
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
                    forward_passes=1 if bound.at_head else 3,
                    elapsed_ms=(time.perf_counter() - started) * 1000.0,
                    units=units[i],
                )
