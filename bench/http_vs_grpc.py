"""HTTP/JSON against gRPC on the same server, in one run (issue 29).

One server serves both protocols (the embedded default model, MiniLM sentiment, on the CPU).
The same requests go through KServe's `POST /v1/models/<m>:explain` (the default Occlusion
request: `{"instances": [text]}`) and gRPC's `Explain` (Occlusion, word units), from client
threads of this process, each with its own keep-alive HTTP connection or gRPC channel:

- 1 client: requests one after the other, per-request latency (median over the requests);
- N clients (default 32) at once: requests per second;

alternating the protocols round by round (the medians of `--repeats` rounds), so both see the
same machine. Goal: HTTP costs <= 5 % more per request (the model dominates). Then what JSON
costs on a GetActivations of 10,000 rows (the head's input, 384 float32 values per row): the
gRPC stream decoded with numpy against the NDJSON stream parsed and its base64 tensors decoded,
wall time and bytes on the wire.

    .venv/bin/python bench/http_vs_grpc.py [--clients 32] [--requests 4] [--rows 10000] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import numpy as np
import torch

from explainserve.explain.limits import Limits
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.http.server import start_http
from explainserve.models.default_model import default_model_dir
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.options import WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

MODEL = "minilm-sentiment"
SENTENCES = [
    "The food was great but the service was painfully slow.",
    "Terrible service, never again.",
    "I loved every minute of it!",
    "The room was small but clean and the staff were friendly.",
    "Not worth the money.",
    "What a wonderful surprise this was.",
    "The battery died after an hour.",
    "Friendly staff and quick delivery.",
]


class HttpClient:
    """One keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def explain(self, text: str) -> int:
        body = json.dumps({"instances": [text]})
        self.connection.request(
            "POST", f"/v1/models/{MODEL}:explain", body, {"content-type": "application/json"}
        )
        reply = self.connection.getresponse()
        data = json.loads(reply.read())
        assert reply.status == 200, data
        return len(data["explanations"][0]["units"])


class GrpcClient:
    """One channel."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = explain_pb2_grpc.ExplainServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def explain(self, text: str) -> int:
        reply = self.stub.Explain(
            pb.ExplainRequest(model=MODEL, inputs=[pb.Input(text=text)], occlusion=pb.Occlusion()),
            timeout=600,
        )
        return len(reply.explanations[0].units)


def sequential(client: HttpClient | GrpcClient, texts: list[str]) -> float:
    """Median seconds per request, one after the other."""
    times = []
    for text in texts:
        started = time.perf_counter()
        client.explain(text)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def concurrent(clients: list[HttpClient] | list[GrpcClient], texts: list[str]) -> float:
    """Requests per second with every client sending `texts` at once."""
    barrier = threading.Barrier(len(clients) + 1)

    def run(client: HttpClient | GrpcClient) -> None:
        barrier.wait()
        for text in texts:
            client.explain(text)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return len(clients) * len(texts) / (time.perf_counter() - started)


def activations_grpc(port: int, texts: list[str]) -> tuple[float, int, np.ndarray]:
    """Seconds, bytes and rows of a GetActivations of `texts` over gRPC."""
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GetActivationsRequest(
            model=MODEL, inputs=[pb.Input(text=t) for t in texts], omit_units=True
        )
        started = time.perf_counter()
        parts, size = [], 0
        for chunk in stub.GetActivations(request, timeout=600):
            size += chunk.ByteSize()
            values = chunk.activations[0].values
            parts.append(np.frombuffer(values.data, "<f4").reshape(list(values.shape)))
        rows = np.concatenate(parts)
        return time.perf_counter() - started, size, rows


def activations_http(port: int, texts: list[str]) -> tuple[float, int, np.ndarray]:
    """Seconds, bytes and rows of the same GetActivations as NDJSON."""
    body = json.dumps({"model": MODEL, "inputs": [{"text": t} for t in texts], "omitUnits": True})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/v1/explainserve/GetActivations", body)
    reply = connection.getresponse()
    parts, size = [], 0
    for line in reply:
        size += len(line)
        values = json.loads(line)["result"]["activations"][0]["values"]
        data = np.frombuffer(base64.b64decode(values["data"]), "<f4")
        parts.append(data.reshape([int(d) for d in values["shape"]]))
    rows = np.concatenate(parts)
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed, size, rows


def alternate(repeats: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The median of each measurement over `repeats` rounds, the measurements interleaved."""
    seen: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seen[name].append(run())
    return {name: statistics.median(values) for name, values in seen.items()}


