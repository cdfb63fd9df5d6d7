"""Server configuration: command-line flags, optionally a TOML file, and the default model.

`ServeConfig`'s fields are the single source of every option: the TOML keys are their names,
`explainserve serve`'s flags, help texts, choices and defaults are derived from them
(`option_specs`). This module imports no torch, so `explainserve --help` is instant; the serving
layers are imported when a config is turned into their settings.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explainserve.errors import InvalidArgument

if TYPE_CHECKING:
    from explainserve.activations.service import ActivationLimits
    from explainserve.explain.service import Limits
    from explainserve.models.registry import ModelConfig, ReplacementFallback

DEFAULT_MODEL_NAME = "minilm-sentiment"
#: `--model NAME=builtin:KEY` serves a model built offline by this package.
BUILTIN_PREFIX = "builtin:"
TASK_CHOICES = ("sequence-classification", "causal-lm")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class ConfigError(InvalidArgument):
    """A configuration mistake: names the key (`field`) and what it accepts, in one line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message, field=key)
        self.key = key


def _opt(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    unit: str = "",
    flag: bool = True,
) -> Any:
    """A ServeConfig field with what its flag shows: help text, choices, the default's unit
    (`"bytes"` prints 64 MiB instead of 67108864). `flag=False`: TOML only."""
    meta = {"help": help, "choices": choices, "unit": unit, "flag": flag}
    if isinstance(default, list | dict):
        factory = type(default)
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ServeConfig:
    """Everything `explainserve serve` needs (each field: a TOML key and a `--flag`)."""

    host: str = _opt("127.0.0.1", "address to bind")
    port: int = _opt(50051, "port to bind, 0 = any free port")
    workers: int = _opt(8, "gRPC handler threads")
    max_message_bytes: int = _opt(
        64 * 1024 * 1024,
        "largest request or response (clients must raise theirs to match)",
        unit="bytes",
    )
    grace_seconds: float = _opt(30.0, "drain time on SIGTERM, seconds")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = _opt(
        "float32",
        "weights' floating-point type (reduced precision: CUDA)",
        choices=("float32", "bfloat16", "float16"),
    )
    replacement_fallback: ReplacementFallback = _opt(
        "unk",
        "replacement when the tokenizer has no mask token",
        choices=("unk", "pad", "eos", "zero_embedding"),
    )
    token_budget: int = _opt(8192, "tokens (padding counted) per forward batch")
    gradient_token_budget: int = _opt(4096, "tokens per gradient batch")
    batch_wait_ms: float = _opt(
        2.0, "how long a queued job may wait for others to share its batch, milliseconds"
    )
    max_batch_ms: float | None = _opt(
        None,
        "the time one batch may take at most, from the measured cost of past batches, "
        "milliseconds (none: 100 on a CPU, 30 on an accelerator; 0: no time bound)",
    )
    max_queued_rows: int = _opt(200_000, "sequences waiting per model before RESOURCE_EXHAUSTED")
    max_inputs: int = _opt(256, "Explain: inputs per request at most")
    max_rows_per_input: int = _opt(
        50_000, "Explain: sequences one input may send through the model (perturbations, steps)"
    )
    max_targets: int = _opt(64, "Explain: targets per input at most")
    max_tokens_per_input: int = _opt(
        0,
        "tokens per input at most, 0 = each model's maximum; longer inputs are rejected, or cut "
        "when the request sets truncate",
    )
    max_activation_inputs: int = _opt(100_000, "GetActivations: inputs per request at most")
    max_new_tokens: int = _opt(256, "causal LMs: tokens generated per input at most")
    max_continuation_tokens: int = _opt(256, "causal LMs: tokens of a given continuation at most")
    activation_chunk_inputs: int = _opt(256, "GetActivations: inputs per streamed chunk at most")
    activation_chunk_bytes: int = _opt(
        1024 * 1024, "GetActivations: tensor bytes per streamed chunk at most", unit="bytes"
    )
    # Memory: this + 1 chunks; the worker packs the inputs of all these chunks by length, so
    # more means less padding.
    activation_prefetch_chunks: int = _opt(
        12, "GetActivations: chunks computed ahead of the one being sent"
    )
    auth_tokens: list[str] = _opt(
        [], "bearer tokens accepted; none (and no file) = no authentication", flag=False
    )
    auth_token_file: Path | None = _opt(
        None, "file of accepted bearer tokens, one per line (none: no authentication)"
    )
    tls_cert: Path | None = _opt(None, "PEM certificate chain: TLS with --tls-key")
    tls_key: Path | None = _opt(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = _opt(None, "PEM CA of the client certificates: mutual TLS")
    keepalive_time_s: float = _opt(0.0, "ping idle clients every this many seconds (0: gRPC's)")
    keepalive_timeout_s: float = _opt(
        0.0, "close a connection whose ping gets no answer in this time (0: gRPC's)"
    )
    min_client_ping_interval_s: float = _opt(
        0.0, "clients may ping this often at most (0: gRPC's, 5 minutes)"
    )
    keepalive_permit_without_calls: bool = _opt(
        False, "let clients ping connections without calls in flight"
    )
    max_connection_idle_s: float = _opt(0.0, "close connections idle this long (0: never)")
    max_connection_age_s: float = _opt(
        0.0, "close connections this old, clients reconnect (0: never)"
    )
    max_connection_age_grace_s: float = _opt(
        0.0, "time in-flight calls get on a connection closed for its age (0: gRPC's)"
    )
    metrics_port: int | None = _opt(None, "Prometheus metrics port (none: off; 0 = any free)")
    metrics_host: str = _opt("127.0.0.1", "address of the metrics port")
    log_format: str = _opt("text", "log lines", choices=("text", "json"))
    log_level: str = _opt("INFO", "lowest level logged", choices=LOG_LEVELS)
    logits_budget: int = _opt(
        1 << 26, "causal LMs: positions x vocabulary of the logits one forward batch may hold"
    )
    # Results are the same either way (to float rounding); off only to measure what it saves.
    reuse: bool = _opt(
        True,
        "causal LMs: run perturbed rows from their first change on the cached prefix; run "
        "identical rows and inputs once (--no-reuse only to measure what it saves)",
    )
    models: dict[str, Path] = _opt(
        {},
        "name -> local directory (or builtin:tiny-gpt2); none = the embedded default model",
        flag=False,
    )
    tasks: dict[str, str] = _opt(
        {},
        "name -> task (sequence-classification or causal-lm); unlisted models: detected from "
        "their config's architectures",
        flag=False,
    )

    def __post_init__(self) -> None:
        check_values(self)

    def model_configs(self) -> list[ModelConfig]:
        """One ModelConfig per served model (the default one when none is configured)."""
        from explainserve.models.registry import ModelConfig
        from explainserve.scheduling.worker import WorkerOptions

        models = dict(self.models)
        if not models:
            from explainserve.models.default_model import default_model_dir

            models = {DEFAULT_MODEL_NAME: default_model_dir()}
        worker = WorkerOptions(
            token_budget=self.token_budget,
            gradient_token_budget=self.gradient_token_budget,
            batch_wait_seconds=self.batch_wait_ms / 1000.0,
            max_batch_ms=self.max_batch_ms,
            max_queued_rows=self.max_queued_rows,
            logits_budget=self.logits_budget,
            reuse=self.reuse,
        )
        self.check_tasks(models)
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
            for name, path in _resolve_builtins(models).items()
        ]

    def check_tasks(self, models: dict[str, Path] | None = None) -> None:
        """Every `[tasks]` entry names a served model (`models`, default the configured ones
        or the default model) and a known task."""
        served = models if models is not None else (self.models or {DEFAULT_MODEL_NAME: Path()})
        for name, task in self.tasks.items():
            if name not in served:
                raise ConfigError(
                    f"tasks.{name}",
                    f"[tasks] names '{name}', which is not a served model "
                    f"(served: {', '.join(sorted(served))})",
                )
            if task not in TASK_CHOICES:
                raise ConfigError(
                    f"tasks.{name}",
                    f"unknown task '{task}' for model '{name}': sequence-classification or "
                    "causal-lm",
                )

    def check_model_paths(self) -> None:
        """Every configured model directory exists and holds a Hugging Face config (built-in
        names are known); raises a one-line ConfigError otherwise."""
        from explainserve.models.builtin import BUILTIN_MODELS

        for name, path in self.models.items():
            text = str(path)
            if text.startswith(BUILTIN_PREFIX):
                key = text.removeprefix(BUILTIN_PREFIX)
                if key not in BUILTIN_MODELS:
                    raise ConfigError(
                        f"models.{name}",
                        f"unknown built-in model '{key}' for model '{name}'; built-in models: "
                        f"{', '.join(sorted(BUILTIN_MODELS))}",
                    )
            elif not path.is_dir():
                raise ConfigError(
                    f"models.{name}",
                    f"model '{name}': directory {path} does not exist (a local directory "
                    f"saved with save_pretrained, or {BUILTIN_PREFIX}"
                    f"{'|'.join(sorted(BUILTIN_MODELS))}; models are never downloaded)",
                )
            elif not (path / "config.json").is_file():
                raise ConfigError(
                    f"models.{name}",
                    f"model '{name}': {path} has no config.json (save the model with "
                    "save_pretrained)",
                )

    def tokens(self) -> tuple[str, ...]:
        """Every accepted bearer token: the configured ones and the token file's lines."""
        tokens = list(self.auth_tokens)
        if self.auth_token_file is not None:
            try:
                lines = self.auth_token_file.read_text().splitlines()
            except OSError as e:
                raise ConfigError(
                    "auth_token_file", f"auth_token_file: cannot read {e.filename}: {e.strerror}"
                ) from None
            tokens += [line.strip() for line in lines if line.strip()]
        if any(not t or any(c.isspace() for c in t) for t in tokens):
            raise ConfigError("auth_tokens", "bearer tokens must be non-empty and without spaces")
        return tuple(tokens)

    def explain_limits(self) -> Limits:
        """Explain's limits, as configured."""
        from explainserve.explain.causal import CausalLimits
        from explainserve.explain.service import Limits

        for name in (
            "max_inputs",
            "max_rows_per_input",
            "max_targets",
            "max_activation_inputs",
            "max_new_tokens",
            "max_continuation_tokens",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_tokens_per_input < 0:
            raise ConfigError(
                "max_tokens_per_input",
                f"max_tokens_per_input must be at least 0, got {self.max_tokens_per_input}",
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
        from explainserve.activations.service import ActivationLimits

        for name in ("activation_chunk_inputs", "activation_chunk_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{name} must be at least 1, got {getattr(self, name)}")
        if self.activation_prefetch_chunks < 0:
            raise ConfigError(
                "activation_prefetch_chunks",
                f"activation_prefetch_chunks must be at least 0, got "
                f"{self.activation_prefetch_chunks}",
            )
        return ActivationLimits(
            max_inputs=self.max_activation_inputs,
            chunk_inputs=self.activation_chunk_inputs,
            chunk_bytes=self.activation_chunk_bytes,
            prefetch_chunks=self.activation_prefetch_chunks,
        )


def _resolve_builtins(models: dict[str, Path]) -> dict[str, Path]:
    """`builtin:KEY` paths replaced by the built model's directory (built on first use)."""
    out = {}
    for name, path in models.items():
        text = str(path)
        if text.startswith(BUILTIN_PREFIX):
            from explainserve.models.builtin import builtin_model_dir

            path = builtin_model_dir(text.removeprefix(BUILTIN_PREFIX))
        out[name] = path
    return out


@dataclass(frozen=True)
class OptionSpec:
    """One ServeConfig field as a flag shows it."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None
    unit: str
    flag: bool

    @property
    def flag_name(self) -> str:
        """`--max-inputs` for `max_inputs`."""
        return "--" + self.name.replace("_", "-")

    def default_text(self) -> str:
        """The default as the help shows it."""
        d = self.default
        if d is None or d == [] or d == {}:
            return "none"
        if isinstance(d, bool):
            return "on" if d else "off"
        if self.unit == "bytes" and isinstance(d, int):
            for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
                if d >= size and d % size == 0:
                    return f"{d // size} {name}"
        if isinstance(d, float) and d.is_integer():
            return str(int(d))
        return str(d)


_KINDS = {"str": str, "int": int, "float": float, "bool": bool}


def _kind(annotation: str) -> type:
    """The scalar type of a field's (string) annotation: `int | None` -> int."""
    first = annotation.split("|")[0].strip()
    if first.startswith(("list", "dict")):
        return list if first.startswith("list") else dict
    return _KINDS.get(first, Path if first == "Path" else str)


def option_specs() -> list[OptionSpec]:
    """Every ServeConfig field with its type, default and help, in declaration order."""
    out = []
    for f in fields(ServeConfig):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
        out.append(
            OptionSpec(
                name=f.name,
                kind=_kind(str(f.type)),
                default=default,
                help=f.metadata["help"],
                choices=f.metadata["choices"],
                unit=f.metadata["unit"],
                flag=f.metadata["flag"],
            )
        )
    return out


def check_values(config: ServeConfig) -> None:
    """Types, choices and the device's form, each mistake a one-line ConfigError."""
    for spec in option_specs():
        value = getattr(config, spec.name)
        if value is None and spec.default is None:
            continue
        kind = spec.kind
        ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool)
        )
        if not ok:
            raise ConfigError(
                spec.name,
                f"{spec.name} must be {_KIND_WORDS.get(kind, kind.__name__)}, got {value!r}",
            )
        if kind is float:
            setattr(config, spec.name, float(value))
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(
                spec.name,
                f"{spec.name} must be one of {', '.join(spec.choices)}; got {value!r}",
            )
    if not _DEVICE.fullmatch(config.device):
        raise ConfigError(
            "device", f"device must be auto, cpu, cuda, cuda:N or mps; got {config.device!r}"
        )


