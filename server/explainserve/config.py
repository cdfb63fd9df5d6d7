"""Server configuration: command-line flags, optionally a TOML file, and the default model.

`ServeConfig` is composed of the option dataclasses of the layers it configures
(`ServerOptions`, `WorkerOptions`, `Limits`, `ActivationLimits`); their `option` fields and
ServeConfig's own are the single source of every setting: the TOML keys, `explainserve serve`'s
flags, help texts, choices, defaults and checks are derived from them (`option_specs`). This
module imports no torch (nor do those dataclasses' modules), so `explainserve --help` is
instant; the serving layers are imported when a config is turned into their settings.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explainserve.activations.limits import ActivationLimits
from explainserve.concepts.limits import ConceptLimits
from explainserve.errors import InvalidArgument
from explainserve.explain.limits import Limits
from explainserve.grpc.options import ServerOptions
from explainserve.models.options import ReplacementFallback
from explainserve.scheduling.options import WorkerOptions
from explainserve.settings import OptionSpec, option, specs_of

if TYPE_CHECKING:
    from explainserve.concepts.sets import ConceptSet
    from explainserve.models.loading import ModelConfig

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


@dataclass
class ServeConfig:
    """Everything `explainserve serve` needs: the option dataclasses of the layers it configures
    (their `option` fields are the settings) and the settings of model loading and logging."""

    server: ServerOptions = field(default_factory=ServerOptions)
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    limits: Limits = field(default_factory=Limits)
    activations: ActivationLimits = field(default_factory=ActivationLimits)
    concept_limits: ConceptLimits = field(default_factory=ConceptLimits)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    # The served default of `WorkerOptions.max_batch_ms` differs from the library's (no time
    # bound, so workers built in code cut batches the same way on every machine): a setting of
    # its own here, passed into the worker options of every model.
    max_batch_ms: float | None = option(
        None,
        "the time bound of batches, from the measured cost of past batches, milliseconds: a "
        "request arriving behind others waits at most about twice it (batches of requests "
        "under way take up to 1.5x it; none: 100 on a CPU, 30 on an accelerator; 0: no bound)",
        minimum=0,
    )
    # Likewise `WorkerOptions.calibrate`: off in the library (deterministic batches), on here.
    calibrate: bool = option(
        True,
        "cut batches at the size measured to run the most tokens per second (a calibration of "
        "a few seconds at warm-up, then every batch's timing)",
    )
    dtype: str = option(
        "float32",
        "weights' floating-point type (reduced precision: CUDA)",
        choices=("float32", "bfloat16", "float16"),
    )
    replacement_fallback: ReplacementFallback = option(
        "unk", "replacement when the tokenizer has no mask token"
    )
    auth_token_file: Path | None = option(
        None, "file of accepted bearer tokens, one per line (none: no authentication)"
    )
    log_format: str = option("text", "log lines", choices=("text", "json"))
    log_level: str = option("INFO", "lowest level logged", choices=LOG_LEVELS)
    models: dict[str, Path] = option(
        {},
        "name -> local directory (or builtin:tiny-gpt2); none = the embedded default model",
        flag=False,
    )
    tasks: dict[str, str] = option(
        {},
        "name -> task (sequence-classification or causal-lm); unlisted models: detected from "
        "their config's architectures",
        flag=False,
    )
    concepts: dict[str, Path] = option(
        {},
        "name -> concept set file (docs/concepts.md); each is served for the model its file "
        "names, checked against it at start",
        flag=False,
    )

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ServeConfig:
        """A configuration from settings by key (the TOML file's, then the flags'): each value
        checked against its option (type, choices, lower bound), the rest left at defaults."""
        specs = {spec.name: spec for spec in option_specs()}
        parts: dict[tuple[str, ...], dict[str, Any]] = {}
        for key, value in values.items():
            spec = specs[key]
            *where, name = spec.path
            parts.setdefault(tuple(where), {})[name] = spec.to_field(check_value(spec, value))
        config = cls(**parts.pop((), {}))
        for (part, *inner), changes in parts.items():
            setattr(config, part, _replaced(getattr(config, part), inner, changes))
        if not _DEVICE.fullmatch(config.device):
            raise ConfigError(
                "device", f"device must be auto, cpu, cuda, cuda:N or mps; got {config.device!r}"
            )
        return config

    def model_configs(self) -> list[ModelConfig]:
        """One ModelConfig per served model (the default one when none is configured)."""
        from explainserve.models.loading import ModelConfig

        models = dict(self.models)
        if not models:
            from explainserve.models.default_model import default_model_dir

            models = {DEFAULT_MODEL_NAME: default_model_dir()}
        self.check_tasks(models)
        return [
            ModelConfig(
                name=name,
                path=path,
                device=self.device,
                dtype=self.dtype,
                replacement_fallback=self.replacement_fallback,
                worker=replace(
                    self.worker, max_batch_ms=self.max_batch_ms, calibrate=self.calibrate
                ),
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

    def read_concept_sets(self) -> dict[str, ConceptSet]:
        """Every configured concept set file, read and checked on its own (format, shapes,
        finite values; the checks against its model come once the model is loaded): a mistake
        is one ConfigError naming the file and what is wrong."""
        from explainserve.concepts.sets import ConceptSetError, load

        out = {}
        for name, path in self.concepts.items():
            try:
                out[name] = load(path)
            except ConceptSetError as e:
                raise ConfigError(f"concepts.{name}", f"concept set '{name}': {e}") from None
        return out

    def tokens(self) -> tuple[str, ...]:
        """Every accepted bearer token: the configured ones and the token file's lines."""
        tokens = list(self.server.auth_tokens)
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


