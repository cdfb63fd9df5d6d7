"""`explainserve concepts ...`: concept set files made and read on the client side of a running
server (no torch unless the dictionary to import is a torch object).

- `concepts import SOURCE --out FILE`: a fitted scikit-learn decomposition or Interpreto concept
  explainer (a pickle, joblib or torch.save file) written as a concept set file; the server
  gives what binds it to its model: the labels, the split point's size, and the probe row.
- `concepts show FILE`: what a concept set file holds.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from explainserve.concepts import convert
from explainserve.concepts.sets import (
    FIT_GRANULARITIES,
    PROBE_TEXT,
    ConceptSet,
    ConceptSetError,
    FitGranularity,
    ModelBinding,
    load,
    with_labels,
)
from explainserve.discovery.base import FitError, FitOptions
from explainserve.discovery.cav import PROBES
from explainserve.discovery.dataset import Dataset, DatasetError
from explainserve.discovery.extract import (
    AGGREGATIONS,
    GRANULARITIES,
    ExtractError,
    Servers,
    extract,
)
from explainserve.discovery.fit import METHODS
from explainserve.discovery.store import StoreError, cache_root

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_MODEL = "minilm-sentiment"


class UsageError(ValueError):
    """A mistake on the command line or in a file it names (exit status 2)."""


def add_concepts_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of `explainserve concepts`."""
    sub = parser.add_subparsers(dest="concepts_command", required=True, metavar="{import,fit,show}")
    imp = sub.add_parser(
        "import",
        help="write a fitted scikit-learn or Interpreto dictionary as a concept set file",
        description="Convert a fitted dictionary (scikit-learn PCA, IncrementalPCA, FastICA, "
        "TruncatedSVD, NMF, MiniBatchNMF; Interpreto PCAConcepts, ICAConcepts, SVDConcepts, "
        "NMFConcepts, SemiNMFConcepts, NeuronsAsConcepts, VanillaSAEConcepts, "
        "TopKSAEConcepts, JumpReLUSAEConcepts) into a concept set file that `explainserve "
        "serve --concepts NAME=FILE` serves. The running server gives the model's labels, the "
        "split point's size and the probe row that bind the file to its model.",
    )
    imp.add_argument(
        "source",
        type=Path,
        help="the fitted object: a pickle or joblib file (.pkl, .pickle, .joblib) or a "
        "torch.save file (.pt, .pth); it is unpickled, so only import files you trust",
    )
    imp.add_argument("--out", type=Path, required=True, help="the concept set file to write")
    imp.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"HOST:PORT (default {DEFAULT_SERVER})"
    )
    imp.add_argument("--token", help="bearer token, when the server asks for one")
    imp.add_argument("--tls-ca", type=Path, help="PEM CA certificate of the server: TLS")
    imp.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    imp.add_argument(
        "--split-point",
        help="where the dictionary was fitted (default: the classification head's input)",
    )
    imp.add_argument(
        "--granularity",
        choices=FIT_GRANULARITIES,
        default="cls_token",
        help="the rows it was fitted on (default cls_token)",
    )
    imp.add_argument("--labels", type=Path, help="a file of concept labels, one per line")
    imp.add_argument(
        "--relu-input",
        action="store_true",
        help="scikit-learn NMF: the activations went through a ReLU before the fit",
    )
    imp.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")
    fit = sub.add_parser(
        "fit",
        help="fit a concept set on a dataset's activations streamed from running servers",
        description="Stream a dataset's activations from one or several running servers "
        "(cached on disk: a refit reads them again, a stopped run resumes), fit a concept "
        "dictionary, label each concept with its top examples, measure it, and write the file "
        "`explainserve serve --concepts NAME=FILE` serves.",
    )
    add_dataset_arguments(fit)
    fit.add_argument("--out", type=Path, required=True, help="the concept set file to write")
    fit.add_argument(
        "--method",
        choices=(*METHODS, "cav"),
        default="pca",
        help="the dictionary (default pca), or cav: concept activation vectors from labels",
    )
    fit.add_argument("--concepts", type=int, default=20, metavar="K", help="concepts (default 20)")
    fit.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    fit.add_argument(
        "--max-memory",
        default="2GiB",
        help="rows held in memory at most (default 2GiB): beyond it pca and nmf stream, the "
        "in-memory methods are refused",
    )
    fit.add_argument(
        "--nonneg",
        choices=("relu", "shift"),
        help="nmf on signed activations: a ReLU first, or each feature minus its minimum",
    )
    fit.add_argument("--epochs", type=int, default=20, help="SAEs: passes over the data")
    fit.add_argument("--top-k", type=int, default=0, help="topk-sae: concepts kept per row")
    fit.add_argument("--l1", type=float, default=1e-3, help="relu-sae: the L1 penalty")
    fit.add_argument(
        "--examples", type=int, default=5, help="top examples kept per concept (default 5)"
    )
    fit.add_argument("--ngrams", type=int, default=1, help="cls rows: words up to N-grams")
    fit.add_argument(
        "--min-count", type=int, default=5, help="cls rows: n-grams seen at least this often"
    )
    fit.add_argument(
        "--probe-texts", type=int, default=200, help="texts of the global importance (default 200)"
    )
    fit.add_argument(
        "--no-stability", action="store_true", help="skip the second fit measuring stability"
    )
    fit.add_argument("--label-field", default="label", help="cav, JSONL / Parquet: the label")
    fit.add_argument("--positive", type=Path, help="cav: a file of the concept's examples")
    fit.add_argument("--negative", type=Path, help="cav: a file of counter-examples")
    fit.add_argument("--probe", choices=PROBES, default="logistic", help="cav: the linear probe")
    fit.add_argument(
        "--random-runs",
        type=int,
        default=20,
        help="cav: bootstrap and random-label vectors of the significance test (default 20)",
    )
    show = sub.add_parser("show", help="print what a concept set file holds")
    show.add_argument("file", type=Path, help="a concept set file")
    show.add_argument(
        "--examples", type=int, default=5, help="top examples shown per concept (default 5)"
    )
    show.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML page")
    show.add_argument("--quiet", action="store_true", help="no terminal view (with --html)")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """What extraction needs: the servers, the model, the dataset, the rows, the cache."""
    parser.add_argument(
        "--server",
        action="append",
        default=None,
        metavar="ADDR",
        help=f"HOST:PORT of a server (repeatable: shards are spread over them; or one "
        f"dns:///SERVICE:PORT target, balanced over its addresses; default {DEFAULT_SERVER})",
    )
    parser.add_argument("--token", help="bearer token, when the servers ask for one")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA certificate of the servers: TLS")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--file",
        type=Path,
        help="the dataset: one text per line, JSON lines (.jsonl) or Parquet (.parquet)",
    )
    parser.add_argument("--text-field", default="text", help="JSONL / Parquet: the text field")
    parser.add_argument(
        "--split-point", help="where activations are read (default: the head's input)"
    )
    parser.add_argument(
        "--granularity",
        choices=tuple(GRANULARITIES),
        default="cls",
        help="rows: cls (the token the head reads, default), token, word, ...",
    )
    parser.add_argument(
        "--aggregation", choices=tuple(AGGREGATIONS), default="mean", help="word rows' tokens"
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the transfer's element type (default float32)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="the activation cache's directory (default: one per model, split point, rows "
        "and dataset under $EXPLAINSERVE_CACHE_DIR or ~/.cache/explainserve)",
    )
    parser.add_argument("--shard-size", type=int, default=1024, help="texts per call and shard")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="calls at once per server (default 2)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per call")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _servers(args: argparse.Namespace) -> Servers:
    return Servers(
        targets=tuple(args.server or [DEFAULT_SERVER]),
        token=args.token,
        tls_ca=args.tls_ca,
        timeout=args.timeout,
    )