_KIND_WORDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    Path: "a path (string)",
    list: "a list",
    dict: "a table",
}


def parse_model_flag(value: str) -> tuple[str, Path]:
    """`NAME=PATH` -> (name, path); PATH may be `builtin:KEY`."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError("models", f"--model expects NAME=PATH, got '{value}'")
    if path.startswith(BUILTIN_PREFIX):
        return name, Path(path)
    return name, Path(path).expanduser()


def load_toml(path: Path) -> dict[str, Any]:
    """Reads a TOML config: top-level keys are ServeConfig fields; `[models]` maps names to
    directories, `[tasks]` names to tasks. Mistakes are one-line ConfigErrors."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read the config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    known = [f.name for f in fields(ServeConfig)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                key, f"unknown key '{key}' in {path}: {hint}valid keys: {', '.join(known)}"
            )
    for table in ("models", "tasks"):
        if table in data and not isinstance(data[table], dict):
            raise ConfigError(table, f"{table} must be a table ([{table}] name = ...)")
    if "models" in data:
        data["models"] = {
            k: Path(v) if str(v).startswith(BUILTIN_PREFIX) else Path(v).expanduser()
            for k, v in data["models"].items()
        }
    for key in ("auth_token_file", "tls_cert", "tls_key", "tls_client_ca"):
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(key, f"{key} must be a path (string), got {data[key]!r}")
            data[key] = (path.parent / Path(data[key]).expanduser()).resolve()
    return data
