"""Many concurrent clients vs the same requests one by one vs the raw model, in one run.

N clients (threads, each with its own gRPC channel to a live server on loopback) each send
requests for short sentences, alternating Occlusion and LIME. Every request is one sentence, so
a client alone can never fill a batch: throughput at full batch needs the worker to coalesce
rows across requests. Three measurements, interleaved over the repeats (medians):

- concurrent: all clients at once, aggregate perturbed sequences per second;
- sequential: the same requests one after the other from one client;
- raw model: exactly the same sequences (each request's rows: its design's, whose first is the
  unperturbed input for Occlusion and LIME) straight through the model, sorted by length and
  packed into full batches of the same token budget: the best the model alone can do.

Target on CPU: concurrent >= 0.9 x raw model at 32 clients.

    .venv/bin/python bench/concurrency.py [--clients 32] [--requests-per-client 4] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import torch

from explainserve import _native
from explainserve.explain.limits import Limits
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.perturbation import PerturbationMethod
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.options import WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc
from explainserve.vocabulary import encode_text, make_units

sys.path.insert(0, str(Path(__file__).parent))
from explain import _packed, _pad  # bench/explain.py: the same packing

SENTENCES = [
    "The food was great.",
    "Terrible service, never again.",
    "I loved every minute of it!",
    "The room was small but clean.",
    "Not worth the money.",
    "What a wonderful surprise this was.",
    "The battery died after an hour.",
    "Friendly staff and quick delivery.",
    "It broke on the second day.",
    "Absolutely fantastic performance tonight.",
    "The plot made no sense at all.",
    "Good value, would buy again.",
]
LIME_PERTURBATIONS = 64


def make_requests(n: int) -> list[tuple[pb.ExplainRequest, PerturbationMethod, str, int]]:
    """(request, domain method, sentence, seed): Occlusion and LIME alternately."""
    out = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        seed = i
        if i % 2 == 0:
            fields: dict[str, object] = {"occlusion": pb.Occlusion()}
            method: PerturbationMethod = Occlusion()
        else:
            fields = {"lime": pb.Lime(n_perturbations=LIME_PERTURBATIONS)}
            method = Lime(n_perturbations=LIME_PERTURBATIONS)
        request = pb.ExplainRequest(
            model="bench",
            inputs=[pb.Input(text=text)],
            granularity=pb.GRANULARITY_WORD,
            seed=seed,
            **fields,  # type: ignore[arg-type]
        )
        out.append((request, method, text, seed))
    return out


def raw_model(served: ServedModel, work: list[tuple[PerturbationMethod, str, int]], budget: int):  # type: ignore[no-untyped-def]
    """A closure running exactly the requests' sequences through the bare model at full batch."""
    tok = served.tokenizer
    rows: list[torch.Tensor] = []
    for method, text, seed in work:
        enc = encode_text(tok, text, served.max_length, "bench")
        units = make_units(enc, "word", tok)
        masks, _ = method.design(units.n_units, seed)
        ids = _native.expand_ids(masks, units.token_to_unit, enc.ids, served.replacement.token_id)
        if masks[0].any():  # the server adds the unperturbed input where the design lacks it
            rows.append(torch.from_numpy(enc.ids))
        rows.extend(torch.from_numpy(ids))
    batches = [_pad(b, served.runner.pad_id) for b in _packed(rows, budget)]
    model, device = served.model, served.device

    def run() -> int:
        with torch.inference_mode():
            for ids, att in batches:
                model(input_ids=ids.to(device), attention_mask=att.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(rows)

    return run


def main() -> int:
    """Runs the benchmark and prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 clients, 2 requests, 1 repeat")
    parser.add_argument("--model-dir", type=Path, help="default: the embedded default model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument(
        "--max-batch-ms", type=float, help="the worker's time bound (default: by device; 0: none)"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests_per_client, args.repeats = 8, 2, 1
    if args.model_dir is None:
        from explainserve.models.default_model import default_model_dir

        args.model_dir = default_model_dir()
    registry = Registry()
    served = load_model(
        ModelConfig(
            "bench",
            args.model_dir,
            device=args.device,
            dtype=args.dtype,
            worker=WorkerOptions(token_budget=args.token_budget, max_batch_ms=args.max_batch_ms),
        )
    )
    registry.add(served)
    running = start(ServerOptions(port=0), Explainer(registry, Limits()))
    target = f"127.0.0.1:{running.port}"
    channels = [grpc.insecure_channel(target) for _ in range(args.clients)]
    stubs = [explain_pb2_grpc.ExplainServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
    work = make_requests(args.clients * args.requests_per_client)
    per_client = [work[c :: args.clients] for c in range(args.clients)]
    raw = raw_model(served, [(m, t, s) for _, m, t, s in work], args.token_budget)

    def concurrent() -> int:
        rows = [0] * args.clients
        barrier = threading.Barrier(args.clients)

        def client(c: int) -> None:
            barrier.wait()
            for request, *_ in per_client[c]:
                reply = stubs[c].Explain(request, timeout=600)
                rows[c] += sum(e.counters.forward_passes for e in reply.explanations)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(rows)

    def sequential() -> int:
        rows = 0
        for request, *_ in work:
            reply = stubs[0].Explain(request, timeout=600)
            rows += sum(e.counters.forward_passes for e in reply.explanations)
        return rows

    def timed(f):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        n = f()
        return n, time.perf_counter() - t0

    try:
        # Warm-up: every path once.
        sequential()
        concurrent()
        raw()
        results: dict[str, list[float]] = {"concurrent": [], "sequential": [], "raw": []}
        counts: dict[str, int] = {}
        stats = served.worker.stats
        batches0, rows0 = stats.batches, stats.rows
        for _ in range(args.repeats):
            for name, f in (("concurrent", concurrent), ("sequential", sequential), ("raw", raw)):
                n, seconds = timed(f)
                counts[name] = n
                results[name].append(n / seconds)
        assert counts["concurrent"] == counts["sequential"] == counts["raw"], counts
        rate = {k: statistics.median(v) for k, v in results.items()}
        served_batches = stats.batches - batches0
        served_rows = stats.rows - rows0
        seconds = served.worker.max_batch_seconds
        bound = "off" if seconds is None else f"{seconds * 1000:g}"
        print(
            f"# bench/concurrency.py on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cpus, torch {torch.__version__}, device {args.device}, "
            f"{args.clients} clients x {args.requests_per_client} requests (one sentence each, "
            f"Occlusion and LIME-{LIME_PERTURBATIONS} alternately), {counts['raw']} sequences "
            f"per measurement, {args.repeats} interleaved repeats (medians), token budget "
            f"{args.token_budget}, max_batch_ms {bound}, time caps (tokens) "
            f"{served.worker.time_caps()}"
        )
        print()
        print("| measurement | sequences/s | vs raw model |")
        print("|---|---:|---:|")
        for name, label in (
            ("concurrent", f"{args.clients} concurrent clients"),
            ("sequential", "same requests, one by one"),
            ("raw", "raw model, full batches"),
        ):
            print(f"| {label} | {rate[name]:.0f} | {rate[name] / rate['raw']:.2f} |")
        print()
        print(
            f"concurrent / sequential = {rate['concurrent'] / rate['sequential']:.2f}; "
            f"server batches averaged {served_rows / max(served_batches, 1):.1f} rows "
            "(concurrent and sequential runs together)"
        )
    finally:
        for c in channels:
            c.close()
        running.stop(grace=None)
        registry.close()
        if torch.device(args.device).type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"\n# peak GPU memory: {peak:.2f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
