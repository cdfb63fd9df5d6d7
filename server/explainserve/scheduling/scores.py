"""The explained function of a batch's logits (`apply_mode`) and causal LMs' target-token
scores (`target_scores`): shared by the full path (`scheduling.execute`) and the prefix path
(`scheduling.prefix`)."""

from __future__ import annotations

import torch

from explainserve.scheduling.interfaces import KeptPositions
from explainserve.vocabulary import InferenceMode


def apply_mode(logits: torch.Tensor, mode: InferenceMode) -> torch.Tensor:
    """The function of the logits that is explained, over the last (class) dimension."""
    if mode == "softmax":
        return torch.softmax(logits.float(), dim=-1)
    if mode == "log_softmax":
        return torch.log_softmax(logits.float(), dim=-1)
    return logits.float()


def target_scores(
    kept: KeptPositions,
    rows: slice | torch.Tensor,
    cols: torch.Tensor,
    targets: torch.Tensor,
    mode: InferenceMode,
) -> torch.Tensor:
    """Causal LMs: `(n, t)` scores of batch rows `rows`, `mode(logits at kept position cols[k])`
    read at token `targets[k]`. In logits mode only the target tokens' logits are computed (all
    a score needs); softmax and log_softmax need the whole vocabulary at each position."""
    if mode == "logits":
        return kept.target_logits(rows, cols, targets).float()
    scores = apply_mode(kept.logits(rows, cols), mode)  # (n, t, V)
    index = targets.view(1, -1, 1).expand(scores.shape[0], -1, 1)
    return scores.gather(2, index)[..., 0]
