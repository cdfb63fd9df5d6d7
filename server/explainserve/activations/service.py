"""GetActivations and PredictFromActivations.

`Activator.get_activations` validates the whole request first (model, split points, dtype,
granularity, every input: texts are tokenized in batches into flat arrays, 4 bytes a token, or 17
with the offsets and words that units need), then returns a generator of chunks: consecutive
inputs, in request order, each cut to at most `chunk_inputs` inputs and `chunk_bytes` bytes of
tensors. The generator submits one activation job per input to the model's worker, a few chunks
ahead of the one it is waiting for, and no further: a consumer that does not pull (a gRPC client
that does not read) stops the work, so a request holds at most `prefetch_chunks + 1` chunks of
results, however many inputs it has. Units (text, spans) are made per chunk. Closing the
generator (or `is_cancelled()` turning true) drops the jobs not yet run.
"""

from __future__ import annotations

import difflib
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import NDArray

from explainserve import _native
from explainserve.activations.limits import ActivationLimits
from explainserve.activations.params import (
    ActivationChunk,
    ActivationParams,
    HeadParams,
    HeadPrediction,
    InputUnits,
)
from explainserve.activations.tensors import check_dtype, decode, encode
from explainserve.errors import InvalidArgument, NotFound, quote
from explainserve.models.capture import HEAD_ATTRIBUTES
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.jobs import ActivationJob, ActivationResult, HeadJob, Selection
from explainserve.vocabulary import (
    Encoded,
    Granularity,
    InputSpec,
    TokenTable,
    Units,
    check_ids,
    check_input_count,
    encode_ids,
    make_units,
    tokenize_table,
)


class InputTokens:
    """A request's inputs, validated, kept as compactly as they can be: the text inputs' tokens
    in one `TokenTable` (ids, and offsets and words when units are wanted); token-id inputs are
    the request's own lists."""

    def __init__(
        self, specs: list[InputSpec], text_slot: NDArray[np.int64], table: TokenTable
    ) -> None:
        self.specs = specs
        #: Input index -> index among the text inputs, or -1 for a token-id input.
        self._text_slot = text_slot
        self._table = table

    def __len__(self) -> int:
        return len(self.specs)

    def ids(self, i: int) -> NDArray[np.int64]:
        """Input `i`'s token ids, special tokens included."""
        slot = int(self._text_slot[i])
        if slot < 0:
            return np.asarray(self.specs[i].ids, dtype=np.int64)
        return self._table.token_ids(slot)

    def attention(self, i: int) -> NDArray[np.int64]:
        """Input `i`'s attention mask (all ones unless a token-id input gave one)."""
        mask = self.specs[i].attention if self._text_slot[i] < 0 else None
        if mask:
            return np.asarray(mask, dtype=np.int64)
        return np.ones(self.length(i), dtype=np.int64)

    def length(self, i: int) -> int:
        """Input `i`'s number of tokens."""
        slot = int(self._text_slot[i])
        if slot < 0:
            return len(self.specs[i].ids or [])
        return int(self._table.starts[slot + 1] - self._table.starts[slot])

    def encoded(self, model: ServedModel, i: int) -> Encoded:
        """Input `i` with offsets and words, for its units: from the table for a text (scanned
        with offsets), decoded for token ids (as `encode_ids` does)."""
        spec = self.specs[i]
        slot = int(self._text_slot[i])
        if slot >= 0:
            return self._table.encoded(slot, str(spec.text))
        return encode_ids(
            model.tokenizer, spec.ids or [], spec.attention, model.max_length, f"inputs[{i}]"
        )


def scan_inputs(
    model: ServedModel, specs: list[InputSpec], batch: int = 1024, *, with_offsets: bool = False
) -> InputTokens:
    """Validates every input as `Explain` does (empty text, missing content, bad ids, in input
    order; then over-long texts) and keeps their tokens; the texts are tokenized `batch` at a
    time (bounding the tokenizer's transient memory), with offsets and words if asked for."""
    tokenizer = model.tokenizer
    text_slot = np.full(len(specs), -1, dtype=np.int64)
    texts: list[int] = []
    for i, spec in enumerate(specs):
        field = f"inputs[{i}]"
        if spec.text is not None:
            if not spec.text.strip():
                raise InvalidArgument(f"input {i} is an empty string", field=f"{field}.text")
            text_slot[i] = len(texts)
            texts.append(i)
        elif spec.ids is not None:
            check_ids(tokenizer, spec.ids, spec.attention, model.max_length, field)
        else:
            raise InvalidArgument(f"input {i} has neither text nor token_ids", field=field)
    tables = [
        tokenize_table(
            tokenizer,
            [str(specs[i].text) for i in texts[lo : lo + batch]],
            model.max_length,
            [f"inputs[{i}]" for i in texts[lo : lo + batch]],
            with_offsets=with_offsets,
        )
        for lo in range(0, len(texts), batch)
    ]
    return InputTokens(specs, text_slot, TokenTable.concatenate(tables))