def main() -> int:
    """Runs the benchmark and prints markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="per client and round")
    parser.add_argument("--sequential", type=int, default=24, help="requests per round, 1 client")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 clients, 1,000 rows, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.sequential, args.rows, args.repeats = 8, 2, 8, 1000, 1
    registry = Registry()
    registry.add(
        load_model(ModelConfig(MODEL, default_model_dir(), device="cpu", worker=WorkerOptions()))
    )
    options = ServerOptions(port=0, http_port=0)
    running = start(options, Explainer(registry, Limits()), companions=[start_http])
    http_port = running.companions[0].port  # type: ignore[attr-defined]
    try:
        texts = [SENTENCES[i % len(SENTENCES)] for i in range(args.sequential)]
        # Warm both paths (and the model) before measuring.
        HttpClient(http_port).explain(texts[0])
        GrpcClient(running.port).explain(texts[0])
        one = alternate(
            args.repeats,
            {
                "grpc": lambda: sequential(GrpcClient(running.port), texts),
                "http": lambda: sequential(HttpClient(http_port), texts),
            },
        )
        grpc_clients = [GrpcClient(running.port) for _ in range(args.clients)]
        http_clients = [HttpClient(http_port) for _ in range(args.clients)]
        per_client = [SENTENCES[i % len(SENTENCES)] for i in range(args.requests)]
        many = alternate(
            args.repeats,
            {
                "grpc": lambda: concurrent(grpc_clients, per_client),
                "http": lambda: concurrent(http_clients, per_client),
            },
        )
        rows_texts = [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(args.rows)]
        seen: dict[str, list[tuple[float, int]]] = {"grpc": [], "http": []}
        for _ in range(args.repeats):
            seconds, size, grpc_rows = activations_grpc(running.port, rows_texts)
            seen["grpc"].append((seconds, size))
            seconds, size, http_rows = activations_http(http_port, rows_texts)
            seen["http"].append((seconds, size))
            assert grpc_rows.shape == http_rows.shape == (args.rows, grpc_rows.shape[1])
            np.testing.assert_allclose(http_rows, grpc_rows, atol=1e-5)
    finally:
        running.stop(None)
        registry.close()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}; {args.repeats} interleaved rounds (medians)\n"
    )
    print("| clients | gRPC Explain | HTTP :explain | HTTP / gRPC per request |")
    print("|---:|---:|---:|---:|")
    print(
        f"| 1 | {one['grpc'] * 1000:.1f} ms | {one['http'] * 1000:.1f} ms | "
        f"{one['http'] / one['grpc']:.3f} |"
    )
    print(
        f"| {args.clients} | {many['grpc']:.2f} req/s | {many['http']:.2f} req/s | "
        f"{many['grpc'] / many['http']:.3f} |"
    )
    grpc_s = statistics.median(s for s, _ in seen["grpc"])
    http_s = statistics.median(s for s, _ in seen["http"])
    grpc_b, http_b = seen["grpc"][0][1], seen["http"][0][1]
    print(f"\n| GetActivations, {args.rows} rows | seconds | MB on the wire |")
    print("|---|---:|---:|")
    print(f"| gRPC (protobuf, numpy) | {grpc_s:.2f} | {grpc_b / 1e6:.1f} |")
    print(f"| HTTP (NDJSON, base64) | {http_s:.2f} | {http_b / 1e6:.1f} |")
    print(f"| HTTP / gRPC | {http_s / grpc_s:.3f} | {http_b / grpc_b:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
