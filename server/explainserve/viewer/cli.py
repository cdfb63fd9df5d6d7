"""`explainserve explain`: a client of a running server. It builds an ExplainRequest from the
command line, runs it with ExplainStream (a progress bar on stderr while the server works), and
shows the result in the terminal, as JSON (`--json`) or as an HTML page (`--html`).

With `--concepts NAME` it runs ExplainConcepts instead (each class's output decomposed over the
concept set's concepts); with `--concept K` too, an Explain of concept K's activation (the heat
maps, with the concept as the explained output)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, json_format

from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc
from explainserve.viewer.views import DEFAULT_TOP

#: Command-line method name -> the ExplainRequest `method` oneof field.
METHODS = {
    name.replace("_", "-"): name
    for name in (f.name for f in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields)
}
GRANULARITIES = ("all-tokens", "token", "word", "sentence")
AGGREGATIONS = ("mean", "max", "min", "sum", "signed-max")
INFERENCE_MODES = ("logits", "softmax", "log-softmax")
DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_MODEL = "minilm-sentiment"
DEFAULT_METHOD = "occlusion"
DEFAULT_GRANULARITY = "word"
#: What ExplainConcepts' outputs are under each inference mode (None: the server's, logits).
OUTPUT_NAMES = {
    None: "logit",
    "logits": "logit",
    "softmax": "probability",
    "log-softmax": "log-probability",
}


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `explainserve explain`."""
    parser.add_argument(
        "texts",
        nargs="*",
        metavar="TEXT",
        help="texts to explain; none: one per line from --file, or from stdin",
    )
    parser.add_argument("--file", type=Path, help="read the texts from FILE, one per line")
    parser.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help=f"HOST:PORT of the server (default {DEFAULT_SERVER})",
    )
    parser.add_argument("--token", help="bearer token, when the server asks for one")
    parser.add_argument(
        "--tls-ca", type=Path, help="PEM CA certificate of the server: connect with TLS"
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--method",
        choices=sorted(METHODS),
        metavar="METHOD",
        help=f"{', '.join(sorted(METHODS))} (default {DEFAULT_METHOD})",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of the method, as the proto names it (repeatable), e.g. "
        "n_perturbations=64, order=first, baseline=replacement",
    )
    parser.add_argument(
        "--granularity", choices=GRANULARITIES, help=f"units (default {DEFAULT_GRANULARITY})"
    )
    parser.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        help="gradient methods: how token scores make a unit's (server default mean)",
    )
    parser.add_argument(
        "--inference-mode",
        choices=INFERENCE_MODES,
        help="the function of the logits explained (server default logits)",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="LABEL|INDEX",
        help="class to explain for every input (repeatable; default: the predicted class)",
    )
    parser.add_argument(
        "--concepts",
        metavar="NAME",
        help="a concept set the server serves for the model: show each input's top concepts "
        "by |contribution| to the explained class, as signed bars, and the residual's share",
    )
    parser.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="LABEL|INDEX",
        help="with --concepts: explain this concept's activation instead (the heat maps; "
        "repeatable)",
    )
    parser.add_argument(
        "--top",
        type=int,
        metavar="N",
        help=f"with --concepts: the concepts shown per class (default {DEFAULT_TOP})",
    )
    parser.add_argument(
        "--continuation",
        help="causal LMs: the continuation to explain (default: the model's own, generated)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="causal LMs: tokens generated at most (server default 32)",
    )
    parser.add_argument("--seed", type=int, help="seed of random draws (default 0)")
    parser.add_argument(
        "--truncate", action="store_true", help="cut inputs longer than the model's maximum"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait at most (default 600)"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the response as JSON to FILE ('-': stdout)"
    )
    parser.add_argument("--html", type=Path, metavar="FILE", help="write an HTML page to FILE")
    parser.add_argument(
        "--quiet", action="store_true", help="no terminal view (with --json or --html)"
    )


class UsageError(ValueError):
    """A mistake on the command line (exit status 2)."""


#: Options that shape a heat map, not ExplainConcepts' bars (argparse dest -> flag).
HEAT_MAP_OPTIONS = {
    "method": "--method",
    "param": "--param",
    "granularity": "--granularity",
    "aggregation": "--aggregation",
    "seed": "--seed",
    "continuation": "--continuation",
    "max_new_tokens": "--max-new-tokens",
}