def parse_bytes(text: str) -> int:
    """`2GiB`, `512MiB`, `1e9` -> bytes."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "b": 1}
    low = text.strip().lower()
    number, scale = low, 1
    for suffix, unit in units.items():
        if low.endswith(suffix):
            number, scale = low.removesuffix(suffix), unit
            break
    try:
        return int(float(number) * scale)
    except ValueError:
        raise UsageError(f"--max-memory: {text!r} is not a size (e.g. 2GiB, 512MiB)") from None


def _dataset(args: argparse.Namespace) -> Dataset:
    """`--file` (required but for a cav's --positive / --negative)."""
    if args.file is None:
        raise UsageError("--file FILE is required: the dataset")
    return Dataset(args.file, text_field=args.text_field)


def _fit_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset to fit on: `--file`, or for a cav the --positive and --negative files
    written as one labelled JSON lines file (next to the cache)."""
    if args.positive is None and args.negative is None:
        return (
            Dataset(args.file, text_field=args.text_field, label_field=args.label_field)
            if (args.file is not None)
            else _dataset(args)
        )
    if args.method != "cav" or args.positive is None or args.negative is None or args.file:
        raise UsageError("--positive and --negative go together, with --method cav, without --file")
    import hashlib
    import json

    lines = []
    for path, label in ((args.positive, "positive"), (args.negative, "negative")):
        for example in Dataset(path).examples():
            lines.append(json.dumps({"text": example.text, "label": label}))
    data = "\n".join(lines) + "\n"
    path = cache_root() / "cav" / f"{hashlib.sha256(data.encode()).hexdigest()[:16]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data, encoding="utf-8")
    return Dataset(path)


def run_fit_command(args: argparse.Namespace) -> int:
    """`concepts fit`."""
    from explainserve.discovery.pipeline import FitRun, run_fit

    run = FitRun(
        servers=_servers(args),
        dataset=_fit_dataset(args),
        model=args.model,
        out=args.out,
        fit=FitOptions(
            method=args.method,
            concepts=args.concepts,
            seed=args.seed,
            max_memory=parse_bytes(args.max_memory),
            nonneg=args.nonneg,
            epochs=args.epochs,
            top_k=args.top_k,
            l1=args.l1,
        ),
        split_point=args.split_point,
        granularity=args.granularity,
        aggregation=args.aggregation,
        dtype=args.dtype,
        cache=args.cache,
        shard_size=args.shard_size,
        concurrency=args.concurrency,
        top_k=args.examples,
        ngrams=args.ngrams,
        min_count=args.min_count,
        probe_texts=args.probe_texts,
        stability=not args.no_stability,
        show_progress=not args.quiet,
        probe=args.probe,
        random_runs=args.random_runs,
    )
    concept_set = run_fit(run)
    print(f"wrote {args.out}: {concept_set.n_concepts} concepts ({args.method})")
    print("\n".join(describe(concept_set, args.examples)))
    return 0


def add_activations_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `explainserve activations`."""
    add_dataset_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the directory of shards to write (resumed when it holds the same activations)",
    )
    parser.add_argument(
        "--format",
        choices=("safetensors", "parquet"),
        default="safetensors",
        help="shards as safetensors (default) or, also, Parquet",
    )


