"""Sizes and limits of GetActivations and PredictFromActivations (the fields made with `option`
are TOML keys and flags, see `explainserve.settings`). No torch here: the configuration
imports it."""

from __future__ import annotations

from dataclasses import dataclass

from explainserve.settings import option


@dataclass(frozen=True)
class ActivationLimits:
    """Sizes and limits of GetActivations and PredictFromActivations requests."""

    #: Inputs of one GetActivations request.
    max_inputs: int = option(
        100_000,
        "GetActivations: inputs per request at most",
        key="max_activation_inputs",
        minimum=1,
    )
    #: Inputs per chunk at most.
    chunk_inputs: int = option(
        256,
        "GetActivations: inputs per streamed chunk at most",
        key="activation_chunk_inputs",
        minimum=1,
    )
    #: Tensor bytes per chunk at most (estimated as float32 before aggregation); an input bigger
    #: than this gets a chunk of its own. Well under the 4 MiB that gRPC clients accept by
    #: default.
    chunk_bytes: int = option(
        1024 * 1024,
        "GetActivations: tensor bytes per streamed chunk at most",
        key="activation_chunk_bytes",
        unit="bytes",
        minimum=1,
    )
    #: Chunks computed ahead of the one the consumer waits for. A request holds at most
    #: `prefetch_chunks + 1` chunks of results (plus the one chunk being written). The worker
    #: packs the inputs of every submitted chunk by length: all-token rows of 1000 sentences on the
    #: default model ran 5.7% padding tokens at 4, 3.4% at 12, for 8 MiB more held.
    prefetch_chunks: int = option(
        12,
        "GetActivations: chunks computed ahead of the one being sent",
        key="activation_prefetch_chunks",
        minimum=0,
    )
    #: Bytes of activations one input may produce (they travel in one message).
    max_input_bytes: int = 32 * 1024 * 1024
    #: Rows of one PredictFromActivations request.
    max_head_rows: int = option(
        65_536, "PredictFromActivations: activation rows per request at most", minimum=1
    )
    #: Valid split points named by the "unknown split point" message (GetModel lists them all).
    listed_split_points: int = 20
    #: Texts per batched tokenizer call while validating a request (bounds its transient memory).
    tokenize_batch: int = 1024