def concept_bars(args: argparse.Namespace) -> bool:
    """The command line asks for ExplainConcepts' bars (`--concepts` without `--concept`),
    its concept options checked (UsageError)."""
    if args.concept and args.concepts is None:
        raise UsageError("--concept K needs --concepts NAME: the concept set K belongs to")
    if args.concept and args.target:
        raise UsageError(
            "--target picks classes; with --concept the explained output is the concept's "
            "activation (the predicted class is still shown)"
        )
    bars = args.concepts is not None and not args.concept
    if args.top is not None and not bars:
        raise UsageError("--top N applies to --concepts NAME without --concept")
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top N: at least 1 concept; got {args.top}")
    if bars:
        given = [
            flag for dest, flag in HEAT_MAP_OPTIONS.items() if getattr(args, dest) not in (None, [])
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)}: heat-map options; --concepts NAME alone shows concept "
                "contributions (add --concept K for the heat map of concept K)"
            )
    return bars


def read_texts(args: argparse.Namespace) -> list[str]:
    """The texts: the arguments, else the file's lines, else stdin's lines (blank lines
    skipped)."""
    if args.texts:
        return list(args.texts)
    if args.file is not None:
        try:
            lines = args.file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise UsageError(f"cannot read --file {args.file}: {e.strerror}") from None
    elif not sys.stdin.isatty():
        lines = sys.stdin.read().splitlines()
    else:
        raise UsageError("no text to explain: give TEXT arguments, --file FILE, or pipe stdin")
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UsageError("no text to explain: the input has only blank lines")
    return texts


def _set_param(message: Any, assignment: str) -> None:
    """Sets one field of the method's message from `NAME=VALUE`, converted by the field's type
    (enums by the end of their value names: `order=first` -> SOBOL_ORDER_FIRST)."""
    name, sep, value = assignment.partition("=")
    fields = message.DESCRIPTOR.fields_by_name
    if not sep or name not in fields:
        valid = ", ".join(fields) or "none"
        raise UsageError(
            f"--param {assignment!r}: {message.DESCRIPTOR.name} takes NAME=VALUE with NAME one "
            f"of: {valid}"
        )
    f = fields[name]
    try:
        if f.type == descriptor.FieldDescriptor.TYPE_ENUM:
            suffix = "_" + value.upper().replace("-", "_")
            wanted = [v.number for v in f.enum_type.values if v.name.endswith(suffix)]
            if not wanted:
                short = [v.name.split("_", 2)[-1].lower() for v in f.enum_type.values[1:]]
                raise UsageError(f"--param {name}: one of {', '.join(short)}; got {value!r}")
            setattr(message, name, wanted[0])
        elif f.type in (
            descriptor.FieldDescriptor.TYPE_FLOAT,
            descriptor.FieldDescriptor.TYPE_DOUBLE,
        ):
            setattr(message, name, float(value))
        elif f.type == descriptor.FieldDescriptor.TYPE_BOOL:
            setattr(message, name, value.lower() in ("1", "true", "yes", "on"))
        else:
            setattr(message, name, int(value))
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"--param {name}: {value!r} is not a valid {f.name} ({e})") from None


def _enum(prefix: str, choice: str | None) -> int:
    if choice is None:
        return 0
    return int(
        pb.DESCRIPTOR.enum_types_by_name[prefix]
        .values_by_name[_ENUM_PREFIX[prefix] + choice.upper().replace("-", "_")]
        .number
    )


_ENUM_PREFIX = {
    "Granularity": "GRANULARITY_",
    "Aggregation": "AGGREGATION_",
    "InferenceMode": "INFERENCE_MODE_",
}


def _targets(given: list[str]) -> list[pb.Target]:
    """Targets by index (digits) or label."""
    return [
        pb.Target(index=int(t)) if t.lstrip("-").isdigit() else pb.Target(label=t) for t in given
    ]


def build_request(args: argparse.Namespace, texts: list[str]) -> pb.ExplainRequest:
    """The ExplainRequest the command line describes."""
    targets = _targets(args.target)
    inputs = []
    for text in texts:
        item = pb.Input(text=text, targets=targets)
        if args.continuation is not None:
            item.continuation.text = args.continuation
        inputs.append(item)
    request = pb.ExplainRequest(
        model=args.model,
        inputs=inputs,
        granularity=_enum(
            "Granularity",
            args.granularity or DEFAULT_GRANULARITY,  # type: ignore[arg-type]
        ),
        aggregation=_enum("Aggregation", args.aggregation),  # type: ignore[arg-type]
        inference_mode=_enum("InferenceMode", args.inference_mode),  # type: ignore[arg-type]
        seed=args.seed or 0,
        truncate=args.truncate,
    )
    if args.concepts is not None:
        request.concept_target.concepts.name = args.concepts
        request.concept_target.concepts_explained.extend(_targets(args.concept))
    method = getattr(request, METHODS[args.method or DEFAULT_METHOD])
    method.SetInParent()
    for assignment in args.param:
        _set_param(method, assignment)
    if args.max_new_tokens is not None:
        request.generation.max_new_tokens = args.max_new_tokens
    return request


