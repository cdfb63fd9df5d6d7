"""Scale-out on loopback: replicas of `explainserve serve` (separate processes, ports on
127.0.0.1) behind one client channel with gRPC's round_robin and client-side health checking
(`explainserve_client.Client(balance=True)`).

(a) spread: calls per replica, from each replica's own Prometheus metrics;
(b) drain: one replica gets SIGTERM while C threads keep calling; failed calls at the client,
    without retries (--drain-delay-s 2, then 0), and with the light client's retry policy;
(c) throughput: calls/s with 2 replicas vs 1, same load, measured in this run.

    .venv/bin/python bench/replicas.py [--quick] [--model NAME=DIR] [--calls 200]
        [--concurrency 8]

Without --model the replicas serve the embedded default model (MiniLM sentiment).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
# The light client is tested from its source tree, not installed (pyproject's pytest pythonpath).
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))

from explainserve.launch import Replica, balanced_target, spawn_replica  # noqa: E402
from explainserve_client import Client, pb  # noqa: E402

TEXT = "The staff were friendly, but the room was noisy and the breakfast was cold."


@dataclass
class Load:
    """Counts of one load run."""

    ok: int
    failed: list[str]
    seconds: float


def start(n: int, args: argparse.Namespace, drain_delay: float | None = None) -> list[Replica]:
    """`n` replicas, started one after the other (each prints its port once it serves)."""
    flags = ["--device", "cpu", "--log-level", "WARNING"]
    delay = args.drain_delay if drain_delay is None else drain_delay
    flags += ["--drain-delay-s", str(delay)]
    if args.model:
        flags += ["--model", args.model]
    replicas: list[Replica] = []
    try:
        for _ in range(n):
            replicas.append(spawn_replica(flags, timeout=600))
    except BaseException:
        for r in replicas:
            r.stop()
        raise
    return replicas


def request(args: argparse.Namespace) -> pb.ExplainRequest:
    """The request every call sends: occlusion of one sentence by word."""
    return pb.ExplainRequest(
        model=args.model_name,
        inputs=[pb.Input(text=TEXT)],
        occlusion=pb.Occlusion(),
        granularity=pb.GRANULARITY_WORD,
    )


def warm(client: Client, replicas: list[Replica], message: pb.ExplainRequest) -> None:
    """Calls until every replica has answered one (both connections READY and healthy)."""
    for _ in range(500):
        client.stub.Explain(message, timeout=120)
        if all(r.requests() > 0 for r in replicas):
            return
    raise RuntimeError("a replica never got a call")


def load(
    client: Client,
    message: pb.ExplainRequest,
    calls: int,
    concurrency: int,
    during: threading.Event | None = None,
) -> Load:
    """`calls` calls from `concurrency` threads; `during` is set once a third of them are done
    (a hook for the drain)."""
    lock = threading.Lock()
    failed: list[str] = []
    done = [0]
    issued = [0]

    def worker() -> None:
        while True:
            with lock:
                if issued[0] >= calls:
                    return
                issued[0] += 1
            try:
                client.stub.Explain(message, timeout=120)
            except grpc.RpcError as e:
                with lock:
                    failed.append(f"{e.code().name}: {e.details()}")
            else:
                with lock:
                    done[0] += 1
                    if during is not None and done[0] == calls // 3:
                        during.set()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(done[0], failed, time.perf_counter() - started)


def spread(args: argparse.Namespace) -> None:
    """(a) calls per replica."""
    replicas = start(2, args)
    try:
        message = request(args)
        with Client(balanced_target(replicas), balance=True) as client:
            warm(client, replicas, message)
            before = [r.requests() for r in replicas]
            result = load(client, message, args.calls, args.concurrency)
        counts = [r.requests() - b for r, b in zip(replicas, before, strict=True)]
    finally:
        for r in replicas:
            r.stop()
    print(
        f"(a) spread: {args.calls} calls, {args.concurrency} threads, 2 replicas: "
        f"{counts[0]} / {counts[1]} calls ({100 * counts[0] / max(sum(counts), 1):.1f} % / "
        f"{100 * counts[1] / max(sum(counts), 1):.1f} %), {len(result.failed)} failed"
    )


def drain(args: argparse.Namespace, retry: bool, drain_delay: float) -> None:
    """(b) SIGTERM to one of two replicas (`--drain-delay-s drain_delay`) a third of the way
    through the load."""
    replicas = start(2, args, drain_delay)
    first, second = replicas
    try:
        message = request(args)
        with Client(balanced_target(replicas), balance=True, retry=retry) as client:
            warm(client, replicas, message)
            third = threading.Event()
            exit_code: list[int] = []

            def terminate() -> None:
                third.wait()
                exit_code.append(second.stop(timeout=120))

            killer = threading.Thread(target=terminate)
            killer.start()
            before = first.requests()
            result = load(client, message, args.calls, args.concurrency, during=third)
            third.set()
            killer.join()
            survivor = first.requests() - before
    finally:
        for r in replicas:
            r.stop()
    reasons = sorted(set(result.failed))
    print(
        f"(b) drain, retry policy {'on' if retry else 'off'}, --drain-delay-s {drain_delay:g}: "
        f"{args.calls} calls, "
        f"{args.concurrency} threads, SIGTERM to replica 2 after {args.calls // 3}: "
        f"{result.ok} OK, {len(result.failed)} failed"
        + (f" ({'; '.join(reasons[:3])})" if reasons else "")
        + f"; replica 2 exited {exit_code[0] if exit_code else '?'}; replica 1 answered "
        f"{survivor}"
    )


def throughput(args: argparse.Namespace) -> None:
    """(c) calls/s with 1 and 2 replicas."""
    rates = {}
    for n in (1, 2):
        replicas = start(n, args)
        try:
            message = request(args)
            with Client(balanced_target(replicas), balance=True) as client:
                warm(client, replicas, message)
                result = load(client, message, args.calls, args.concurrency)
        finally:
            for r in replicas:
                r.stop()
        rates[n] = result.ok / result.seconds
        print(
            f"(c) {n} replica(s): {result.ok} calls in {result.seconds:.1f} s = "
            f"{rates[n]:.2f} calls/s ({len(result.failed)} failed)"
        )
    print(f"(c) throughput 2 replicas / 1 replica: {rates[2] / rates[1]:.2f}x")


def main() -> None:
    """Runs (a), (b) three times and (c)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="NAME=DIR (default: the embedded default model)")
    parser.add_argument("--calls", type=int, default=200, help="calls per scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--quick", action="store_true", help="60 calls per scenario")
    parser.add_argument(
        "--drain-delay", type=float, default=2.0, help="the replicas' --drain-delay-s"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls = 60
    args.model_name = args.model.partition("=")[0] if args.model else "minilm-sentiment"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}; model {args.model_name}; Python {platform.python_version()}"
    )
    spread(args)
    drain(args, retry=False, drain_delay=args.drain_delay)
    # Without the delay: calls that race the health update are refused (UNAVAILABLE), unless
    # the client's retry policy resends them.
    drain(args, retry=False, drain_delay=0.0)
    drain(args, retry=True, drain_delay=0.0)
    throughput(args)


if __name__ == "__main__":
    main()
