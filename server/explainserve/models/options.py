"""The words of a served model's options that the configuration names at run time (its option
types are read with `typing`, `explainserve.settings`). No torch here: the configuration, and
so `explainserve --help`, imports it."""

from __future__ import annotations

from typing import Literal

#: The replacement token of perturbations when the tokenizer has no mask token, or the zero
#: embedding instead of any token.
ReplacementFallback = Literal["unk", "pad", "eos", "zero_embedding"]