@dataclass(frozen=True)
class SplitPoint:
    """A resolved split point: its name, whether its capture has a token dimension, and the
    shape of one row (the capture's shape without batch and token dimensions)."""

    name: str
    token_dim: bool
    features: tuple[int, ...]

    @property
    def row_size(self) -> int:
        """Elements of one row."""
        return int(np.prod(self.features, dtype=np.int64))


def split_point_of(name: str, shape: list[int]) -> SplitPoint:
    """A probed split point (GetModel's shape, -1 for batch and token dimensions) resolved."""
    token_dim = len(shape) > 2 and shape[1] == -1
    features = tuple(shape[2:] if token_dim else shape[1:])
    return SplitPoint(name=name, token_dim=token_dim, features=features)


def _unknown_split_point(model: ServedModel, name: str, listed: int) -> NotFound:
    names = [n for n, _ in model.split_points]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    shown = ", ".join(names[:listed])
    more = f", ... and {len(names) - listed} more (GetModel lists them all)"
    return NotFound(
        f"model '{model.name}' has no split point '{quote(name)}'{hint}; split points are: {shown}"
        f"{more if len(names) > listed else ''}"
    )


def resolve_split_points(
    model: ServedModel, names: list[str], listed: int = 20
) -> list[SplitPoint]:
    """The requested split points, or the head's input when none is named; NotFound names the
    valid ones (the first `listed`, and how many more)."""
    shapes = dict(model.split_points)
    if not names:
        if model.head_input is None or model.head_input not in shapes:
            raise InvalidArgument(
                f"model '{model.name}' has no classification head (no module "
                f"{', '.join(HEAD_ATTRIBUTES)}): name the split points to capture",
                field="split_points",
            )
        return [split_point_of(model.head_input, shapes[model.head_input])]
    out = []
    seen: set[str] = set()
    for j, name in enumerate(names):
        if name in seen:
            raise InvalidArgument(
                f"split point '{quote(name)}' is asked for twice", field=f"split_points[{j}]"
            )
        seen.add(name)
        if name not in shapes:
            raise _unknown_split_point(model, name, listed)
        out.append(split_point_of(name, shapes[name]))
    return out


