"""What the terminal and the HTML page show, computed once from a response.

From an ExplainResponse (`views`): per input, the text cut into plain gaps and scored units, one
row per explained target (classifiers), concept (a concept target) or continuation unit (causal
LMs), the predicted label with its probability, what each row explains (a class's probability, a
concept's activation), and the colour of every score.

From an ExplainConceptsResponse (`concept_views`): per input and explained class, the output's
decomposition (concepts, residual, bias), the top concepts by |contribution| as signed bars, and
the residual's share.

Colours use one symmetric scale per input: red for a positive score (the unit pushes the
explained output up), blue for a negative one, white at zero, full colour at the input's largest
absolute score, so the rows of an input compare with each other. Concept bars use the same two
colours at full strength (a concept for the class is red, one against it blue); their length is
on one scale per input (the full bar is the input's largest |contribution| or |residual|).
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
    #: What the explained output is worth on the unperturbed input: a class's probability
    #: ("61.2%") or a concept's activation ("activation +1.53"); empty for causal rows.
    detail: str = ""


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
    probs = [] if causal else softmax(list(e.logits))
    activations = list(e.concept_activations)
    rows: list[Row] = []
    for r in range(rows_n):
        row_valid = valid[r * cols : (r + 1) * cols]
        row_scores = values[r * cols : (r + 1) * cols]
        detail = ""
        if causal:
            title = f"→ {unit_label(e.target_units[r])!r}"
        else:
            target = e.targets[r]
            title = target.label or f"class {target.index}"
            if activations:
                detail = f"activation {activations[target.index]:+.3g}"
            elif target.index < len(probs):
                detail = f"{probs[target.index]:.1%}"
        rows.append(
            Row(
                title,
                pieces(e.text, units, row_scores, row_valid, e.target_units[r] if causal else None),
                r if causal else -1,
                detail,
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
    if probs:
        view.predicted = predicted(probs, labels)
    return view


def class_name(index: int, labels: list[str]) -> str:
    """A class's label, or `class N` when the model has none."""
    return labels[index] if index < len(labels) else f"class {index}"


def predicted(probs: list[float], labels: list[str]) -> LabelProb:
    """The most probable class (probabilities not empty)."""
    best = max(range(len(probs)), key=probs.__getitem__)
    return LabelProb(class_name(best, labels), probs[best])


def views(response: pb.ExplainResponse, labels: list[str]) -> list[InputView]:
    """One view per explanation, in input order."""
    ordered = sorted(response.explanations, key=lambda e: e.input_index)
    return [input_view(e, labels) for e in ordered]


#: How many concepts a target shows by default (`explainserve explain --top`).
DEFAULT_TOP = 8
#: A gap this small against the output's terms is float rounding (a linear head in logits
#: mode): it is not shown.
GAP_SHOWN = 1e-4


@dataclass(frozen=True)
class ConceptBar:
    """One term of a class's output drawn as a signed bar: a concept's contribution, or the
    residual (the part the concept set does not reconstruct)."""

    label: str
    #: The raw contribution, in the output's units (C_k x its gradient, summed over the rows).
    value: float
    #: value / (the sum of every concept's |contribution| + |residual|): signed; the |shares|
    #: of all the concepts and of the residual add up to 1.
    share: float
    #: The concept's activation C_k (summed over the rows); None for the residual.
    activation: float | None = None
    #: The concept's index in its set; -1 for the residual.
    index: int = -1

    @property
    def residual(self) -> bool:
        """The residual's bar."""
        return self.index < 0


@dataclass(frozen=True)
class TargetConcepts:
    """One explained class: its output, the output's terms and its top concepts."""

    title: str
    #: The class's probability on the input ("61.2%").
    detail: str
    output: float
    concept_sum: float
    residual: float
    bias: float
    gap: float
    #: The top concepts by |contribution|, largest first.
    bars: list[ConceptBar]
    #: The residual as a bar of the same scale.
    residual_bar: ConceptBar
    #: The concepts left out of `bars`, and the sum of their |shares|.
    others: int = 0
    others_share: float = 0.0

    @property
    def residual_share(self) -> float:
        """|residual| / (the sum of every concept's |contribution| + |residual|)."""
        return abs(self.residual_bar.share)

    @property
    def show_gap(self) -> bool:
        """The gap is more than float rounding against the output's terms (a nonlinear head or
        inference mode)."""
        terms = abs(self.concept_sum) + abs(self.residual) + abs(self.bias)
        return abs(self.gap) > GAP_SHOWN * max(terms, 1.0)

    def equation(self, output_name: str) -> str:
        """`logit +1.2 = concepts +1.1 + residual -0.1 + bias +0.2` (and the gap when shown)."""
        terms = (
            f"{output_name} {self.output:+.3g} = concepts {self.concept_sum:+.3g}"
            f" + residual {self.residual:+.3g} + bias {self.bias:+.3g}"
        )
        if self.show_gap:
            terms += f" + gap {self.gap:+.3g}"
        return terms

    @property
    def others_label(self) -> str:
        """`… 3 more concepts` (empty when every concept is shown)."""
        if not self.others:
            return ""
        return f"… {self.others} more concept{'s' if self.others > 1 else ''}"


