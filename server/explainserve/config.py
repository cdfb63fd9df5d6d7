"""Server configuration: command-line flags, optionally a TOML file, and the default model."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explainserve.activations.service import ActivationLimits
from explainserve.errors import InvalidArgument
from explainserve.explain.causal import CausalLimits
from explainserve.explain.service import Limits
from explainserve.models.registry import TASKS, ModelConfig, ReplacementFallback
from explainserve.scheduling.worker import WorkerOptions

DEFAULT_MODEL_NAME = "minilm-sentiment"


@dataclass
class ServeConfig:
    """Everything `explainserve serve` needs."""

    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 8
    max_message_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 30.0
    device: str = "auto"
    dtype: str = "float32"
    replacement_fallback: ReplacementFallback = "unk"
    token_budget: int = 8192
    gradient_token_budget: int = 4096
    #: How long a queued job may wait for others to share its batch (milliseconds).
    batch_wait_ms: float = 2.0
    #: Sequences waiting per model at most; beyond, requests get RESOURCE_EXHAUSTED at once.
    max_queued_rows: int = 200_000
    #: Explain: inputs per request at most.
    max_inputs: int = 256
    #: Explain: sequences one input may send through the model (perturbations, steps, samples).
    max_rows_per_input: int = 50_000
    #: Explain: targets per input at most.
    max_targets: int = 64
    #: Tokens per input at most (0 = each model's maximum); longer inputs are rejected, or cut
    #: when the request sets `truncate`.
    max_tokens_per_input: int = 0
    #: GetActivations: inputs per request at most.
    max_activation_inputs: int = 100_000
    #: Causal LMs: tokens the server may generate per input, and tokens of a given continuation.
    max_new_tokens: int = 256
    max_continuation_tokens: int = 256
    #: GetActivations: inputs per streamed chunk at most.
    activation_chunk_inputs: int = 256
    #: GetActivations: tensor bytes per streamed chunk at most.
    activation_chunk_bytes: int = 1024 * 1024
    #: GetActivations: chunks computed ahead of the one being sent (memory: this + 1 chunks;
    #: the worker packs the inputs of all these chunks by length, so more means less padding).
    activation_prefetch_chunks: int = 12
    #: Bearer tokens accepted; none (and no file) = no authentication. Health stays open.
    auth_tokens: list[str] = field(default_factory=list)
    #: A file of bearer tokens, one per line (kept out of the command line and the TOML).
    auth_token_file: Path | None = None
    #: PEM certificate chain and key of the server: TLS when both are set.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM CA bundle that signs the clients' certificates: mutual TLS.
    tls_client_ca: Path | None = None
    #: Keepalive and connection management (seconds; 0 = gRPC's default / never).
    keepalive_time_s: float = 0.0
    keepalive_timeout_s: float = 0.0
    min_client_ping_interval_s: float = 0.0
    keepalive_permit_without_calls: bool = False
    max_connection_idle_s: float = 0.0
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 0.0
    #: Prometheus metrics port (None = off; 0 = any free port) and address.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: Log lines as "text" or "json" (one object per line, with the request id).
    log_format: str = "text"
    #: Causal LMs: positions x vocabulary of the logits one forward batch may hold.
    logits_budget: int = 1 << 26
    #: Causal LMs: perturbed rows run from their first change on the unperturbed input's cached
    #: keys and values; every model: identical rows and inputs of a request run once. Results
    #: are the same either way (to float rounding); off only to measure what it saves.
    reuse: bool = True
    #: name -> local directory; empty = the embedded default model.
    models: dict[str, Path] = field(default_factory=dict)
    #: name -> task ("sequence-classification" or "causal-lm"); unlisted models: detected from
    #: their config's architectures.
    tasks: dict[str, str] = field(default_factory=dict)

    def model_configs(self) -> list[ModelConfig]:
        """One ModelConfig per served model (the default one when none is configured)."""
        models = dict(self.models)
        if not models:
            from explainserve.models.default_model import default_model_dir

            models = {DEFAULT_MODEL_NAME: default_model_dir()}
        worker = WorkerOptions(
            token_budget=self.token_budget,
            gradient_token_budget=self.gradient_token_budget,
            batch_wait_seconds=self.batch_wait_ms / 1000.0,
            max_queued_rows=self.max_queued_rows,
            logits_budget=self.logits_budget,
            reuse=self.reuse,
        )
        for name, task in self.tasks.items():
            if name not in models:
                raise InvalidArgument(f"[tasks] names '{name}', which is not a served model")
            if task not in TASKS or task == "auto":
                raise InvalidArgument(
                    f"unknown task '{task}' for model '{name}': sequence-classification or "
                    "causal-lm"
                )
        return [
            ModelConfig(
                name=name,
                path=path,
                device=self.device,
                dtype=self.dtype,
                replacement_fallback=self.replacement_fallback,
                worker=worker,
                task=self.tasks.get(name, "auto"),  # type: ignore[arg-type]
            )
            for name, path in models.items()
        ]

    def tokens(self) -> tuple[str, ...]:
        """Every accepted bearer token: the configured ones and the token file's lines."""
        tokens = list(self.auth_tokens)
        if self.auth_token_file is not None:
            lines = self.auth_token_file.read_text().splitlines()
            tokens += [line.strip() for line in lines if line.strip()]
        if any(not t or any(c.isspace() for c in t) for t in tokens):
            raise InvalidArgument("bearer tokens must be non-empty and without spaces")
        return tuple(tokens)

    def explain_limits(self) -> Limits:
        """Explain's limits, as configured."""
        for name in (
            "max_inputs",
            "max_rows_per_input",
            "max_targets",
            "max_activation_inputs",
            "max_new_tokens",
            "max_continuation_tokens",
        ):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_tokens_per_input < 0:
            raise InvalidArgument(
                f"max_tokens_per_input must be at least 0, got {self.max_tokens_per_input}"
            )
        return Limits(
            max_inputs=self.max_inputs,
            max_rows_per_input=self.max_rows_per_input,
            max_targets=self.max_targets,
            causal=CausalLimits(
                max_new_tokens=self.max_new_tokens,
                max_continuation_tokens=self.max_continuation_tokens,
            ),
        )

    def activation_limits(self) -> ActivationLimits:
        """GetActivations' chunking, as configured."""
        for name in ("activation_chunk_inputs", "activation_chunk_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.activation_prefetch_chunks < 0:
            raise InvalidArgument(
                f"activation_prefetch_chunks must be at least 0, got "
                f"{self.activation_prefetch_chunks}"
            )
        return ActivationLimits(
            max_inputs=self.max_activation_inputs,
            chunk_inputs=self.activation_chunk_inputs,
            chunk_bytes=self.activation_chunk_bytes,
            prefetch_chunks=self.activation_prefetch_chunks,
        )


def parse_model_flag(value: str) -> tuple[str, Path]:
    """`NAME=PATH` -> (name, path)."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise InvalidArgument(f"--model expects NAME=PATH, got '{value}'")
    return name, Path(path).expanduser()


def load_toml(path: Path) -> dict[str, Any]:
    """Reads a TOML config: top-level keys are ServeConfig fields; `[models]` maps names to
    directories."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    known = set(ServeConfig.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise InvalidArgument(f"unknown keys in {path}: {', '.join(sorted(unknown))}")
    if "models" in data:
        data["models"] = {k: Path(v).expanduser() for k, v in data["models"].items()}
    for key in ("auth_token_file", "tls_cert", "tls_key", "tls_client_ca"):
        if key in data:
            data[key] = (path.parent / Path(data[key]).expanduser()).resolve()
    return data
