"""GetActivations end to end through gRPC vs the model alone to the same depth, in one run.

For each configuration, a request with N realistic sentences (the default model's shipped
sentiment sentences, cycled) streams through a live server on loopback; the client, in a process
of its own as a sidecar's client would be, reads every chunk (it counts the bytes, it does not
decode them). Then the same token sequences go straight
through the bare model, sorted by length and packed into padded batches, stopped by a hook at the
same split point (no layer after it runs). The model-only batches use the token budget (of 8192,
4096, 2048, 1024) at which the bare model is fastest for that configuration, picked before the
timed repeats (best of three interleaved runs each): on a small CPU, batches that fit the caches
win, so the best budget is not the biggest. The server's token budget is picked the same way once,
on the default split point, as an operator would configure it for the machine. Repeats are
interleaved (end to end, then model only, R times) and medians reported; the efficiency is the
median of the R pairs' ratios, so a burst of load from another process on a shared machine moves
it less than the times.

    efficiency = model-only time / end-to-end time   (1.0 = the service adds nothing)
    CPU eff.   = the same with the CPU time the server's process used (all its threads, the
                 model's included; not the client's): less sensitive to other processes on a
                 shared machine (not immune: they share the caches)
    inputs/s   = N / end-to-end time
    stream     = bytes of tensor data received / end-to-end time

    .venv/bin/python bench/activations.py [--quick] [--inputs N] [--repeats R] [--token-budget T]
                                           [--model-dir DIR] [--device cpu|cuda] [--only TEXT]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import torch

from explainserve.activations.service import Activator
from explainserve.explain.limits import Limits
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models.capture import INPUT_SUFFIX, StopForward
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.options import WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

MAX_ROWS = 512
#: Token budgets the calibration tries; server and baseline use the fastest.
BASELINE_BUDGETS = (8192, 4096, 2048, 1024)


@dataclass(frozen=True)
class Config:
    """One benchmarked request shape."""

    label: str
    split_points: list[str]
    granularity: int = pb.ACTIVATION_GRANULARITY_CLS_TOKEN
    predictions: bool = False
    omit_units: bool = False


def configs(served: ServedModel) -> list[Config]:
    """The head input (the default), half depth at two granularities (all tokens with and
    without units), words at the last layer, and the head input with predictions (a whole
    forward pass)."""
    layers = sorted(
        {n for n, _ in served.split_points if n.count(".") == 3 and ".layer." in n},
        key=lambda n: int(n.rsplit(".", 1)[1]),
    )
    mid, last = layers[len(layers) // 2 - 1], layers[-1]
    head = served.head_input or layers[-1]
    return [
        Config(f"{head} (default), cls_token", []),
        Config(f"{mid}, cls_token", [mid]),
        Config(f"{mid}, all_tokens", [mid], pb.ACTIVATION_GRANULARITY_ALL_TOKENS),
        Config(
            f"{mid}, all_tokens, omit_units",
            [mid],
            pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
            omit_units=True,
        ),
        Config(f"{last}, word (mean)", [last], pb.ACTIVATION_GRANULARITY_WORD),
        Config(f"{head} + predictions", [], predictions=True),
    ]


def sentences(n: int) -> list[str]:
    """`n` sentences: the default model's training and held-out sentences, cycled."""
    from explainserve.models.default_model import HELDOUT_FILE, TRAIN_FILE, read_dataset

    pool = [*read_dataset(TRAIN_FILE).texts, *read_dataset(HELDOUT_FILE).texts]
    return [pool[i % len(pool)] for i in range(n)]


