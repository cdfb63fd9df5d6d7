"""The worker's batching, queueing and out-of-memory settings (the fields made with `option`
are TOML keys and flags, see `explainserve.settings`). No torch here: the configuration
imports it."""

from __future__ import annotations

from dataclasses import dataclass

from explainserve.settings import option


@dataclass(frozen=True)
class WorkerOptions:
    """Batching, queueing and out-of-memory knobs."""

    #: Rows x padded length of one no-grad batch.
    token_budget: int = option(8192, "tokens (padding counted) per forward batch")
    #: The time bound of batches (milliseconds): batches are also cut by what they are
    #: predicted to cost, from the measured cost of past batches of their kind
    #: (`scheduling.cost`), so that a request's round that arrives behind a huge one waits at most
    #: about twice it longer than alone: batches of requests under way take up to
    #: `policy.LONG_BATCH` (1.5) times it, a round's first batch its own rows (up to once it) and
    #: `policy.FIRST_FILL` (0.5) times it of others' rows. None: `DEFAULT_MAX_BATCH_MS` of the
    #: model's device (what `explainserve serve` uses unless configured); 0: no time bound, the
    #: default here, so that a worker built in code (tests, embedding) cuts batches the same way
    #: on every machine.
    #: Isolated requests (`RequestTag.isolated`) are cut by tokens only.
    max_batch_ms: float | None = 0.0
    #: An explicit cap on a batch's tokens (padding counted), below the token budgets, for people
    #: who know better than the measurement; 0: none (the calibrated optimum decides).
    batch_tokens: int = option(
        0,
        "tokens per batch, padding counted, instead of the measured throughput optimum "
        "(0: measured; never above the token budgets)",
        minimum=0,
    )
    #: Cut batches at the size that runs the most tokens per second, measured: a short
    #: calibration at warm-up (`Worker.calibrate`, over a few batch shapes) and every batch's
    #: timing after it (`scheduling.cost.ThroughputModel`). Off here so that a worker built in
    #: code (tests, embedding) cuts batches the same way on every machine; `explainserve serve`
    #: turns it on (`--no-calibrate` to leave it off).
    calibrate: bool = False
    #: The time the warm-up calibration may take at most, per model (seconds).
    calibration_seconds: float = option(
        10.0, "the warm-up calibration of batch sizes, seconds per model at most", minimum=0
    )
    #: Rows x padded length of one gradient batch (activations are kept for backward).
    gradient_token_budget: int = option(4096, "tokens per gradient batch")
    #: Hard cap on rows per batch.
    max_batch_rows: int = 512
    #: Activation jobs are single inputs of every length, and a batch mixing short and long ones
    #: computes much padding. Once an activation batch holds `activation_fill_tokens` real tokens,
    #: it only takes jobs that keep its padded / real tokens at most `activation_max_padding`:
    #: with many inputs waiting, batches are of (nearly) equal lengths; a small request still
    #: goes in one batch.
    activation_max_padding: float = 1.02
    activation_fill_tokens: int = 256
    #: How long the oldest queued job may wait for others to share its batch (seconds), unless
    #: a full batch is already queued. Under load the queue is never empty and nothing waits.
    batch_wait_seconds: float = option(
        0.002,
        "how long a queued job may wait for others to share its batch, milliseconds",
        key="batch_wait_ms",
        scale=1000.0,
    )
    #: Rows (sequences) waiting at most; a submission that would go beyond is refused with
    #: ResourceExhausted at once.
    max_queued_rows: int = option(200_000, "sequences waiting per model before RESOURCE_EXHAUSTED")
    #: After an out-of-memory error the batch size is capped at what worked; the cap grows by
    #: an eighth after this many batches in a row that ran at the cap.
    oom_grow_after: int = 32
    #: Causal LMs: positions x vocabulary of the logits one batch may hold (the vocab-sized
    #: logits of the continuation's positions, reduced to the target scores in the batch).
    logits_budget: int = option(
        1 << 26,
        "causal LMs: positions x vocabulary of the logits one forward batch may hold",
    )
    #: Do less than the naive work where the result is the same: causal LMs run each perturbed
    #: row only from its first changed position, on the cached keys and values of the
    #: unperturbed sequence (`scheduling.prefix`), and the explain layer runs identical rows and
    #: identical inputs of a request once. Off only to measure what it saves (bench/).
    reuse: bool = option(
        True,
        "causal LMs: run perturbed rows from their first change on the cached prefix; run "
        "identical rows and inputs once (--no-reuse only to measure what it saves)",
    )
    #: Causal LMs with `reuse`: every forward batch that can run on a cached prefix does,
    #: whatever it saves, instead of taking the path the measured costs choose
    #: (`prefix.PassCosts`; isolated requests: `prefix.MIN_SAVING`). Not a setting: on only
    #: where the prefix path itself is what is checked or profiled (its scores against full
    #: recomputation, bench/reuse_profile.py).
    always_prefix: bool = False
    #: Encoder classifiers (BERT, RoBERTa, ELECTRA, ...): run the final layer only at the
    #: position their head reads, the first (`models.first_position`; the logits equal the full
    #: layer's up to float rounding, so results differ from a run without it in the last bits).
    #: Off only to measure what it saves (bench/).
    read_position_only: bool = option(
        True,
        "encoder classifiers: run the final layer at the position the head reads only "
        "(--no-read-position-only only to measure what it saves)",
    )
