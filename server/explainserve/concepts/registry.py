"""Concept sets bound to served models: each set checked against its model (split point,
dimensions, labels, the probe row) and kept with its codec on the model's device, by model and
name (`ConceptRegistry`). Sets load at start (`explainserve serve --concepts NAME=PATH`) or come
inline in a request (bound the same way, for that request only)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from explainserve.concepts.codec import Codec
from explainserve.concepts.limits import ConceptLimits
from explainserve.concepts.params import ConceptRef
from explainserve.concepts.sets import PROBE_TOLERANCE, ConceptSet, ConceptSetError, probe_distance
from explainserve.concepts.target import ConceptOutput
from explainserve.errors import InvalidArgument, NotFound, quote
from explainserve.models.registry import ServedModel
from explainserve.scheduling.jobs import ActivationJob
from explainserve.vocabulary import InputSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundConceptSet:
    """A concept set checked against the served model it explains, with its codec there."""

    name: str
    model: ServedModel
    concept_set: ConceptSet
    codec: Codec
    #: Where it came from: a file's path, or "inline" (a request's own set).
    source: str

    @property
    def n_concepts(self) -> int:
        """K."""
        return self.concept_set.n_concepts

    @property
    def at_head(self) -> bool:
        """Whether it reads the head's input (one row per input; g is the head alone), not a
        split point with a token dimension."""
        return self.concept_set.split_point == self.model.head_input

    @cached_property
    def labels(self) -> list[str]:
        """One label per concept."""
        return self.concept_set.labels()

    @cached_property
    def output_head(self) -> ConceptOutput:
        """Its concepts as the explained output (inputs -> concepts), one object per set."""
        return ConceptOutput(self.codec)

    def concept_index(self, concept: int | str, field: str) -> int:
        """A concept given by index or label, checked (INVALID_ARGUMENT naming `field`)."""
        if isinstance(concept, str):
            if concept in self.labels:
                return self.labels.index(concept)
            raise InvalidArgument(
                f"concept set '{quote(self.name)}' has no concept labelled '{quote(concept)}'",
                field=field,
            )
        if not 0 <= concept < self.n_concepts:
            raise InvalidArgument(
                f"concept {concept} is out of range: concept set '{quote(self.name)}' has "
                f"{self.n_concepts} concepts (0..{self.n_concepts - 1})",
                field=field,
            )
        return concept


def bind(name: str, concept_set: ConceptSet, model: ServedModel, source: str) -> BoundConceptSet:
    """`concept_set` checked against the served `model` (ConceptSetError naming `source` and
    what is wrong): a classifier with a head; the set's split point its head's input or one with
    a token dimension, of one feature dimension of the set's size; the same labels; and, when
    the set has one, the same probe row (the served model gives the row the set was fitted next
    to, within `PROBE_TOLERANCE`)."""

    def fail(message: str) -> ConceptSetError:
        return ConceptSetError(f"{source}: {message}", field=source)

    if model.is_causal_lm or model.head_input is None:
        raise fail(
            f"model '{model.name}' has no classification head: concept sets explain a "
            "classifier's prediction"
        )
    shapes = dict(model.split_points)
    point = concept_set.split_point
    if point not in shapes:
        raise fail(f"model '{model.name}' has no split point '{quote(point)}'")
    shape = shapes[point]
    token_dim = len(shape) > 2 and shape[1] == -1
    if point != model.head_input and not token_dim:
        raise fail(
            f"split point '{quote(point)}' has rows of shape {shape[1:]}, one per input: concept "
            f"sets are served at the classification head's input ('{model.head_input}') or at "
            "split points with a token dimension"
        )
    features = shape[2:] if token_dim else shape[1:]
    if len(features) != 1 or features[0] != concept_set.n_features:
        raise fail(
            f"the set's activations have {concept_set.n_features} features; split point "
            f"'{point}' of model '{model.name}' has rows of shape {features}"
        )
    wanted = concept_set.model.labels
    if wanted and list(wanted) != model.labels:
        raise fail(
            f"the set was fitted for labels {list(wanted)}; model '{model.name}' has {model.labels}"
        )
    if concept_set.model.probe is not None:
        served = probe_row(model, concept_set.model.probe_text, point)
        distance = probe_distance(concept_set.model.probe, served)
        if distance > PROBE_TOLERANCE:
            raise fail(
                f"the set was fitted on another model: its probe row differs from model "
                f"'{model.name}''s by {distance:.3f} of its norm (at most {PROBE_TOLERANCE})"
            )
    return BoundConceptSet(name, model, concept_set, Codec(concept_set, model.device), source)


def probe_row(model: ServedModel, text: str, split_point: str | None = None) -> np.ndarray:
    """The row of `text` at `split_point` (default: the head's input) that the model's worker
    computes (float32): at the position the head reads, for a split point with a token
    dimension, as GetActivations' CLS_TOKEN row."""
    point = split_point or model.head_input
    assert point is not None
    shape = dict(model.split_points)[point]
    encoded = model.encode(InputSpec(text=text), 0)
    job = ActivationJob(
        ids=encoded.ids,
        attention=encoded.attention,
        split_points=(point,),
        token_dim=(len(shape) > 2 and shape[1] == -1,),
    )
    model.worker.submit(job)
    return np.asarray(job.future.result().values[0], dtype=np.float32).reshape(-1)


class ConceptRegistry:
    """The concept sets served with the models, by model and name."""

    def __init__(self) -> None:
        self._sets: dict[str, BoundConceptSet] = {}
        self._lock = threading.Lock()

    def add(self, bound: BoundConceptSet) -> None:
        """Serves a bound set under its name (a name is used once, whatever the model)."""
        with self._lock:
            if bound.name in self._sets:
                raise InvalidArgument(f"concept set name '{bound.name}' is used twice")
            self._sets[bound.name] = bound
        log.info(
            "concept set %s: %d concepts (%s) for model %s at %s, from %s",
            bound.name,
            bound.n_concepts,
            bound.concept_set.encoder.kind,
            bound.model.name,
            bound.concept_set.split_point,
            bound.source,
        )

    def get(self, model: str, name: str, field: str) -> BoundConceptSet:
        """The set called `name`, for `model`: NotFound lists the sets; a set of another model
        is INVALID_ARGUMENT naming `field`."""
        try:
            bound = self._sets[name]
        except KeyError:
            names = ", ".join(sorted(self._sets)) or "(none)"
            raise NotFound(f"no concept set named '{quote(name)}'; concept sets: {names}") from None
        if bound.model.name != model:
            raise InvalidArgument(
                f"concept set '{quote(name)}' belongs to model '{bound.model.name}', not "
                f"'{quote(model)}'",
                field=field,
            )
        return bound

    def resolve(
        self, model: ServedModel, ref: ConceptRef, limits: ConceptLimits
    ) -> BoundConceptSet:
        """A request's concept set for `model`: a served one by name (NOT_FOUND when unknown,
        INVALID_ARGUMENT when it is another model's), or its inline set (within `limits`, its
        split point the head's input when it names none), checked and bound now."""
        if ref.inline is not None:
            where = f"{ref.field}.inline"
            inline = ref.inline
            if not inline.split_point and model.head_input is not None:
                inline = replace(inline, split_point=model.head_input)
            limits.check_inline(inline, where)
            return bind("inline", inline.check(where), model, where)
        if not ref.name:
            raise InvalidArgument(
                "no concept set: name one the server serves (ListModels lists them) or give one "
                "inline",
                field=ref.field,
            )
        return self.get(model.name, ref.name, f"{ref.field}.name")

    def of_model(self, model: str) -> list[BoundConceptSet]:
        """A model's sets, by name."""
        return [self._sets[k] for k in sorted(self._sets) if self._sets[k].model.name == model]
