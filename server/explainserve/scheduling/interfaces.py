"""The types the scheduling modules share: what the worker needs from a model (`Runner`, and a
causal LM's `KeptPositions`), what it counts (`WorkerStats`) and whom it tells its timings
(`Observer`). A leaf below the worker, the policy, the executor and the prefix path, which all
name them (imports: jobs only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from explainserve.scheduling.jobs import GenerationOptions


class KeptPositions(Protocol):
    """Causal LMs: the last positions of a batch, from which rows' scores are read (the models
    layer's `models.heads.KeptPositions`, computing no more of the head than asked)."""

    def logits(self, rows: slice | torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """`(n, t, V)` logits of batch rows `rows` at kept positions `cols` `(t,)`."""
        ...

    def target_logits(
        self, rows: slice | torch.Tensor, cols: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """`(n, t)` logit of token `targets[k]` at kept position `cols[k]`, for rows `rows`."""
        ...


class Runner(Protocol):
    """What the worker needs from a model. Every runner has all of it; what a kind of model
    cannot do (a classifier's next-token logits, a causal LM's classification head) raises."""

    pad_id: int
    #: "right" (encoders) or "left" (heads that read the last token, causal LMs).
    padding_side: str
    #: Causal LMs: the size of the next-token logits (bounds a batch's logits); 0 for others.
    vocab_size: int
    #: Causal LMs: whether forward rows may run on a cached prefix (`scheduling.prefix`).
    prefix_reuse: bool

    @property
    def packing(self) -> bool:
        """Causal LMs: whether rows on a cached prefix may be packed several to a batch row."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        ...

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        """`(b, C)` logits for `(b, L)` ids (or `(b, L, h)` embeddings) and attention mask;
        `read_only`: the positions the logits are not read from may be skipped."""
        ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """`(b, L, h)` input embeddings of `(b, L)` ids."""
        ...

    def capture(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        split_points: list[str],
        with_logits: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Activations of a padded batch at `split_points`, and the logits when `with_logits`
        (otherwise the pass may stop once everything is captured). Activation jobs only."""
        ...

    def run_head(self, inputs: torch.Tensor) -> torch.Tensor:
        """`(r, C)` logits of the classification head on `(r, *features)` rows (differentiable).
        Head and concept jobs, and output heads."""
        ...

    def edited_logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        split_point: str,
        edit: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`(b, C)` logits with split point `split_point`'s output replaced by `edit(output)`
        (differentiable). Concept layer jobs."""
        ...

    def head_input(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        """`(b, *features)`: the classification head's input at the position the head reads, the
        pass stopped there (differentiable when gradients are on). Concept jobs and output
        heads."""
        ...

    def token_logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        keep: int,
        positions: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> torch.Tensor:
        """Causal LMs: `(b, keep, V)` next-token logits of the last `keep` positions of a
        left-padded batch; with a `cache` (from `cache_rows`) the rows continue it, `positions`
        giving the new positions' ids."""
        ...

    def kept(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None,
        keep: int,
        positions: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> KeptPositions:
        """Causal LMs: the last `keep` positions of a left-padded batch (as `token_logits`),
        from which the rows' scores are read without computing more of the head than they
        need."""
        ...

    def prefix_cache(
        self, ids: torch.Tensor, attention: torch.Tensor, keep: int = 0
    ) -> tuple[Any, KeptPositions | None] | None:
        """Causal LMs: the KV cache of left-padded rows and, with `keep`, their last `keep`
        positions (as `kept`); None if the cache cannot be cut."""
        ...

    def cache_rows(self, cache: Any, rows: torch.Tensor, length: int, expand: int = 0) -> Any:
        """Causal LMs: a cache of `cache`'s rows `rows`, first `length` slots (with `expand`:
        its one row `rows[0]`, viewed `expand` times)."""
        ...

    def packed(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        index: torch.Tensor,
    ) -> KeptPositions:
        """Causal LMs with `packing`: several rows packed into each batch row on a cache, a 4D
        boolean `mask` (True: seen) keeping them apart; the final states at flat positions
        `index`."""
        ...

    def generate(
        self,
        prompts: list[torch.Tensor],
        options: GenerationOptions,
        stop_ids: set[int],
        on_token: Callable[[int], None] | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[list[int] | None]:
        """Causal LMs: continues the prompts together; None for a prompt cancelled meanwhile."""
        ...


@dataclass
class WorkerStats:
    """Counters, read by tests and metrics. Only the worker thread writes them."""

    batches: int = 0
    rows: int = 0
    #: Tokens run (padding counted) and tokens of the inputs run; with prefix reuse, only what
    #: actually went through the model (cached prefixes once, suffixes).
    padded_tokens: int = 0
    real_tokens: int = 0
    #: Tokens the same rows would have cost run in full, each alone (rows x length).
    naive_tokens: int = 0
    #: Batches that ran out of memory and were split.
    oom_splits: int = 0
    #: Jobs failed with an error of their own (the rest of their batch retried without them).
    failed_jobs: int = 0
    #: Jobs dropped from the queue because their request was cancelled or timed out.
    cancelled_jobs: int = 0
    #: Rows of cancelled jobs that never ran.
    cancelled_rows: int = 0
    #: Queued jobs of a request that failed, and their rows, dropped unrun.
    dropped_jobs: int = 0
    dropped_rows: int = 0
    #: Submissions refused because the queue was full.
    rejected: int = 0
    #: Seconds spent in batches (forward and backward passes, copies to the host).
    busy_seconds: float = 0.0
    #: Batches run by the warm-up calibration of batch sizes (`calibrate`), and their seconds.
    calibration_batches: int = 0
    calibration_seconds: float = 0.0


class Observer(Protocol):
    """Receives the worker's timings (metrics); called on the worker thread, must be quick."""

    def queued(self, kind: str, seconds: float) -> None:
        """A job's first rows start running `seconds` after it was queued."""
        ...

    def request_queued(self, priority: str, seconds: float) -> None:
        """A request's submission starts running `seconds` after it was queued, when nothing of
        that request was waiting before it."""
        ...

    def batch(
        self, kind: str, rows: int, padded: int, real: int, budget: int, seconds: float
    ) -> None:
        """A batch of `rows` rows, `padded` tokens (padding counted) of which `real` are
        tokens of the inputs, under a budget of `budget` tokens, ran in `seconds`."""
        ...
