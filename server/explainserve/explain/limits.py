"""What one Explain request may ask for (the fields made with `option` are TOML keys and flags,
see `explainserve.settings`). No torch here: the configuration imports it."""

from __future__ import annotations

from dataclasses import dataclass, field

from explainserve.settings import option


@dataclass(frozen=True)
class CausalLimits:
    """Continuation limits of one input."""

    max_new_tokens: int = option(256, "causal LMs: tokens generated per input at most", minimum=1)
    max_continuation_tokens: int = option(
        256, "causal LMs: tokens of a given continuation at most", minimum=1
    )
    max_temperature: float = 100.0


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every limit is enforced with a clear message."""

    max_inputs: int = option(256, "Explain: inputs per request at most", minimum=1)
    #: Sequences one input may send through the model (perturbations, steps x targets, ...).
    max_rows_per_input: int = option(
        50_000,
        "Explain: sequences one input may send through the model (perturbations, steps)",
        minimum=1,
    )
    max_targets: int = option(64, "Explain: targets per input at most", minimum=1)
    #: Causal LMs: generation and continuation lengths.
    causal: CausalLimits = field(default_factory=CausalLimits)
