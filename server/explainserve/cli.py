"""Command line: `explainserve serve ...` (the server) and `explainserve explain ...` (a client
that shows explanations in the terminal, as JSON or as an HTML page).

Only the standard library and the configuration are imported up front: `--help`, `--version`
and `explain` never import torch; `serve` imports the serving layers once its options are
checked. Every option or configuration mistake is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from explainserve import __version__
from explainserve.config import (
    LOG_LEVELS,
    ConfigError,
    ServeConfig,
    load_toml,
    option_specs,
    parse_concepts_flag,
    parse_model_flag,
)
from explainserve.errors import InvalidArgument
from explainserve.settings import OptionSpec

if TYPE_CHECKING:
    from explainserve.explain.service import Explainer

#: Exit status of a usage or configuration mistake (argparse's too).
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (`explainserve serve: error: ...`), not the whole
    usage of a command with forty options."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_option(parser: argparse.ArgumentParser, spec: OptionSpec) -> None:
    """One ServeConfig field as a flag; its help text and default come from the field."""
    help_text = f"{spec.help} (default {spec.default_text()})"
    if spec.kind is bool:
        # An option that is on by default needs its --no- form to be turned off.
        action = argparse.BooleanOptionalAction if spec.default is True else "store_true"
        parser.add_argument(spec.flag_name, action=action, default=None, help=help_text)
        return
    kwargs: dict[str, Any] = {"help": help_text, "dest": spec.name}
    if spec.choices is not None:
        kwargs["choices"] = spec.choices
        kwargs["metavar"] = "{" + ",".join(spec.choices) + "}"
        if spec.name == "log_level":
            kwargs["type"] = str.upper
    else:
        kwargs["type"] = spec.kind
    parser.add_argument(spec.flag_name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `explainserve` command."""
    from explainserve.discovery.cli import add_activations_arguments, add_concepts_arguments
    from explainserve.viewer.cli import add_explain_arguments

    parser = _Parser(prog="explainserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"explainserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,explain,concepts}")
    serve = sub.add_parser(
        "serve",
        help="start the gRPC server",
        usage="%(prog)s [--config FILE] [--model NAME=PATH ...] [OPTION ...]",
        description="Start the gRPC server. Every option is also a key of the --config TOML "
        "file (flags override the file).",
    )
    serve.add_argument("--config", type=Path, help="TOML file with any of the options below")
    serve.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help="serve the model in local directory PATH as NAME (repeatable); PATH builtin:"
        "tiny-gpt2 = a tiny causal LM built offline; none = the embedded default sentiment "
        "classifier",
    )
    serve.add_argument(
        "--concepts",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help="serve the concept set in file PATH as NAME (repeatable), for the model the file "
        "names (docs/concepts.md)",
    )
    for spec in option_specs():
        if spec.flag:
            _add_option(serve, spec)
    explain = sub.add_parser(
        "explain",
        help="explain texts with a running server; show them in the terminal, as JSON or HTML",
        description="Explain texts with a running explainserve server and show each input's "
        "units coloured by score (red: for the explained output, blue: against).",
    )
    add_explain_arguments(explain)
    concepts = sub.add_parser(
        "concepts",
        help="concept set files: import fitted dictionaries of other tools, show one",
        description="Concept set files (docs/concepts.md): what `serve --concepts` serves.",
    )
    add_concepts_arguments(concepts)
    activations = sub.add_parser(
        "activations",
        help="a dataset's activations and predictions from running servers, to shards on disk",
        description="Stream a dataset's activations (the head's input by default, or any split "
        "point) and predictions from one or several running servers into a directory of "
        "safetensors (or Parquet) shards, with a progress bar; a stopped run resumes.",
    )
    add_activations_arguments(activations)
    return parser


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Defaults, then the TOML file, then the flags given."""
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(load_toml(args.config))
    for spec in option_specs():
        flag = getattr(args, spec.name, None)
        if flag is not None and spec.flag:
            values[spec.name] = flag
    if args.model:
        values["models"] = dict(parse_model_flag(m) for m in args.model)
    if args.concepts:
        values["concepts"] = dict(parse_concepts_flag(c) for c in args.concepts)
    return ServeConfig.from_values(values)


def setup_logging(level: str, fmt: str) -> None:
    """Text or JSON log lines on stderr, each with the request id and the trace id of the RPC
    it is about ("-" outside RPCs)."""
    from explainserve.grpc.interceptors import RequestIdFilter
    from explainserve.logs import JsonFormatter

    if level.upper() not in LOG_LEVELS:
        raise ConfigError("log_level", f"log_level must be one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(request_id)s trace=%(trace_id)s] %(message)s"
            )
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def warm_up(explainer: Explainer, model: str) -> None:
    """One small explanation of each kind (forward and gradient), so the first client does not
    pay for lazy initialisation (kernels, allocator, tokenizer caches); then, with
    `calibrate`, the calibration of batch sizes (a few seconds at most, logged)."""
    from explainserve.explain.methods.occlusion import Occlusion
    from explainserve.explain.methods.saliency import Saliency
    from explainserve.explain.params import ExplainParams
    from explainserve.vocabulary import InputSpec

    for method in (Occlusion(), Saliency()):
        list(explainer.explain(ExplainParams(model, [InputSpec(text="Warm up.")], method)))
    served = explainer.registry.get(model)
    if served.worker.options.calibrate:
        ids = served.tokenizer(CALIBRATION_TEXT, truncation=True, max_length=served.max_length)
        served.worker.calibrate(list(ids["input_ids"]))


#: The input the warm-up calibration of batch sizes runs (`Worker.calibrate`): a sentence of
#: the length of a typical explained text (about 30 tokens).
CALIBRATION_TEXT = (
    "The service was slow and the food arrived cold, but the staff apologised, brought us a "
    "fresh plate and did not charge for the drinks."
)


def serve(config: ServeConfig) -> None:
    """Loads the configured models and serves them until SIGTERM / SIGINT."""
    # Everything that can be checked without the serving layers (torch) first: a mistake is
    # reported at once.
    config.check_model_paths()
    config.check_tasks()
    tokens = config.tokens()
    concept_sets = config.read_concept_sets()

    from explainserve import tracing
    from explainserve.activations.service import Activator
    from explainserve.concepts.registry import ConceptRegistry, bind
    from explainserve.concepts.service import ConceptExplainer
    from explainserve.explain.service import Explainer
    from explainserve.grpc.server import serve_forever
    from explainserve.models.loading import load_model
    from explainserve.models.registry import Registry

    # Logging first: building a built-in model (model_configs) logs what it does.
    setup_logging(config.log_level, config.log_format)
    # Span export, when the OTEL_* environment variables ask for it (explainserve.tracing).
    try:
        tracing.configure_from_env()
    except ValueError as e:
        raise ConfigError("OTEL_TRACES_EXPORTER", str(e)) from None
    model_configs = config.model_configs()
    registry = Registry()
    concepts = ConceptRegistry()
    explainer = Explainer(registry, config.limits, concepts, config.concept_limits)

    def load() -> None:
        for model_config in model_configs:
            registry.add(load_model(model_config))
            warm_up(explainer, model_config.name)
        for name, concept_set in concept_sets.items():
            served = [m.name for m in registry.list()]
            if concept_set.model.name not in served:
                raise ConfigError(
                    f"concepts.{name}",
                    f"concept set '{name}' ({config.concepts[name]}) is for model "
                    f"'{concept_set.model.name}', which is not served (served: "
                    f"{', '.join(served)})",
                )
            model = registry.get(concept_set.model.name)
            concepts.add(bind(name, concept_set, model, str(config.concepts[name])))

    companions = []
    if config.server.http_port is not None:
        from explainserve.http.server import start_http

        companions.append(start_http)
    serve_forever(
        replace(config.server, auth_tokens=tokens),
        explainer,
        Activator(registry, config.activations),
        load,
        ConceptExplainer(registry, concepts, config.concept_limits),
        companions,
    )
    tracing.uninstall()  # flushes the spans not exported yet


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `explainserve` command."""
    args = build_parser().parse_args(argv)
    prog = f"explainserve {args.command}"
    try:
        if args.command == "explain":
            from explainserve.viewer.cli import run_explain

            return run_explain(args)
        if args.command == "concepts":
            from explainserve.discovery.cli import run_concepts

            return run_concepts(args)
        if args.command == "activations":
            from explainserve.discovery.cli import run_activations

            return run_activations(args)
        serve(config_from_args(args))
    except (InvalidArgument, ValueError) as e:
        # Configuration mistakes (ConfigError), and those found while loading a model (a CUDA
        # device on a machine without one, a model without a fast tokenizer, TLS half set).
        print(f"{prog}: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:
        # The environment: a busy port, an unreadable certificate.
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
