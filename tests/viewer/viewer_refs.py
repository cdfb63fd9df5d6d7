"""What the viewer tests expect to see, computed from a response's JSON on its own (not with the
viewer's code): the classes' probabilities, and each concept explanation's terms as a person
should read them off the bars."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: The tiny BERT's classes.
CLASSES = ["negative", "neutral", "positive"]


def softmax(logits: list[float]) -> list[float]:
    """Probabilities of `logits`."""
    exps = [math.exp(x - max(logits)) for x in logits]
    return [x / sum(exps) for x in exps]


def predicted_label(explanation: dict[str, Any]) -> str:
    """The tiny BERT's predicted class for an explanation of the JSON."""
    probs = softmax(explanation["logits"])
    return CLASSES[probs.index(max(probs))]


@dataclass(frozen=True)
class Term:
    """A bar: a concept's raw contribution (activation None for the residual)."""

    label: str
    value: float
    share: float
    activation: float | None


@dataclass(frozen=True)
class ClassTerms:
    """One explained class of a ConceptExplanation: its heading and its bars, in order."""

    label: str
    probability: float
    output: float
    residual_share: float
    #: The `top` concepts by |contribution|, then the residual.
    bars: list[Term]
    others: int
    others_share: float


def concept_scale(explanation: dict[str, Any]) -> float:
    """The full bar: the input's largest |contribution| or |residual| over its classes."""
    targets = explanation["targets"]
    return max(
        max(abs(v) for t in targets for v in t["contributions"]["values"]),
        max(abs(t.get("residual", 0.0)) for t in targets),
    )


def class_terms(explanation: dict[str, Any], labels: list[str], top: int) -> list[ClassTerms]:
    """Each explained class's terms (raw contributions, one row at the head's input); a share
    is a contribution / (the sum of every |contribution| + |residual|)."""
    activations = explanation["concepts"]["values"]
    probs = softmax(explanation["logits"])
    out = []
    for t in explanation["targets"]:
        values = t["contributions"]["values"]
        residual = t.get("residual", 0.0)
        total = sum(abs(v) for v in values) + abs(residual)
        order = sorted(range(len(values)), key=lambda k: -abs(values[k]))
        bars = [Term(labels[k], values[k], values[k] / total, activations[k]) for k in order[:top]]
        out.append(
            ClassTerms(
                label=t["target"]["label"],
                probability=probs[t["target"].get("index", 0)],
                output=t["output"],
                residual_share=abs(residual) / total,
                bars=[*bars, Term("residual", residual, residual / total, None)],
                others=len(values) - top,
                others_share=sum(abs(values[k]) for k in order[top:]) / total,
            )
        )
    return out