class Activator:
    """Runs GetActivations and PredictFromActivations requests against the registry's models."""

    def __init__(self, registry: Registry, limits: ActivationLimits | None = None) -> None:
        self.registry = registry
        self.limits = limits or ActivationLimits()

    # -- GetActivations ---------------------------------------------------------------------

    def get_activations(
        self, params: ActivationParams, *, is_cancelled: Callable[[], bool] | None = None
    ) -> Generator[ActivationChunk, None, None]:
        """Validates the request now (domain errors raise here), then returns the chunks'
        generator: every input exactly once, in request order."""
        limits = self.limits
        model = self.registry.get(params.model)
        check_input_count(params.inputs, limits.max_inputs)
        dtype = check_dtype(params.dtype, "dtype")
        points = resolve_split_points(model, params.split_points, limits.listed_split_points)
        if params.granularity != "cls_token":
            for j, point in enumerate(points):
                if not point.token_dim:
                    raise InvalidArgument(
                        f"split point '{point.name}' has no token dimension (rows of shape "
                        f"{list(point.features)}, one per input): only granularity cls_token "
                        f"applies to it, not {params.granularity}",
                        field="granularity" if not params.split_points else f"split_points[{j}]",
                    )
        tokens = scan_inputs(
            model,
            params.inputs,
            limits.tokenize_batch,
            with_offsets=self._needs_units(params),
        )
        plan = self._plan(tokens, points, params.granularity)
        return self._stream(model, params, dtype, points, tokens, plan, is_cancelled)

    def _plan(
        self, tokens: InputTokens, points: list[SplitPoint], granularity: str
    ) -> list[tuple[int, int]]:
        """Chunks as `[start, stop)` input ranges under the chunk limits (bytes estimated from
        an upper bound of the rows: one, or one per token)."""
        row_bytes = 4 * sum(p.row_size for p in points)
        chunks: list[tuple[int, int]] = []
        start, size = 0, 0
        for i in range(len(tokens)):
            rows = 1 if granularity == "cls_token" else tokens.length(i)
            n_bytes = rows * row_bytes
            if n_bytes > self.limits.max_input_bytes:
                raise InvalidArgument(
                    f"input {i}'s activations would take {n_bytes} bytes, more than the limit "
                    f"of {self.limits.max_input_bytes}: ask for fewer split points or a coarser "
                    "granularity",
                    field=f"inputs[{i}]",
                )
            count = i - start
            if count and (
                count >= self.limits.chunk_inputs or size + n_bytes > self.limits.chunk_bytes
            ):
                chunks.append((start, i))
                start, size = i, 0
            size += n_bytes
        chunks.append((start, len(tokens)))
        return chunks

    def _stream(
        self,
        model: ServedModel,
        params: ActivationParams,
        dtype: str,
        points: list[SplitPoint],
        tokens: InputTokens,
        plan: list[tuple[int, int]],
        is_cancelled: Callable[[], bool] | None,
    ) -> Generator[ActivationChunk, None, None]:
        stopped = threading.Event()

        def cancelled() -> bool:
            return stopped.is_set() or (is_cancelled is not None and is_cancelled())

        names = tuple(p.name for p in points)
        token_dim = tuple(p.token_dim for p in points)
        select: Selection = "head" if params.granularity == "cls_token" else "all"
        window: deque[list[ActivationJob]] = deque()
        submitted = 0
        try:
            for k, (start, _) in enumerate(plan):
                # The chunks that enter the window go to the worker together, so its next
                # batches can already group all of their inputs by length.
                entering: list[ActivationJob] = []
                while submitted < len(plan) and submitted <= k + self.limits.prefetch_chunks:
                    lo, hi = plan[submitted]
                    jobs = [
                        ActivationJob(
                            ids=tokens.ids(i),
                            attention=tokens.attention(i),
                            split_points=names,
                            token_dim=token_dim,
                            select=select,
                            logits=params.predictions,
                            is_cancelled=cancelled,
                        )
                        for i in range(lo, hi)
                    ]
                    entering.extend(jobs)
                    window.append(jobs)
                    submitted += 1
                model.worker.submit_all(entering)
                jobs = window.popleft()
                results = [job.future.result() for job in jobs]
                yield self._chunk(model, params, dtype, points, tokens, start, results)
        finally:
            stopped.set()

    def _chunk(
        self,
        model: ServedModel,
        params: ActivationParams,
        dtype: str,
        points: list[SplitPoint],
        tokens: InputTokens,
        start: int,
        results: list[ActivationResult],
    ) -> ActivationChunk:
        """Granularity applied to the chunk's rows, tensors encoded. Token, word and sentence
        rows come from one gather or one native aggregation per split point for the whole chunk
        (unit ids offset per input), not one call per input."""
        granularity = params.granularity
        units: list[Units] = []
        units_out = []
        if self._needs_units(params):
            for i in range(len(results)):
                e = tokens.encoded(model, start + i)
                units.append(make_units(e, cast(Granularity, granularity), model.tokenizer))
                if params.units:
                    units_out.append(
                        InputUnits(input_index=start + i, units=units[-1], text=e.text)
                    )
        for i, result in enumerate(results):
            for point, values in zip(points, result.values, strict=True):
                if tuple(values.shape[1:]) != point.features:
                    raise InvalidArgument(
                        f"split point '{point.name}' gave rows of shape {list(values.shape[1:])} "
                        f"for input {start + i}, not {list(point.features)}: its output shape "
                        "depends on the input, it cannot be returned as rows"
                    )
        if granularity in ("cls_token", "all_tokens"):
            counts = [int(r.values[0].shape[0]) for r in results]
        else:
            counts = [u.n_units for u in units]
        offsets = np.zeros(len(results) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        token_to_unit = self._chunk_units(units, granularity)
        activations = []
        for k, point in enumerate(points):
            rows = np.concatenate([r.values[k] for r in results])
            if granularity in ("token", "word", "sentence"):
                rows = self._unit_rows(rows, point, token_to_unit, int(offsets[-1]), params)
            activations.append((point.name, encode(rows, dtype)))
        logits = None
        predicted: list[int] = []
        if params.predictions:
            stacked = np.stack([r.logits for r in results if r.logits is not None])
            logits = encode(stacked, "float32")
            predicted = [int(c) for c in stacked.argmax(axis=1)]
        return ActivationChunk(
            input_start=start,
            input_count=len(results),
            row_offsets=offsets,
            activations=activations,
            units=units_out,
            logits=logits,
            predicted=predicted,
        )

    @staticmethod
    def _needs_units(params: ActivationParams) -> bool:
        """Whether the chunks need each input's units: to make token, word and sentence rows,
        or to describe all-token rows when asked to."""
        if params.granularity == "cls_token":
            return False
        return params.units or params.granularity != "all_tokens"

    @staticmethod
    def _chunk_units(units: list[Units], granularity: str) -> NDArray[np.int64]:
        """Token -> unit map of the chunk's tokens laid end to end (-1 = no unit): each input's
        unit ids offset by the units of the inputs before it."""
        if granularity not in ("token", "word", "sentence"):
            return np.zeros(0, dtype=np.int64)
        maps = []
        before = 0
        for u in units:
            maps.append(np.where(u.token_to_unit >= 0, u.token_to_unit + before, -1))
            before += u.n_units
        return np.concatenate(maps) if maps else np.zeros(0, dtype=np.int64)

    @staticmethod
    def _unit_rows(
        rows: NDArray[np.float32],
        point: SplitPoint,
        token_to_unit: NDArray[np.int64],
        n_units: int,
        params: ActivationParams,
    ) -> NDArray[np.float32]:
        """The chunk's unit rows from its token rows `(tokens, *features)`: a gather for TOKEN
        units (one token each), the Rust core's aggregation for words and sentences."""
        if n_units == 0:
            return np.zeros((0, *point.features), dtype=np.float32)
        if params.granularity == "token":
            order = np.empty(n_units, dtype=np.int64)
            has_unit = token_to_unit >= 0
            order[token_to_unit[has_unit]] = np.flatnonzero(has_unit)
            return rows[order]
        flat = rows.reshape(rows.shape[0], -1)
        unit_rows = _native.aggregate(
            np.ascontiguousarray(flat.T), token_to_unit, n_units, params.aggregation
        )
        return np.ascontiguousarray(unit_rows.T).reshape(n_units, *point.features)

    # -- PredictFromActivations -------------------------------------------------------------

    def predict_from_activations(
        self, params: HeadParams, *, is_cancelled: Callable[[], bool] | None = None
    ) -> HeadPrediction:
        """The classification head alone on rows of activations at its input, through the
        model's worker."""
        model = self.registry.get(params.model)
        head_input = model.head_input
        shapes = dict(model.split_points)
        if head_input is None or head_input not in shapes:
            raise InvalidArgument(
                f"model '{model.name}' has no classification head (no module "
                f"{', '.join(HEAD_ATTRIBUTES)})",
                field="model",
            )
        point = split_point_of(head_input, shapes[head_input])
        tensor = params.activations
        check_dtype(tensor.dtype, "activations.dtype")
        if len(tensor.shape) != 1 + len(point.features) or (
            tuple(tensor.shape[1:]) != point.features
        ):
            wanted = ", ".join(["rows", *(str(d) for d in point.features)])
            raise InvalidArgument(
                f"activations have shape {quote(list(tensor.shape))}; the head of model "
                f"'{model.name}' takes its input '{head_input}' as [{wanted}]",
                field="activations.shape",
            )
        rows = tensor.shape[0]
        if rows == 0:
            raise InvalidArgument("activations have no rows", field="activations.shape")
        if rows > self.limits.max_head_rows:
            raise InvalidArgument(
                f"activations have {rows} rows, the limit is {self.limits.max_head_rows}",
                field="activations.shape",
            )
        inputs = np.ascontiguousarray(decode(tensor, "activations"))
        finite = np.isfinite(inputs)
        if not finite.all():
            # NaN or infinite activations give NaN logits: refuse them rather than answer OK.
            bad_rows = np.flatnonzero(~finite.reshape(rows, -1).all(axis=1))
            raise InvalidArgument(
                f"activations have {int(finite.size - finite.sum())} non-finite values (NaN or "
                f"infinity), in {len(bad_rows)} rows, the first row {int(bad_rows[0])}",
                field="activations.data",
            )
        job = HeadJob(inputs=inputs, is_cancelled=is_cancelled)
        model.worker.submit(job)
        logits = job.future.result()
        return HeadPrediction(logits=logits, predicted=logits.argmax(axis=1).astype(np.int64))
