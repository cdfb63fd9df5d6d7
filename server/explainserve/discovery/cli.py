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

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_MODEL = "minilm-sentiment"


class UsageError(ValueError):
    """A mistake on the command line or in a file it names (exit status 2)."""


def add_concepts_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommands of `explainserve concepts`."""
    sub = parser.add_subparsers(dest="concepts_command", required=True, metavar="{import,show}")
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
    show = sub.add_parser("show", help="print what a concept set file holds")
    show.add_argument("file", type=Path, help="a concept set file")
    show.add_argument(
        "--examples", type=int, default=5, help="top examples shown per concept (default 5)"
    )


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
    for key, value in cs.fit.items():
        lines.append(f"fit          {key}: {value}")
    for k, label in enumerate(cs.labels()):
        info = cs.concepts[k] if k < len(cs.concepts) else None
        tops = [] if info is None else list(info.top_examples[:examples])
        shown = "; ".join(f"{ex.text!r} ({ex.activation:.3g})" for ex in tops)
        lines.append(f"  {k:>4}  {label}" + (f": {shown}" if shown else ""))
    return lines


def run_show(args: argparse.Namespace) -> int:
    """`concepts show`."""
    print("\n".join(describe(load(args.file), args.examples)))
    return 0


def run_concepts(args: argparse.Namespace) -> int:
    """Runs `explainserve concepts ...`; returns the exit status."""
    try:
        if args.concepts_command == "import":
            return run_import(args)
        return run_show(args)
    except (UsageError, ConceptSetError) as e:
        print(f"explainserve concepts {args.concepts_command}: error: {e}", file=sys.stderr)
        return 2