def run_activations(args: argparse.Namespace) -> int:
    """`explainserve activations`: a dataset's activations and predictions to shards."""
    try:
        store = extract(
            _servers(args),
            _dataset(args),
            args.out,
            args.model,
            split_point=args.split_point,
            granularity=args.granularity,
            aggregation=args.aggregation,
            dtype=args.dtype,
            shard_size=args.shard_size,
            concurrency=args.concurrency,
            show_progress=not args.quiet,
        )
        if args.format == "parquet":
            from explainserve.discovery.parquet import write_parquet

            write_parquet(store)
    except (UsageError, ConceptSetError, DatasetError, ExtractError, StoreError) as e:
        print(f"explainserve activations: error: {e}", file=sys.stderr)
        return 2
    m = store.manifest
    print(
        f"wrote {args.out}: {m.texts} texts, {store.rows()} rows of {m.features} features "
        f"({m.model} at {m.split_point}, {m.granularity}), {m.shards} shards"
    )
    return 0


def read_source(path: Path) -> Any:
    """The fitted object in `path` (pickle, joblib or torch.save)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        if path.suffix in (".pt", ".pth"):
            import torch

            return torch.load(path, map_location="cpu", weights_only=False)
        if path.suffix == ".joblib":
            import joblib  # scikit-learn's own dependency

            return joblib.load(path)
        with path.open("rb") as f:
            # The user's own file, unpickled as --help says.
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as e:
        raise UsageError(f"{path}: cannot be loaded ({type(e).__name__}: {e})") from None


def _model_binding(args: argparse.Namespace) -> tuple[ModelBinding, str, int]:
    """The model binding (labels, probe row), the split point and its row size, from the
    server."""
    import grpc

    from explainserve.v1 import explain_pb2 as pb
    from explainserve.v1 import explain_pb2_grpc

    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    if args.tls_ca is not None:
        channel = grpc.secure_channel(
            args.server, grpc.ssl_channel_credentials(args.tls_ca.read_bytes())
        )
    else:
        channel = grpc.insecure_channel(args.server)
    with channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            info = stub.GetModel(
                pb.GetModelRequest(name=args.model), metadata=metadata, timeout=args.timeout
            ).model
            points = {p.name: p for p in info.split_points}
            point = args.split_point or next((p.name for p in points.values() if p.head_input), "")
            if point not in points:
                raise UsageError(
                    f"model '{args.model}' has no split point '{point}'"
                    if point
                    else f"model '{args.model}' has no classification head: give --split-point"
                )
            (chunk,) = stub.GetActivations(
                pb.GetActivationsRequest(
                    model=args.model, inputs=[pb.Input(text=PROBE_TEXT)], split_points=[point]
                ),
                metadata=metadata,
                timeout=args.timeout,
            )
        except grpc.RpcError as e:
            code = e.code()
            raise UsageError(
                f"the server at {args.server}: {code.name if code else 'error'}: {e.details()}"
            ) from None
    tensor = chunk.activations[0].values
    probe = np.frombuffer(tensor.data, "<f4").astype(np.float32)
    binding = ModelBinding(name=args.model, labels=tuple(info.labels), probe=probe)
    return binding, point, int(probe.size)


def convert_source(
    obj: Any,
    binding: ModelBinding,
    split_point: str,
    granularity: FitGranularity,
    relu_input: bool,
) -> ConceptSet:
    """`obj` (a scikit-learn estimator or an Interpreto explainer) as a concept set."""
    module = type(obj).__module__
    if module.startswith("sklearn"):
        return convert.from_sklearn(
            obj, binding, split_point=split_point, granularity=granularity, relu_input=relu_input
        )
    if module.startswith("interpreto"):
        return convert.from_interpreto(
            obj, binding, split_point=split_point, granularity=granularity
        )
    raise UsageError(
        f"a {module}.{type(obj).__name__} is neither a scikit-learn decomposition nor an "
        "Interpreto concept explainer"
    )


def run_import(args: argparse.Namespace) -> int:
    """`concepts import`."""
    obj = read_source(args.source)
    binding, point, size = _model_binding(args)
    # Converted without the probe first: a dictionary of the wrong size is said so plainly.
    unprobed = replace(binding, probe=None)
    concept_set = convert_source(obj, unprobed, point, args.granularity, args.relu_input)
    if concept_set.n_features != size:
        raise UsageError(
            f"the dictionary has {concept_set.n_features} features; split point '{point}' of "
            f"model '{args.model}' has {size}"
        )
    concept_set = replace(concept_set, model=binding)
    if args.labels is not None:
        try:
            labels = [line.strip() for line in args.labels.read_text("utf-8").splitlines()]
        except OSError as e:
            raise UsageError(f"cannot read --labels {args.labels}: {e.strerror}") from None
        concept_set = with_labels(concept_set, [label for label in labels if label])
    concept_set.save(args.out)
    print(
        f"wrote {args.out}: {concept_set.n_concepts} concepts ({concept_set.encoder.kind}, "
        f"{concept_set.method}) for model '{args.model}' at {point}"
    )
    return 0


def describe(concept_set: ConceptSet, examples: int = 5) -> list[str]:
    """The lines `concepts show` prints."""
    cs = concept_set
    probe = "yes" if cs.model.probe is not None else "none (the server checks shapes only)"
    lines = [
        f"model        {cs.model.name}"
        + (
            f" ({len(cs.model.labels)} labels: {', '.join(cs.model.labels)})"
            if cs.model.labels
            else ""
        ),
        f"split point  {cs.split_point} ({cs.n_features} features, fitted at {cs.granularity})",
        f"encoder      {cs.encoder.kind}"
        + (f" (top_k {cs.encoder.top_k})" if cs.encoder.kind == "topk" else "")
        + (" (ReLU input)" if cs.encoder.relu_input else ""),
        f"concepts     {cs.n_concepts}",
        f"method       {cs.method or '-'}",
        f"probe        {probe}",
    ]
    metrics = cs.fit.get("metrics", {})
    for key, value in cs.fit.items():
        if key != "metrics":
            lines.append(f"fit          {key}: {value}")
    for key, value in metrics.items() if isinstance(metrics, dict) else ():
        if key == "importance" and isinstance(value, dict):
            for label, per_concept in value.items():
                ranked = sorted(enumerate(per_concept), key=lambda kv: -kv[1])[:3]
                shown = ", ".join(f"{cs.labels()[k]} {v:.3g}" for k, v in ranked)
                lines.append(f"importance   {label}: {shown}")
        else:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"metric       {key}: {text}")
    for k, label in enumerate(cs.labels()):
        info = cs.concepts[k] if k < len(cs.concepts) else None
        tops = [] if info is None else list(info.top_examples[:examples])
        words = [] if info is None else list(info.top_words[:examples])
        shown = "; ".join(f"{ex.text!r} ({ex.activation:.3g})" for ex in tops)
        lines.append(f"  {k:>4}  {label}" + (f": {shown}" if shown else ""))
        if words:
            lines.append(
                "        words: " + ", ".join(f"{w.text} ({w.activation:.3g})" for w in words)
            )
    return lines


def render_html(concept_set: ConceptSet, examples: int = 5) -> str:
    """One self-contained page (inline CSS, no script, no external asset) of a concept set: its
    model, split point, encoder and fit numbers, and per concept its label, its top examples
    with bars as long as their activations (per concept), and its top words."""
    from importlib import resources

    import jinja2

    from explainserve import __version__

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(
        (resources.files("explainserve.discovery") / "templates" / "concepts.html.j2").read_text(
            encoding="utf-8"
        )
    )
    concepts = []
    for k, label in enumerate(concept_set.labels()):
        info = concept_set.concepts[k] if k < len(concept_set.concepts) else None
        tops = list(info.top_examples[:examples]) if info else []
        largest = max((ex.activation for ex in tops), default=0.0) or 1.0
        concepts.append(
            {
                "index": k,
                "label": label,
                "examples": [
                    {
                        "text": ex.text,
                        "activation": ex.activation,
                        "width": 8 * ex.activation / largest,
                    }
                    for ex in tops
                ],
                "words": list(info.top_words[:examples]) if info else [],
            }
        )
    metrics = concept_set.fit.get("metrics", {})
    shown = [
        (name, f"{value:.4g}" if isinstance(value, float) else value)
        for name, value in (metrics.items() if isinstance(metrics, dict) else [])
        if isinstance(value, int | float | str)
    ]
    return template.render(cs=concept_set, concepts=concepts, metrics=shown, version=__version__)


def run_show(args: argparse.Namespace) -> int:
    """`concepts show`."""
    concept_set = load(args.file)
    if args.html is not None:
        args.html.write_text(render_html(concept_set, args.examples), encoding="utf-8")
    if not args.quiet:
        print("\n".join(describe(concept_set, args.examples)))
    return 0


def run_concepts(args: argparse.Namespace) -> int:
    """Runs `explainserve concepts ...`; returns the exit status."""
    try:
        if args.concepts_command == "import":
            return run_import(args)
        if args.concepts_command == "fit":
            return run_fit_command(args)
        return run_show(args)
    except (UsageError, ConceptSetError, DatasetError, ExtractError, StoreError, FitError) as e:
        print(f"explainserve concepts {args.concepts_command}: error: {e}", file=sys.stderr)
        return 2
