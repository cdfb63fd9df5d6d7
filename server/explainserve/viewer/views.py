"""What the terminal and the HTML page show, computed once from an ExplainResponse: per input,
the text cut into plain gaps and scored units, one row per explained target (classifiers) or
continuation unit (causal LMs), the explained and predicted labels with their probabilities, and
the colour of every score.

Colours use one symmetric scale per input: red for a positive score (the unit pushes the
explained output up), blue for a negative one, white at zero, full colour at the input's largest
absolute score, so the rows of an input compare with each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from explainserve.v1 import explain_pb2 as pb

#: Full-scale colours of the symmetric scale (RGB): positive red, negative blue.
POSITIVE_RGB = (214, 39, 40)
NEGATIVE_RGB = (31, 119, 180)


def colour(score: float, scale: float) -> tuple[int, int, int]:
    """The RGB colour of `score` on a symmetric scale reaching full colour at `scale`: white
    blended towards red (positive) or blue (negative) by |score| / scale."""
    if not math.isfinite(score) or scale <= 0 or score == 0:
        return (255, 255, 255)
    weight = min(1.0, abs(score) / scale)
    target = POSITIVE_RGB if score > 0 else NEGATIVE_RGB
    return tuple(round(255 + (c - 255) * weight) for c in target)  # type: ignore[return-value]


@dataclass(frozen=True)
class Piece:
    """A run of the input text: a unit (index >= 0) with its score, or plain text between
    units (index -1)."""

    text: str
    unit: int = -1
    score: float = 0.0
    valid: bool = True
    #: Causal LMs: the unit is the continuation unit its row explains.
    target: bool = False


@dataclass(frozen=True)
class Row:
    """One explained output: a classifier's target, or a causal LM's continuation unit."""

    title: str
    pieces: list[Piece]
    #: Causal LMs: the continuation unit this row explains (its index among target_units).
    target_unit: int = -1


@dataclass(frozen=True)
class LabelProb:
    """A class and the model's probability of it on the unperturbed input."""

    label: str
    probability: float


@dataclass
class InputView:
    """Everything shown for one input."""

    index: int
    text: str
    causal: bool
    units: list[pb.Unit]
    rows: list[Row]
    #: max |score| over the valid cells: the scale's full colour.
    scale: float
    explained: list[LabelProb] = field(default_factory=list)
    predicted: LabelProb | None = None
    #: Causal LMs: the continuation units (matrix rows) and the matrix (None where invalid).
    target_units: list[pb.Unit] = field(default_factory=list)
    matrix: list[list[float | None]] = field(default_factory=list)
    continuation: str = ""
    generated: bool = False
    forward_passes: int = 0


def softmax(logits: list[float]) -> list[float]:
    """Probabilities of `logits` (stable)."""
    if not logits:
        return []
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


#: How a unit without characters is shown: a special token under ALL_TOKENS, or a token of
#: whitespace only under TOKEN (both have an empty text at an empty span, see Unit.text).
EMPTY_UNIT = "\u00b7"


def unit_label(unit: pb.Unit) -> str:
    """What to print for a unit: its text, or `EMPTY_UNIT` when it has no characters."""
    return unit.text or EMPTY_UNIT


def pieces(
    text: str,
    units: list[pb.Unit],
    scores: list[float],
    valid: list[bool],
    target: pb.Unit | None = None,
) -> list[Piece]:
    """`text` cut into units (in text order; each one piece) and the plain text between them;
    the unit with `target`'s span (a causal row's continuation unit) is marked."""
    order = sorted(range(len(units)), key=lambda u: (units[u].char_start, units[u].char_end))
    out: list[Piece] = []
    at = 0
    for u in order:
        unit = units[u]
        start = max(at, unit.char_start)
        if start > at:
            out.append(Piece(text[at:start]))
        label = unit_label(unit)
        is_target = target is not None and (unit.char_start, unit.char_end) == (
            target.char_start,
            target.char_end,
        )
        out.append(Piece(label, u, scores[u], valid[u], is_target))
        at = max(at, unit.char_end)
    if at < len(text):
        out.append(Piece(text[at:]))
    return out


def input_view(explanation: pb.Explanation, labels: list[str]) -> InputView:
    """The view of one explanation; `labels` are the model's class names (classifiers)."""
    e = explanation
    rows_n, cols = e.scores.rows, e.scores.cols
    values = list(e.scores.values)
    valid = list(e.valid) if e.valid else [True] * len(values)
    matrix = [
        [values[r * cols + c] if valid[r * cols + c] else None for c in range(cols)]
        for r in range(rows_n)
    ]
    finite = [abs(v) for row in matrix for v in row if v is not None and math.isfinite(v)]
    scale = max(finite, default=0.0)
    units = list(e.units)
    causal = len(e.target_units) > 0
    rows: list[Row] = []
    for r in range(rows_n):
        row_valid = valid[r * cols : (r + 1) * cols]
        row_scores = values[r * cols : (r + 1) * cols]
        if causal:
            title = f"→ {unit_label(e.target_units[r])!r}"
        else:
            target = e.targets[r]
            title = target.label or f"class {target.index}"
        rows.append(
            Row(
                title,
                pieces(e.text, units, row_scores, row_valid, e.target_units[r] if causal else None),
                r if causal else -1,
            )
        )
    view = InputView(
        index=e.input_index,
        text=e.text,
        causal=causal,
        units=units,
        rows=rows,
        scale=scale,
        target_units=list(e.target_units),
        matrix=matrix,
        continuation=e.continuation,
        generated=e.generated,
        forward_passes=e.counters.forward_passes,
    )
    if not causal and e.logits:
        probs = softmax(list(e.logits))
        name = [labels[i] if i < len(labels) else f"class {i}" for i in range(len(probs))]
        best = max(range(len(probs)), key=probs.__getitem__)
        view.predicted = LabelProb(name[best], probs[best])
        view.explained = [
            LabelProb(t.label or name[t.index], probs[t.index] if t.index < len(probs) else 0.0)
            for t in e.targets
        ]
    return view


def views(response: pb.ExplainResponse, labels: list[str]) -> list[InputView]:
    """One view per explanation, in input order."""
    ordered = sorted(response.explanations, key=lambda e: e.input_index)
    return [input_view(e, labels) for e in ordered]
