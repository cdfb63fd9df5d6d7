"""Asks which concepts of a concept set drive the model's prediction for each sentence and
prints the strongest ones.

    python clients/python/examples/concepts.py --target 127.0.0.1:50051 --concepts pca8 \
        "The food was cold." "Lovely!"

Per input: "input N: TEXT", the predicted class, the explained class (the predicted one), the
residual (the share of the output the concepts do not reconstruct), then the --top concepts by
absolute contribution, one line each: label, a tab, signed contribution (normalized; shortest
float32 repr, so the number is exact). Without --concepts: the model's first concept set.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from explainserve_client import Client


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--model", default="minilm-sentiment")
    parser.add_argument("--concepts", help="concept set name (default: the model's first)")
    parser.add_argument("--top", type=int, default=3, help="concepts printed per input")
    args = parser.parse_args()
    with Client(args.target, token=os.environ.get("EXPLAINSERVE_TOKEN")) as client:
        concepts = args.concepts
        if concepts is None:
            sets = client.get_model(args.model).concept_sets
            if not sets:
                raise SystemExit(f"model {args.model} serves no concept set")
            concepts = sets[0].name
        for e in client.explain_concepts(args.model, args.texts, concepts=concepts):
            print(f"input {e.input_index}: {e.text}")
            print(f"predicted: {e.predicted_label}")
            print(f"explained: {e.targets[0].label}")
            print(f"residual: {np.format_float_positional(e.residuals[0], unique=True)}")
            for label, value in e.top_concepts(0, args.top):
                print(f"{label}\t{np.format_float_positional(np.float32(value), unique=True)}")


if __name__ == "__main__":
    main()