@dataclass
class ConceptInputView:
    """Everything shown for one input of ExplainConcepts."""

    index: int
    text: str
    targets: list[TargetConcepts]
    #: max |value| over the input's bars: the full bar.
    scale: float
    #: |h - t^-1(C)| / |h| at the split point.
    reconstruction_error: float
    #: What the outputs are: "logit", "probability" or "log-probability" (the inference mode).
    output_name: str = "logit"
    predicted: LabelProb | None = None
    forward_passes: int = 0


def bar_length(value: float, scale: float) -> float:
    """How much of the full bar `value` fills, in [0, 1]."""
    if scale <= 0 or not math.isfinite(value):
        return 0.0
    return min(1.0, abs(value) / scale)


def bar_colour(value: float) -> tuple[int, int, int]:
    """A bar's RGB colour: the heat maps' full red (for) or blue (against), white at 0."""
    return colour(value, abs(value))


def _rows_summed(matrix: pb.Matrix) -> list[float]:
    """A [rows, K] matrix's column sums (one row at the head's input)."""
    cols = matrix.cols
    values = list(matrix.values)
    return [sum(values[c::cols]) for c in range(cols)]


def target_concepts(
    t: pb.ConceptContributions,
    activations: list[float],
    concept_labels: list[str],
    detail: str,
    top: int,
) -> TargetConcepts:
    """One class's terms from its raw (unnormalized) contributions; `top` concepts kept."""
    values = _rows_summed(t.contributions)
    total = sum(abs(v) for v in values) + abs(t.residual)

    def share(value: float) -> float:
        return value / total if total > 0 else 0.0

    order = sorted(range(len(values)), key=lambda k: -abs(values[k]))
    kept = order[:top]
    bars = [
        ConceptBar(
            concept_labels[k] if k < len(concept_labels) else f"concept {k}",
            values[k],
            share(values[k]),
            activations[k] if k < len(activations) else None,
            k,
        )
        for k in kept
    ]
    return TargetConcepts(
        title=t.target.label or f"class {t.target.index}",
        detail=detail,
        output=t.output,
        concept_sum=t.concept_sum,
        residual=t.residual,
        bias=t.bias,
        gap=t.gap,
        bars=bars,
        residual_bar=ConceptBar("residual", t.residual, share(t.residual)),
        others=len(order) - len(kept),
        others_share=sum(abs(share(values[k])) for k in order[top:]),
    )


def concept_input_view(
    explanation: pb.ConceptExplanation,
    concept_labels: list[str],
    labels: list[str],
    top: int,
    output_name: str,
) -> ConceptInputView:
    """The view of one input's concept explanation with raw contributions (requested with
    normalization off); `labels` are the model's classes."""
    e = explanation
    probs = softmax(list(e.logits))
    activations = _rows_summed(e.concepts)
    targets = [
        target_concepts(
            t,
            activations,
            concept_labels,
            f"{probs[t.target.index]:.1%}" if t.target.index < len(probs) else "",
            top,
        )
        for t in e.targets
    ]
    shown = [abs(b.value) for t in targets for b in [*t.bars, t.residual_bar]]
    return ConceptInputView(
        index=e.input_index,
        text=e.text,
        targets=targets,
        scale=max((v for v in shown if math.isfinite(v)), default=0.0),
        reconstruction_error=e.reconstruction_error,
        output_name=output_name,
        predicted=predicted(probs, labels) if probs else None,
        forward_passes=e.counters.forward_passes,
    )


def concept_views(
    response: pb.ExplainConceptsResponse,
    labels: list[str],
    top: int = DEFAULT_TOP,
    output_name: str = "logit",
) -> list[ConceptInputView]:
    """One view per concept explanation, in input order (contributions must be raw: the
    request's normalization off); `output_name` says what the outputs are."""
    ordered = sorted(response.explanations, key=lambda e: e.input_index)
    concept_labels = list(response.concept_labels)
    return [concept_input_view(e, concept_labels, labels, top, output_name) for e in ordered]
