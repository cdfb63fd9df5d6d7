"""Soak: thousands of mixed requests against `explainserve serve` on loopback, RSS over time.

Starts the server (the embedded default model, or --model NAME=DIR), warms it up, then sends a
bounded number of requests (--requests, stopped early at --max-seconds) from a few client
threads: short and long (near the model's token limit) texts explained by occlusion, LIME,
saliency and integrated gradients; GetActivations of many inputs (at every token of a layer,
long inputs included, and at the head's input); ListModels. The server's RSS is sampled every
0.5 s. Both reference levels are taken idle: a few seconds after the warm-up, and at the end of
--idle seconds after the load. Prints them, the peak, and the ratio end / after warm-up (the
goal: within 10 %).

    .venv/bin/python bench/soak.py [--requests 3000] [--max-seconds 180] [--idle 20]
"""

from __future__ import annotations

import argparse
import itertools
import re
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from explainserve.launch import spawn_serve
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

SHORT = "The staff were friendly, but the room was noisy and the breakfast was cold."
#: About 450 tokens: near the 512-token limit of the default model (requests that carry it set
#: `truncate`, so a model with a lower limit explains its first tokens).
LONG = " ".join(
    f"Sentence {i} says the {w} was fine but slow." for i, w in enumerate(["room", "food"] * 23)
)


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def requests(model: str, layer: str) -> list[tuple[str, object]]:
    """The mix, cycled through."""
    texts = [pb.Input(text=SHORT), pb.Input(text=LONG)]
    return [
        ("Explain", pb.ExplainRequest(model=model, inputs=texts[:1], occlusion=pb.Occlusion())),
        (
            "Explain",
            pb.ExplainRequest(model=model, inputs=texts, saliency=pb.Saliency(), truncate=True),
        ),
        (
            "Explain",
            pb.ExplainRequest(model=model, inputs=texts[:1], lime=pb.Lime(n_perturbations=32)),
        ),
        (
            "Explain",
            pb.ExplainRequest(
                model=model,
                inputs=texts[:1],
                integrated_gradients=pb.IntegratedGradients(n_steps=8),
            ),
        ),
        (
            "GetActivations",
            pb.GetActivationsRequest(
                model=model,
                inputs=[pb.Input(text=SHORT + f" {i}") for i in range(32)] + texts[1:] * 2,
                truncate=True,
                split_points=[layer],
                granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
            ),
        ),
        (
            "GetActivations",
            pb.GetActivationsRequest(
                model=model, inputs=[pb.Input(text=SHORT + f" {i}") for i in range(64)]
            ),
        ),
        ("Explain", pb.ExplainRequest(model=model, inputs=texts[:1], saliency=pb.Saliency())),
        ("ListModels", pb.ListModelsRequest()),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="NAME=DIR (default: the embedded default model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=180.0)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--serve-args", default="", help="extra `explainserve serve` arguments")
    parser.add_argument(
        "--layer", default="bert.encoder.layer.3", help="split point of the all-token requests"
    )
    parser.add_argument(
        "--no-trim",
        action="store_true",
        help="the server without its idle malloc_trim (EXPLAINSERVE_MALLOC_TRIM=0), to compare",
    )
    args = parser.parse_args()
    command = ["--port", "0", "--device", args.device, "--log-level", "WARNING"]
    if args.model:
        command += ["--model", args.model]
    command += args.serve_args.split()
    name = args.model.split("=", 1)[0] if args.model else "minilm-sentiment"
    proc, port = spawn_serve(
        command, env={"EXPLAINSERVE_MALLOC_TRIM": "0"} if args.no_trim else None
    )
    samples: list[tuple[float, float, str]] = []
    phase = ["warm-up"]
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((time.monotonic() - t0, rss_mib(proc.pid), phase[0]))

    threading.Thread(target=sample, daemon=True).start()
    codes: Counter[str] = Counter()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
            mix = requests(name, args.layer)

            def call(rpc: str, request: object) -> None:
                try:
                    if rpc == "GetActivations":
                        for _ in stub.GetActivations(request, timeout=120):
                            pass
                    else:
                        getattr(stub, rpc)(request, timeout=120)
                    codes["OK"] += 1
                except grpc.RpcError as err:
                    codes[err.code().name] += 1

            for rpc, request in itertools.islice(itertools.cycle(mix), args.warmup):
                call(rpc, request)
            phase[0] = "warm, idle"
            time.sleep(min(args.idle, 5.0))  # both levels are taken idle, a few s after work
            warm = rss_mib(proc.pid)
            phase[0] = "load"
            counter = itertools.count()
            deadline = time.monotonic() + args.max_seconds

            def client() -> None:
                while time.monotonic() < deadline:
                    k = next(counter)
                    if k >= args.requests:
                        return
                    call(*mix[k % len(mix)])

            started = time.monotonic()
            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            load_seconds = time.monotonic() - started
            sent = min(next(counter), args.requests)
            phase[0] = "idle"
            time.sleep(args.idle)
            end = rss_mib(proc.pid)
    finally:
        stop.set()
        proc.terminate()
        proc.wait(60)
    peak = max(r for _, r, _ in samples)
    print(
        f"model {name}, malloc_trim {'off' if args.no_trim else 'on'}, {args.clients} clients, "
        f"{sent} requests in {load_seconds:.0f} s after {args.warmup} warm-up requests; "
        f"codes {dict(codes)}"
    )
    print("RSS over time (MiB), every 10 s:")
    for t, r, p in samples[::20]:
        print(f"  {t:6.1f} s  {r:8.1f}  {p}")
    print(f"RSS after warm-up {warm:.0f} MiB, peak {peak:.0f} MiB, after {args.idle:.0f} s idle")
    print(f"{end:.0f} MiB: end / after warm-up = {end / warm:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
