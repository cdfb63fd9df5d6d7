"""Load test with ghz: Explain and GetActivations against `explainserve serve` on loopback.

Installs ghz (`go install github.com/bojand/ghz/cmd/ghz@GHZ_VERSION`, through the Go module
proxy, into .make/bin) when it is missing, starts the server on the embedded default model (or
--model NAME=DIR), and runs bounded ghz scenarios (a number of calls and a time limit each):
requests/s, p50 / p99 latency and the distribution of status codes. ghz finds the methods by
server reflection. Below the queue bound every call should be OK.

    .venv/bin/python bench/load.py [--quick] [--calls 400] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from explainserve.launch import spawn_serve

ROOT = Path(__file__).resolve().parent.parent
GHZ_VERSION = "v0.120.0"
GHZ = ROOT / ".make" / "bin" / "ghz"
SERVICE = "explainserve.v1.ExplainService"
TEXT = "The staff were friendly, but the room was noisy and the breakfast was cold."


def ensure_ghz() -> Path:
    """ghz in .make/bin, installed with `go install` when missing."""
    if GHZ.exists():
        return GHZ
    go = shutil.which("go")
    if go is None:
        sys.exit("ghz needs Go to be installed (https://go.dev/dl/)")
    GHZ.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing ghz {GHZ_VERSION} into {GHZ.parent} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [go, "install", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
        check=True,
        env={**os.environ, "GOBIN": str(GHZ.parent)},
        timeout=900,
    )
    return GHZ


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], int]:
    command = [
        "--port",
        "0",
        "--device",
        args.device,
        "--max-concurrent-rpcs",
        str(max(256, args.concurrency + 2)),
        "--log-level",
        "WARNING",
    ]
    if args.model:
        command += ["--model", args.model]
    if args.max_queued_rows:
        command += ["--max-queued-rows", str(args.max_queued_rows)]
    try:
        return spawn_serve(
            command, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, timeout=600
        )
    except RuntimeError as err:
        sys.exit(str(err))


def run_ghz(
    ghz: Path, port: int, method: str, data: dict[str, object], args: argparse.Namespace
) -> dict[str, object]:
    command = [
        str(ghz),
        "--insecure",
        "--call",
        f"{SERVICE}/{method}",
        "--data",
        json.dumps(data),
        "--total",
        str(args.calls),
        "--concurrency",
        str(args.concurrency),
        "--connections",
        str(args.connections),
        "--timeout",
        "60s",
        "--format",
        "json",
        f"127.0.0.1:{port}",
    ]
    # Bounded by the number of calls, and in time by the subprocess timeout.
    out = subprocess.run(command, capture_output=True, text=True, timeout=args.max_seconds)
    if out.returncode != 0 and not out.stdout.strip():
        sys.exit(f"ghz failed: {out.stderr.strip()}")
    return dict(json.loads(out.stdout))


def percentile(report: dict[str, object], pct: int) -> float:
    for entry in report.get("latencyDistribution") or []:  # type: ignore[attr-defined]
        if int(entry["percentage"]) == pct:
            return float(entry["latency"]) / 1e6
    return float("nan")


def main() -> int:
    """Runs the scenarios and prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=400, help="calls per scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--max-seconds", type=int, default=300, help="time limit per scenario")
    parser.add_argument("--model", help="NAME=DIR (default: the embedded default model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="100 calls per scenario")
    parser.add_argument(
        "--max-queued-rows",
        type=int,
        help="the server's queue bound (default: its own); a small one shows the refusals",
    )
    parser.add_argument(
        "--only", help="run the scenarios whose request contains this text (e.g. lime)"
    )
    args = parser.parse_args()
    if args.quick:
        args.calls = 100
    name = args.model.split("=", 1)[0] if args.model else "minilm-sentiment"
    ghz = ensure_ghz()
    inputs = [{"text": TEXT}]
    scenarios = [
        ("Explain", "occlusion, 1 input", {"model": name, "inputs": inputs, "occlusion": {}}),
        (
            "Explain",
            "lime-64, 1 input",
            {"model": name, "inputs": inputs, "lime": {"nPerturbations": 64}},
        ),
        ("Explain", "saliency, 1 input", {"model": name, "inputs": inputs, "saliency": {}}),
        ("GetActivations", "head input, 8 inputs", {"model": name, "inputs": inputs * 8}),
    ]
    proc, port = start_server(args)
    try:
        print(
            f"# bench/load.py: ghz {GHZ_VERSION}, {args.calls} calls per scenario, concurrency "
            f"{args.concurrency}, {args.connections} connections, {os.cpu_count()} cpus, "
            f"device {args.device}, model {name}, loopback"
            + (f", queue bound {args.max_queued_rows} sequences" if args.max_queued_rows else "")
        )
        print()
        # ghz's latency percentiles are over the OK calls only; wall = the scenario's duration.
        print(
            "| RPC | request | calls | wall (s) | requests/s | p50 OK (ms) | p99 OK (ms) "
            "| status codes |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---|")
        for method, what, data in scenarios:
            if args.only and args.only not in what:
                continue
            report = run_ghz(ghz, port, method, data, args)
            codes = report.get("statusCodeDistribution") or {}
            spread = ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))  # type: ignore[attr-defined]
            print(
                f"| {method} | {what} | {report['count']} | "
                f"{float(report['total']) / 1e9:.1f} | {float(report['rps']):.1f} | "  # type: ignore[arg-type]
                f"{percentile(report, 50):.1f} | {percentile(report, 99):.1f} | {spread} |",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
