"""Inputs -> concepts: a concept's activation as the output Explain explains (`ConceptOutput`,
an output head of the worker's forward and gradient jobs). The same methods, units, estimators
and batching as for classes; only what a row is scored on changes."""

from __future__ import annotations

import torch

from explainserve.concepts.codec import Codec
from explainserve.scheduling.jobs import HeadFn


class ConceptOutput:
    """The output head of a concept set: a row's concept activations C = t(h) on the head's
    input h, followed by the model's class logits g(h) (so the job that scores the unperturbed
    row also predicts: targets index the first K outputs, the concepts). One object per served
    set, so that requests explaining its concepts share batches."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        #: K: the outputs a target may be.
        self.n_concepts = codec.concept_set.n_concepts

    def __call__(self, rows: torch.Tensor, head: HeadFn) -> torch.Tensor:
        """`(b, *features)` head-input rows -> `(b, K + C)`: C, then the logits."""
        concepts = self.codec.encode(rows.reshape(rows.shape[0], -1))
        return torch.cat([concepts, head(rows).float()], dim=1)
