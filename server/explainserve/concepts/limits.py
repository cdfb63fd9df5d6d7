"""What one concept request may ask for (the fields made with `option` are TOML keys and flags,
see `explainserve.settings`). No torch here: the configuration imports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from explainserve.errors import InvalidArgument
from explainserve.settings import option

if TYPE_CHECKING:
    from explainserve.concepts.sets import ConceptSet


@dataclass(frozen=True)
class ConceptLimits:
    """Sizes of ExplainConcepts requests and of the concept sets a request carries inline."""

    max_inputs: int = option(
        4096, "ExplainConcepts: inputs per request at most", key="max_concept_inputs", minimum=1
    )
    #: Values (every tensor's elements together) of a request's inline concept set: 262,144
    #: float32 values are 1 MiB, a 384-feature dictionary of ~340 concepts with its encoder.
    max_inline_values: int = option(
        262_144,
        "values (all tensors' elements) of a concept set sent inline in a request at most",
        key="max_inline_concept_values",
        minimum=1,
    )

    def check_inline(self, concept_set: ConceptSet, field: str) -> None:
        """An inline set within `max_inline_values` (INVALID_ARGUMENT naming `field`)."""
        values = sum(t.size for t in concept_set.tensors().values())
        if values > self.max_inline_values:
            raise InvalidArgument(
                f"the inline concept set has {values} values, the limit is "
                f"{self.max_inline_values}: serve it from a file (explainserve serve --concepts)",
                field=field,
            )