def build_concepts_request(args: argparse.Namespace, texts: list[str]) -> pb.ExplainConceptsRequest:
    """The ExplainConceptsRequest of `--concepts NAME`: C x gradient contributions, raw (the
    view normalizes them, the residual included)."""
    return pb.ExplainConceptsRequest(
        model=args.model,
        inputs=[pb.Input(text=text, targets=_targets(args.target)) for text in texts],
        concepts=pb.ConceptSetRef(name=args.concepts),
        inference_mode=_enum("InferenceMode", args.inference_mode),  # type: ignore[arg-type]
        concepts_x_gradients=True,
        normalization=False,
        truncate=args.truncate,
    )


def connect(args: argparse.Namespace) -> grpc.Channel:
    """A channel to `--server` (TLS with `--tls-ca`), accepting big responses."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if args.tls_ca is not None:
        creds = grpc.ssl_channel_credentials(args.tls_ca.read_bytes())
        return grpc.secure_channel(args.server, creds, options=options)
    return grpc.insecure_channel(args.server, options=options)


def explain_with_progress(
    stub: explain_pb2_grpc.ExplainServiceStub,
    request: pb.ExplainRequest,
    metadata: list[tuple[str, str]],
    timeout: float,
    show_progress: bool,
) -> pb.ExplainResponse:
    """Runs `request` with ExplainStream; a progress bar (on stderr, when it is a terminal)
    follows the server's forward passes. Returns the explanations as one ExplainResponse."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    response = pb.ExplainResponse(model=request.model)
    stream = stub.ExplainStream(
        pb.ExplainStreamRequest(request=request), metadata=metadata, timeout=timeout
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("explaining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("forward passes"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not (show_progress and console.is_terminal),
    ) as progress:
        task = progress.add_task("explain", total=None)
        for event in stream:
            if event.HasField("progress"):
                p = event.progress
                progress.update(
                    task, completed=p.forward_passes_done, total=p.forward_passes_total or None
                )
            else:
                response.explanations.append(event.explanation)
    return response


def run_explain(args: argparse.Namespace) -> int:
    """Runs `explainserve explain`; returns the exit status."""
    from rich.console import Console

    from explainserve.viewer.views import ConceptInputView, InputView, concept_views, views

    texts = read_texts(args)
    # Every usage error before the network.
    request = (
        build_concepts_request(args, texts) if concept_bars(args) else build_request(args, texts)
    )
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    console = Console()
    response: pb.ExplainResponse | pb.ExplainConceptsResponse
    with connect(args) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            info = stub.GetModel(
                pb.GetModelRequest(name=args.model), metadata=metadata, timeout=args.timeout
            ).model
            if isinstance(request, pb.ExplainConceptsRequest):
                response = stub.ExplainConcepts(request, metadata=metadata, timeout=args.timeout)
            else:
                response = explain_with_progress(
                    stub, request, metadata, args.timeout, show_progress=not args.quiet
                )
        except grpc.RpcError as e:
            code = e.code()
            print(
                f"explainserve explain: {code.name if code else 'error'}: {e.details()}",
                file=sys.stderr,
            )
            return 1
    response.explanations.sort(key=lambda e: e.input_index)
    shown: list[InputView] | list[ConceptInputView]
    if isinstance(response, pb.ExplainConceptsResponse):
        top = args.top or DEFAULT_TOP
        shown = concept_views(response, list(info.labels), top, OUTPUT_NAMES[args.inference_mode])
        what = f"concept set {args.concepts}"
    else:
        shown = views(response, list(info.labels))
        what = args.method or DEFAULT_METHOD
        if args.concepts is not None:
            what += f", concept set {args.concepts}"
    if args.json is not None:
        text = json_format.MessageToJson(response, preserving_proto_field_name=True, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.html is not None:
        from explainserve.viewer.html import render_html

        args.html.write_text(render_html(shown, model=args.model, method=what), encoding="utf-8")
    if not args.quiet and args.json != "-":
        from explainserve.viewer.terminal import print_views

        print_views(shown, console)
        if args.html is not None:
            console.print(f"wrote {args.html}")
    return 0
