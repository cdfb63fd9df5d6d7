"""Explains one sentence and prints each word's score.

    python clients/python/examples/explain.py --target 127.0.0.1:50051 "The food was cold."

Prints the model's prediction, the explained class, then one line per unit: its text, a tab,
its score (shortest float32 repr, so the number is exact).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from explainserve_client import Client


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("text")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    parser.add_argument("--model", default="minilm-sentiment")
    parser.add_argument("--method", default="occlusion")
    args = parser.parse_args()
    with Client(args.target, token=os.environ.get("EXPLAINSERVE_TOKEN")) as client:
        (e,) = client.explain(args.model, args.text, method=args.method, granularity="word")
        p = e.probabilities
        print(f"predicted: {e.predicted_label} ({p[e.predicted_index or 0]:.3f})")
        print(f"explained: {e.targets[0].label}")
        for unit, score in zip(e.units, e.scores[0], strict=True):
            print(f"{unit.text}\t{np.format_float_positional(score, unique=True)}")


if __name__ == "__main__":
    main()
