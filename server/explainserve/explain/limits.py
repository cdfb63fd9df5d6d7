"""What one Explain request may ask for. No torch here: the configuration imports it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CausalLimits:
    """Continuation limits of one input."""

    max_new_tokens: int = 256
    max_continuation_tokens: int = 256
    max_temperature: float = 100.0


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every limit is enforced with a clear message."""

    max_inputs: int = 256
    #: Sequences one input may send through the model (perturbations, steps x targets, ...).
    max_rows_per_input: int = 50_000
    max_targets: int = 64
    #: Causal LMs: generation and continuation lengths.
    causal: CausalLimits = field(default_factory=CausalLimits)