def _replaced(options: Any, path: list[str], changes: dict[str, Any]) -> Any:
    """Frozen option dataclass `options` with `changes` made to its part at `path`."""
    if not path:
        return replace(options, **changes)
    inner = _replaced(getattr(options, path[0]), path[1:], changes)
    return replace(options, **{path[0]: inner})


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


def option_specs() -> list[OptionSpec]:
    """Every setting of ServeConfig (its own and its option dataclasses'), in declaration
    order."""
    return specs_of(ServeConfig)


def check_value(spec: OptionSpec, value: Any) -> Any:
    """`value` of setting `spec` checked (type, choices, lower bound; an int where a float is
    wanted is taken), each mistake a one-line ConfigError."""
    if value is None and spec.default is None:
        return value
    kind = spec.kind
    if kind is tuple:
        kind = list  # a TOML array
    ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok:
        raise ConfigError(
            spec.name, f"{spec.name} must be {_KIND_WORDS.get(kind, kind.__name__)}, got {value!r}"
        )
    if kind is float:
        value = float(value)
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(
            spec.name, f"{spec.name} must be one of {', '.join(spec.choices)}; got {value!r}"
        )
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(spec.name, f"{spec.name} must be at least {spec.minimum:g}, got {value}")
    return value


_KIND_WORDS = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    Path: "a path (string)",
    list: "a list",
    dict: "a table",
}


def parse_concepts_flag(value: str) -> tuple[str, Path]:
    """`NAME=PATH` -> (name, path) of a concept set file."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ConfigError("concepts", f"--concepts expects NAME=PATH, got '{value}'")
    return name, Path(path).expanduser()


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
    directories, `[tasks]` names to tasks, `[concepts]` names to concept set files (relative
    to the TOML file). Mistakes are one-line ConfigErrors."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read the config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path} is not valid TOML: {e}") from None
    known = [spec.name for spec in option_specs()]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                key, f"unknown key '{key}' in {path}: {hint}valid keys: {', '.join(known)}"
            )
    for table in ("models", "tasks", "concepts"):
        if table in data and not isinstance(data[table], dict):
            raise ConfigError(table, f"{table} must be a table ([{table}] name = ...)")
    if "models" in data:
        data["models"] = {
            k: Path(v) if str(v).startswith(BUILTIN_PREFIX) else Path(v).expanduser()
            for k, v in data["models"].items()
        }
    if "concepts" in data:
        # Concept set files, like the certificates, are relative to the TOML file.
        data["concepts"] = {
            k: (path.parent / Path(str(v)).expanduser()).resolve()
            for k, v in data["concepts"].items()
        }
    for key in ("auth_token_file", "tls_cert", "tls_key", "tls_client_ca"):
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(key, f"{key} must be a path (string), got {data[key]!r}")
            data[key] = (path.parent / Path(data[key]).expanduser()).resolve()
    return data
