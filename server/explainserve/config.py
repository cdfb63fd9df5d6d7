"""Server configuration: command-line flags, optionally a TOML file, and the default model."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explainserve.activations.service import ActivationLimits
from explainserve.errors import InvalidArgument
from explainserve.models.registry import TASKS, ModelConfig, ReplacementFallback
from explainserve.scheduling.worker import WorkerOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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
    #: GetActivations: inputs per streamed chunk at most.
    activation_chunk_inputs: int = 256
    #: GetActivations: tensor bytes per streamed chunk at most.
    activation_chunk_bytes: int = 1024 * 1024
    #: GetActivations: chunks computed ahead of the one being sent (memory: this + 1 chunks).
    activation_prefetch_chunks: int = 4
    #: Causal LMs: positions x vocabulary of the logits one forward batch may hold.
    logits_budget: int = 1 << 26
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
            logits_budget=self.logits_budget,
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
    return data