def model_only(
    served: ServedModel, texts: list[str], config: Config, budget: int
) -> Callable[[], None]:
    """A closure running the inputs through the bare model, packed by length into full batches
    of `budget` tokens, stopped right after the split point (unless predictions)."""
    model = served.model
    device = served.device
    rows = sorted(
        (served.tokenizer(t)["input_ids"] for t in texts),
        key=len,
    )
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    at = 0
    while at < len(rows):
        take = 1
        while (
            at + take < len(rows)
            and take < MAX_ROWS
            and (take + 1) * len(rows[at + take]) <= budget
        ):
            take += 1
        chunk = rows[at : at + take]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), served.runner.pad_id, dtype=torch.long)
        att = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.as_tensor(r)
            att[i, : len(r)] = 1
        batches.append((ids, att))
        at += take
    point = (config.split_points or [served.head_input or ""])[0]
    modules = dict(model.named_modules())

    def stop(*_args: Any) -> None:
        raise StopForward

    def run() -> None:
        handle = None
        if not config.predictions:
            if point.endswith(INPUT_SUFFIX):
                handle = modules[point.removesuffix(INPUT_SUFFIX)].register_forward_pre_hook(stop)
            else:
                handle = modules[point].register_forward_hook(stop)
        try:
            with torch.inference_mode():
                for ids, att in batches:
                    with contextlib.suppress(StopForward):
                        model(input_ids=ids.to(device), attention_mask=att.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            if handle is not None:
                handle.remove()

    return run


def timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, process CPU seconds and the result of `run()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def client_loop(conn: Connection, port: int) -> None:
    """The client process: for each serialized request received, streams it to the end and
    sends back (chunks, tensor bytes); stops on an empty message."""
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    while payload := conn.recv_bytes():
        request = pb.GetActivationsRequest.FromString(payload)
        n_bytes = 0
        n_chunks = 0
        for chunk in stub.GetActivations(request, timeout=3600):
            n_chunks += 1
            n_bytes += sum(len(a.values.data) for a in chunk.activations)
        conn.send((n_chunks, n_bytes))
    channel.close()


def end_to_end(conn: Connection, request: pb.GetActivationsRequest) -> tuple[int, int]:
    """Chunks and tensor bytes of one streamed request, read to the end by the client process."""
    conn.send_bytes(request.SerializeToString())
    result: tuple[int, int] = conn.recv()
    return result


def calibrate(served: ServedModel, texts: list[str], config: Config, quiet: bool = False) -> int:
    """The token budget (of BASELINE_BUDGETS) at which the bare model runs `config` fastest on
    this machine (best of three interleaved runs each)."""
    runs = [(model_only(served, texts, config, budget), budget) for budget in BASELINE_BUDGETS]
    best: dict[int, float] = {}
    for _ in range(3):  # interleaved, the best of three
        for run, budget in runs:
            best[budget] = min(best.get(budget, float("inf")), timed(run)[0])
    timings = [(t, b) for b, t in best.items()]
    if not quiet:
        print(
            "server token budget calibration (model only, default split point): "
            + ", ".join(f"{b}: {t:.2f} s" for t, b in sorted(timings, key=lambda x: -x[1]))
        )
    return min(timings)[1]


def main() -> int:
    """Runs the benchmark and prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 inputs, 2 repeats")
    parser.add_argument("--inputs", type=int, default=0, help="default 1000 (300 with --quick)")
    parser.add_argument("--repeats", type=int, default=0, help="default 5 (2 with --quick)")
    parser.add_argument(
        "--token-budget", type=int, default=0, help="default: the fastest for the bare model"
    )
    parser.add_argument("--model-dir", type=Path, help="default: the embedded default model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--only", default="", help="run the rows whose label contains this")
    args = parser.parse_args()
    n_inputs = args.inputs or (300 if args.quick else 1000)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.model_dir is None:
        from explainserve.models.default_model import default_model_dir

        args.model_dir = default_model_dir()
    texts = sentences(n_inputs)
    budget = args.token_budget
    if not budget:
        probe = load_model(
            ModelConfig("probe", args.model_dir, device=args.device, dtype=args.dtype)
        )
        budget = calibrate(probe, texts, Config("default", []))
        probe.close()
        del probe
    registry = Registry()
    served = load_model(
        ModelConfig(
            "bench",
            args.model_dir,
            device=args.device,
            dtype=args.dtype,
            worker=WorkerOptions(token_budget=budget, max_batch_rows=MAX_ROWS),
        )
    )
    registry.add(served)
    running = start(ServerOptions(port=0), Explainer(registry, Limits()), Activator(registry))
    conn, child_conn = multiprocessing.Pipe()
    client = multiprocessing.get_context("spawn").Process(
        target=client_loop, args=(child_conn, running.port), daemon=True
    )
    client.start()
    tokens = sum(len(served.tokenizer(t)["input_ids"]) for t in texts)
    print(
        f"# bench/activations.py on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device {args.device}, {n_inputs} inputs ({tokens} tokens), server token budget "
        f"{budget}, {repeats} interleaved repeats, medians"
    )
    print()
    print(
        "| split point, granularity | chunks | MiB streamed | end-to-end (s) | model only (s) "
        "| model-only budget | efficiency | CPU eff. | inputs/s | stream MiB/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for config in [c for c in configs(served) if args.only in c.label]:
            request = pb.GetActivationsRequest(
                model="bench",
                inputs=[pb.Input(text=t) for t in texts],
                split_points=config.split_points,
                granularity=config.granularity,  # type: ignore[arg-type]
                include_predictions=config.predictions,
                omit_units=config.omit_units,
            )
            end_to_end(conn, request)  # warm-up
            bare_budget = calibrate(served, texts, config, quiet=True)
            bare = model_only(served, texts, config, bare_budget)
            e2e, alone, e2e_cpu, alone_cpu = [], [], [], []
            n_chunks = n_bytes = 0
            for _ in range(repeats):
                wall, cpu, (n_chunks, n_bytes) = timed(partial(end_to_end, conn, request))
                e2e.append(wall)
                e2e_cpu.append(cpu)
                wall, cpu, _ = timed(bare)
                alone.append(wall)
                alone_cpu.append(cpu)
            m_e2e, m_alone = statistics.median(e2e), statistics.median(alone)
            efficiency = statistics.median(a / e for a, e in zip(alone, e2e, strict=True))
            cpu_eff = statistics.median(a / e for a, e in zip(alone_cpu, e2e_cpu, strict=True))
            print(
                f"| {config.label} | {n_chunks} | {n_bytes / 2**20:.1f} | {m_e2e:.3f} "
                f"| {m_alone:.3f} | {bare_budget} | {efficiency:.2f} | {cpu_eff:.2f} "
                f"| {n_inputs / m_e2e:.0f} | {n_bytes / 2**20 / m_e2e:.1f} |",
                flush=True,
            )
    finally:
        conn.send_bytes(b"")
        client.join(timeout=30)
        running.stop(grace=None)
        registry.close()
        if torch.device(args.device).type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"\n# peak GPU memory: {peak:.2f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
