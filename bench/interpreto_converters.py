"""The concept set converters against Interpreto 0.5.2 itself: every explainer
`explainserve.concepts.convert.from_interpreto` reads is fitted by Interpreto, in its own venv
(`.venv-peers`, made by bench/peers.py's `ensure_peers_venv`), on the default model's head-input
activations; its set is converted, and the converted set's codec (this project's encoder and
decoder) is compared with the explainer's own `activations_to_concepts` and
`concepts_to_activations` on held-out rows. Prints one line per explainer: the largest absolute
differences of the codes and of the reconstructions.

    .venv/bin/python bench/interpreto_converters.py [--json FILE]

The NMF family is compared on reconstructions only: Interpreto's NMF encoding is an iterative
solver started from random codes, ours the exact NNLS fit against the same dictionary
(docs/concepts.md), so the codes differ while the NNLS reconstruction is never worse.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Explainer class -> keyword arguments of its constructor (besides the splitter).
EXPLAINERS: dict[str, dict[str, Any]] = {
    "PCAConcepts": {"nb_concepts": 8},
    "ICAConcepts": {"nb_concepts": 8},
    "SVDConcepts": {"nb_concepts": 8},
    "NeuronsAsConcepts": {},
    "NMFConcepts": {"nb_concepts": 8, "force_relu": True},
    "SemiNMFConcepts": {"nb_concepts": 8},
    "VanillaSAEConcepts": {"nb_concepts": 32},
    "TopKSAEConcepts": {"nb_concepts": 32, "top_k": 4},
    "JumpReLUSAEConcepts": {"nb_concepts": 32},
}


def worker(model_dir: str) -> int:
    """In the peers' venv: fit, convert, compare; one JSON line per explainer."""
    import numpy as np
    import torch
    from interpreto import SplitterForClassification
    from interpreto import concepts as ic
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from explainserve.concepts.codec import Codec
    from explainserve.concepts.convert import from_interpreto
    from explainserve.concepts.sets import ModelBinding
    from explainserve.models.default_model import HELDOUT_FILE, TRAIN_FILE, read_dataset

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    splitter = SplitterForClassification(model, tokenizer=tokenizer, batch_size=32)
    train = list(read_dataset(TRAIN_FILE).texts)
    held = list(read_dataset(HELDOUT_FILE).texts)
    x, _ = splitter.get_activations(train)
    y, _ = splitter.get_activations(held)
    for name, kwargs in EXPLAINERS.items():
        explainer = getattr(ic, name)(splitter, **kwargs)
        if name.endswith("SAEConcepts"):
            explainer.fit(x, nb_epochs=5, batch_size=64)
        elif name != "NeuronsAsConcepts":
            explainer.fit(x)
        cs = from_interpreto(explainer, ModelBinding(name="m"), split_point="classifier:input")
        codec = Codec(cs, torch.device("cpu"))
        with torch.no_grad():
            theirs = explainer.activations_to_concepts(y).float()
            ours = codec.encode(y)
            back_theirs = explainer.concepts_to_activations(theirs).float()
            back_ours = codec.decode(ours)
        codes = float((theirs - ours).abs().max())
        recon = float((back_theirs - codec.decode(theirs)).abs().max())
        error_theirs = float(torch.linalg.norm(y - back_theirs))
        error_ours = float(torch.linalg.norm(y - back_ours))
        print(
            json.dumps(
                {
                    "explainer": name,
                    "encoder": cs.encoder.kind,
                    "codes_max_abs_diff": codes,
                    "decode_max_abs_diff": recon,
                    "reconstruction_error_interpreto": error_theirs,
                    "reconstruction_error_ours": error_ours,
                    "scale": float(np.abs(y.numpy()).max()),
                }
            ),
            flush=True,
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peers

    from explainserve.models.default_model import default_model_dir

    python = peers.ensure_peers_venv(ROOT / ".venv-peers")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "server"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), __file__, "--worker", str(default_model_dir())],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return done.returncode
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    print(
        "| explainer | encoder | codes max abs diff | decoder max abs diff | "
        "reconstruction error (Interpreto / ours) |"
    )
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['explainer']} | {r['encoder']} | {r['codes_max_abs_diff']:.2e} | "
            f"{r['decode_max_abs_diff']:.2e} | {r['reconstruction_error_interpreto']:.4g} / "
            f"{r['reconstruction_error_ours']:.4g} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
