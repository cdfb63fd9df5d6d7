"""Where an Occlusion request's time goes on a causal LM, with prefix reuse and without.

The case of `bench/explain.py --causal --reuse-only` (a 64-token prompt, its 7-token
continuation, token or word units) on the randomly initialised LMs of that benchmark (by
default the tiny ones, 2 layers x 64), each served twice in one server (reuse on / off).
Requests go through gRPC, interleaved, after warm-up; timers (`time.perf_counter`) wrap the
worker's steps, and the medians per request are printed:

- request: the client's wall time of one Explain;
- batches: the worker's forward batches (`Worker._execute`), and within them
  - prefix pass: `CausalLMRunner.prefix_cache` (the reference's own pass, keeping its cache),
  - packed pass: `CausalLMRunner.packed` (the suffixes on the cache),
  - full pass: `CausalLMRunner.kept` (every row in full, without reuse),
  - host: the rest of the batch (choosing the path, packing, masks, cache rows, scores);
- outside the batches: request - batches (gRPC, tokenizing, units, masks, estimator, waits).

Then the model alone, no worker: a pass of 1 row and of 70 rows of the request's length,
giving the per-pass fixed cost `F` and the cost per token `r` (`t = F + r * tokens`), from
which the best ratio reuse could give is computed. Medians, since the machine is shared. The
copy with reuse takes the prefix path for every batch it can (`WorkerOptions.always_prefix`), unless
`--measured-choice`.

    .venv/bin/python bench/reuse_profile.py [--layers 2] [--width 64] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import grpc
import torch
from explain import LONG_PROMPT, _prompt_of, build_lms

from explainserve.explain.limits import Limits
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models import runners
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling import worker
from explainserve.scheduling.options import WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: Seconds per step of the request being timed (reset per request).
SPENT: dict[str, float] = defaultdict(float)


def _timed(owner: Any, name: str, label: str) -> None:
    """Wraps `owner.name` so that its time adds to `SPENT[label]`."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - t0

    setattr(owner, name, wrapper)


def main() -> int:
    """Prints the per-request breakdown of each model, with and without reuse."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--units", default="token", choices=["token", "word"])
    parser.add_argument(
        "--measured-choice",
        action="store_true",
        help="let the measured costs choose each batch's path (default: the prefix path always, "
        "with reuse, so that its breakdown is what is timed)",
    )
    args = parser.parse_args()
    _timed(worker.Worker, "_execute", "batches")
    _timed(runners.CausalLMRunner, "prefix_cache", "prefix pass")
    _timed(runners.CausalLMRunner, "packed", "packed pass")
    _timed(runners.CausalLMRunner, "kept", "full pass")
    registry = Registry()
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_lms(Path(tmp), args.layers, args.width)
        for name, path in paths.items():
            for reuse in (True, False):
                options = WorkerOptions(
                    token_budget=8192,
                    reuse=reuse,
                    always_prefix=reuse and not args.measured_choice,
                )
                label = name if reuse else name + "/no-reuse"
                registry.add(load_model(ModelConfig(label, path, device="cpu", worker=options)))
    running = start(ServerOptions(port=0), Explainer(registry, Limits()))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    units = {"token": pb.GRANULARITY_TOKEN, "word": pb.GRANULARITY_WORD}[args.units]
    print(
        f"# bench/reuse_profile.py: {args.layers} layers x {args.width}, Occlusion, "
        f"{args.units} units, {args.repeats} interleaved requests after {args.warmup} warm-up, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians in ms"
    )
    print()
    print(
        "| model | reuse | request | batches | prefix pass | packed pass | full pass | host | "
        "outside the batches | tokens run |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for name in paths:
            tok = registry.get(name).tokenizer
            spec = pb.Input(
                text=_prompt_of(tok, LONG_PROMPT, 64),
                continuation=pb.Continuation(text=" and we would gladly come back."),
            )
            labels = (name, name + "/no-reuse")
            requests = {
                m: pb.ExplainRequest(
                    model=m, inputs=[spec], granularity=units, occlusion=pb.Occlusion()
                )
                for m in labels
            }
            for _ in range(args.warmup):
                for m in labels:
                    stub.Explain(requests[m], timeout=600)
            steps: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in labels}
            tokens: dict[str, list[int]] = {m: [] for m in labels}
            for _ in range(args.repeats):
                for m in labels:
                    stats = registry.get(m).worker.stats
                    before = stats.padded_tokens
                    SPENT.clear()
                    t0 = time.perf_counter()
                    stub.Explain(requests[m], timeout=600)
                    took = time.perf_counter() - t0
                    registry.get(m).worker.wait_idle()
                    tokens[m].append(stats.padded_tokens - before)
                    passes = SPENT["prefix pass"] + SPENT["packed pass"] + SPENT["full pass"]
                    row = {
                        "request": took,
                        "batches": SPENT["batches"],
                        "prefix pass": SPENT["prefix pass"],
                        "packed pass": SPENT["packed pass"],
                        "full pass": SPENT["full pass"],
                        "host": SPENT["batches"] - passes,
                        "outside the batches": took - SPENT["batches"],
                    }
                    for k, v in row.items():
                        steps[m][k].append(v * 1000)
            for m in labels:
                cells = " | ".join(
                    f"{statistics.median(steps[m][k]):.1f}"
                    for k in (
                        "request",
                        "batches",
                        "prefix pass",
                        "packed pass",
                        "full pass",
                        "host",
                        "outside the batches",
                    )
                )
                reuse = "yes" if m == name else "no"
                print(f"| {name} | {reuse} | {cells} | {statistics.median(tokens[m]):.0f} |")
            # The model alone: F (per pass) and r (per token) from passes of 1 and 70 rows.
            model = registry.get(name).model
            n = len(tok(spec.text + spec.continuation.text)["input_ids"])
            times: dict[int, list[float]] = {1: [], 70: []}
            with torch.inference_mode():
                for _ in range(args.repeats + 3):
                    for rows in times:
                        ids = torch.randint(1000, 20000, (rows, n))
                        t0 = time.perf_counter()
                        model.base_model(input_ids=ids, use_cache=False)
                        times[rows].append(time.perf_counter() - t0)
            one = statistics.median(times[1][3:])
            many = statistics.median(times[70][3:])
            r = (many - one) / (69 * n)
            f = one - r * n
            print(
                f"| {name} | model alone | 1 x {n}: {one * 1000:.1f} | 70 x {n}: "
                f"{many * 1000:.1f} | F = {f * 1000:.2f} ms per pass | r = {r * 1e6:.2f} us "
                "per token | | | | |",
                flush=True,
            )
    finally:
        channel.close()
        running.stop(grace=None)
        registry.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
