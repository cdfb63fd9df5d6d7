"""Latency under mixed traffic: small requests while a huge one runs, in one run.

One client sends a huge request (KernelSHAP with `--huge-rows` coalitions on a long text: one
input, that many sequences through the model); meanwhile small requests (Occlusion of one short
sentence, a dozen sequences) arrive from `--small-clients` other clients as an open-loop stream,
`--rate` per second in all at random (Poisson, fixed seed) times, until the huge one is done. A
small request's latency counts from its arrival time, not from when a client got round to
sending it, and the stream does not slow down when the server does: the small requests bring the
same work whichever way the server schedules them, so the huge request's slowdown compares
schedules, not how many small requests a faster one let the clients send. (A closed loop of
clients that wait for each answer would send more requests the better small-request latency is,
and the huge request would pay for them.) Measured, in one run, on one live server on loopback
(each client with its own channel):

- idle: the small requests alone, one by one (median and p99 latency);
- huge alone: the huge request with nothing else running;
- mixed: the small requests' p50 / p99 while the huge one runs, and the huge one's time;
  alone and mixed alternate `--repeats` times (the slowdown is the median of the pairs), and
  each mixed run also reports the time of the small requests' own batches, the model time they
  bring whatever the schedule: the slowdown beyond it is what scheduling costs the huge one;
- the mean time of the batches that hold the huge request's rows, alone and mixed: once the
  huge request is under way its batches are cut to 1.5 x `max_batch_ms` by the cost model's
  estimate (a small request's own batch then takes at most 0.5 x more: `policy.LONG_BATCH`,
  `FIRST_FILL`), and under load (the small requests' gRPC and explain work share the CPU) they
  overrun it, which the small requests then wait for.

The goal (issue 12, on a 2-core CPU): small p99 <= idle p99 + 2 x max_batch_ms, and the huge
request slowed by at most 15 % against running alone. The small requests' own work takes model
time too; the report gives their share so the slowdown can be read against it. `--max-batch-ms 0`
runs without a time bound (batches cut by the token budget alone: the behaviour before it).

On an accelerator (`--device cuda`, bench/gpu.sh) the same shape would say little: a GPU runs
this model ~100x faster than the 2-core CPU the defaults were set on, so KernelSHAP-512 would
be over in a few batches and a fraction of a second, with hardly a small request beside it. There
the huge request is sized instead by `--huge-seconds` (default 2): probes of growing size time
it, and its coalitions are scaled so that it runs about that long alone (dozens of batches at
least: `max_batch_ms` is 30 there), and the stream is 10x denser (`--rate` 20), so that a
mixed run sees about as many small requests (~40) as one on the CPU does (~2/s over ~20 s). The
CPU defaults (512 coalitions, 2/s) are those bench/RESULTS.md's figures were taken with.

`--huge-method integrated_gradients` makes the huge request one Integrated Gradients request on
the same text instead, with `--huge-rows` as its steps (one gradient row, forward + backward, per
step: 200 by default on a CPU, ~20 s alone on the 2-core CPU, where a 129-token gradient row
takes ~0.1 s and makes a batch of its own); its batches are of kind "gradient", and the cost
fit printed is that kind's. `--small-method saliency` makes the small requests Saliency of one
sentence (one gradient row each), so that gradient small requests beside a gradient huge one
can be measured: both then compete for the same kind of batch. `--huge-seconds` sizes either
method (steps instead of coalitions, from a smaller first probe for IG).

    .venv/bin/python bench/mixed.py [--huge-rows 512 | --huge-seconds S] [--small-clients 2]
        [--huge-method kernel_shap|integrated_gradients] [--small-method occlusion|saliency]
        [--rate 2] [--max-batch-ms 100] [--no-calibrate] [--device cpu|cuda] [--dtype bfloat16]
        [--model-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import numpy as np
import torch

from explainserve.cli import warm_up
from explainserve.explain.limits import Limits
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.jobs import Job
from explainserve.scheduling.options import WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: About 120 tokens: the huge request's text.
LONG_TEXT = (
    "The hotel was in a great location, close to the station and the old town, and the staff "
    "at the front desk were friendly and quick to help with every question we had. The room "
    "itself was small but spotless, the bed was comfortable and the shower had good pressure. "
    "Breakfast was the weak point: the coffee was lukewarm, the bread was stale on two of the "
    "three mornings, and the eggs ran out before nine. The noise from the street kept us awake "
    "on Friday night, although the windows were double glazed. Overall we would stay again for "
    "the price and the location, but we would eat breakfast somewhere else."
)
SMALL_TEXTS = [
    "The food was great.",
    "Terrible service, never again.",
    "I loved every minute of it!",
    "Not worth the money.",
    "Friendly staff and quick delivery.",
    "It broke on the second day.",
]
#: `--huge-seconds`: the first probe's coalitions, and the most the huge request is given (under
#: `Limits.max_rows_per_input`, 50,000 sequences per input: IG's steps count against it too, one
#: row per step and target, and the huge IG request has one target).
PROBE_ROWS = 512
MAX_HUGE_ROWS = 49_152


@dataclasses.dataclass(frozen=True)
class HugeMethod:
    """What `--huge-method` sends: a name for the report, the batch kind its rows run in, its CPU
    defaults (`--huge-rows`, and with `--quick`) and the first probe of `--huge-seconds`."""

    title: str
    kind: str
    cpu_rows: int
    quick_rows: int
    probe_rows: int


HUGE_METHODS = {
    # The defaults bench/RESULTS.md's KernelSHAP figures were taken with.
    "kernel_shap": HugeMethod("KernelSHAP", "forward", 512, 128, PROBE_ROWS),
    # A gradient row of the 129-token text takes ~0.1 s on the 2-core CPU (forward + backward:
    # fit 39 ms + 0.46 ms per token, one row a batch under the 256-token cap of max_batch_ms 100
    # x 1.5): 24 steps ran 2.5 s alone, 24 one-row batches (2026-11-29), so 200 steps ~20 s. The
    # first probe is small so that `--huge-seconds` on a CPU does not start with a long request.
    "integrated_gradients": HugeMethod("IntegratedGradients", "gradient", 200, 24, 64),
}
#: `--small-method`: the report's name of the small requests' method.
SMALL_METHODS = {"occlusion": "Occlusion", "saliency": "Saliency"}


def huge_request(method: str, rows: int, priority: str) -> pb.ExplainRequest:
    """The huge request: `method` on the long text, `rows` coalitions (KernelSHAP) or steps
    (Integrated Gradients: one gradient row per step for its one target)."""
    params: dict[str, Any]
    if method == "kernel_shap":
        params = {"kernel_shap": pb.KernelShap(n_perturbations=rows)}
    elif method == "integrated_gradients":
        params = {"integrated_gradients": pb.IntegratedGradients(n_steps=rows)}
    else:
        raise ValueError(f"unknown huge method {method!r}")
    return pb.ExplainRequest(
        model="bench",
        inputs=[pb.Input(text=LONG_TEXT)],
        priority=pb.PRIORITY_BATCH if priority == "batch" else pb.PRIORITY_INTERACTIVE,
        **params,
    )


def small_request(method: str, i: int) -> pb.ExplainRequest:
    """The `i`-th small request: `method` (Occlusion: a dozen forward rows; Saliency: one
    gradient row) of one short sentence."""
    params: dict[str, Any]
    if method == "occlusion":
        params = {"occlusion": pb.Occlusion()}
    elif method == "saliency":
        params = {"saliency": pb.Saliency()}
    else:
        raise ValueError(f"unknown small method {method!r}")
    return pb.ExplainRequest(
        model="bench", inputs=[pb.Input(text=SMALL_TEXTS[i % len(SMALL_TEXTS)])], **params
    )


class HugeBatches:
    """The worker's fault hook and observer: the run time of each batch holding rows of a job of
    at least `min_rows` rows (the huge request's), and of every other batch, while `recording`."""

    def __init__(self, min_rows: int) -> None:
        self.min_rows = min_rows
        self.recording = False
        self.seconds: list[float] = []
        self.others: list[float] = []
        #: Padded tokens of the batches with the huge request's rows, ever.
        self.huge_tokens = 0
        self._huge = False

    def hook(self, pieces: Sequence[tuple[Job[Any], int, int]]) -> None:
        self._huge = any(job.n_rows >= self.min_rows for job, _, _ in pieces)

    def queued(self, kind: str, seconds: float) -> None:
        pass

    def request_queued(self, priority: str, seconds: float) -> None:
        pass

    def batch(
        self, kind: str, rows: int, padded: int, real: int, budget: int, seconds: float
    ) -> None:
        if self._huge:
            self.huge_tokens += padded
        if self.recording:
            (self.seconds if self._huge else self.others).append(seconds)

    def take(self) -> tuple[list[float], list[float]]:
        """The times recorded so far of the batches with the huge request's rows and of the
        others (the small requests' own batches), and a fresh start."""
        out, self.seconds, others, self.others = self.seconds, [], self.others, []
        return out, others


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (linear interpolation, as numpy)."""
    return float(np.percentile(np.asarray(values), q))


def sized_rows(
    time_huge: Callable[[int], float], seconds: float, first: int = PROBE_ROWS
) -> tuple[int, str]:
    """The rows (KernelSHAP coalitions, IG steps) for a huge request that runs about `seconds`
    alone, and how they were found. Probes of `first` rows, then 4x as many until one takes at
    least a quarter of `seconds` (a probe much shorter than that is mostly fixed costs per
    request, which would undersize it); the last probe's rate scales to `seconds`, in multiples
    of 64."""
    rows = first
    time_huge(rows)  # warm-up: the first call of a shape pays for lazy initialisation
    took = time_huge(rows)
    while took < seconds / 4 and rows < MAX_HUGE_ROWS:
        rows = min(4 * rows, MAX_HUGE_ROWS)
        took = time_huge(rows)
    sized = min(MAX_HUGE_ROWS, max(64, round(rows * seconds / took / 64) * 64))
    return sized, f"sized to ~{seconds:g} s alone: a probe of {rows} took {took:.2f} s"


def main() -> int:
    """Runs the benchmark and prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--huge-rows",
        type=int,
        help="KernelSHAP coalitions or IG steps (default on a CPU: 512 coalitions, 200 steps; "
        "else sized by --huge-seconds)",
    )
    parser.add_argument(
        "--huge-method",
        choices=tuple(HUGE_METHODS),
        default="kernel_shap",
        help="the huge request's method (integrated_gradients: gradient batches)",
    )
    parser.add_argument(
        "--small-method",
        choices=tuple(SMALL_METHODS),
        default="occlusion",
        help="the small requests' method (saliency: one gradient row each)",
    )
    parser.add_argument(
        "--huge-seconds",
        type=float,
        help="size the huge request to run about this long alone, from timed probes "
        "(default on an accelerator: 2; 1 with --quick)",
    )
    parser.add_argument("--small-clients", type=int, default=2)
    parser.add_argument(
        "--rate",
        type=float,
        help="small requests per second, all clients together (default: 2 on a CPU, else 20)",
    )
    parser.add_argument("--idle-calls", type=int, help="default 30 (10 with --quick)")
    parser.add_argument(
        "--repeats", type=int, help="huge alone / mixed pairs, interleaved (default 2, --quick 1)"
    )
    parser.add_argument("--max-batch-ms", type=float, help="default: the worker's (by device)")
    parser.add_argument("--model-dir", type=Path, help="default: the embedded default model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 10 idle calls, 1 pair, KernelSHAP-128 or IG-24 on a CPU (~1 s "
        "elsewhere)",
    )
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the warm-up and batch-size calibration that `explainserve serve` runs",
    )
    parser.add_argument(
        "--priority",
        choices=("interactive", "batch"),
        default="interactive",
        help="the huge request's priority",
    )
    args = parser.parse_args()
    on_cpu = torch.device(args.device).type == "cpu"
    method = HUGE_METHODS[args.huge_method]
    if args.huge_rows is None and args.huge_seconds is None:
        if on_cpu:
            args.huge_rows = method.quick_rows if args.quick else method.cpu_rows
        else:
            args.huge_seconds = 1.0 if args.quick else 2.0
    if args.rate is None:
        args.rate = 2.0 if on_cpu else 20.0
    if args.idle_calls is None:
        args.idle_calls = 10 if args.quick else 30
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
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
            worker=WorkerOptions(
                token_budget=args.token_budget,
                max_batch_ms=args.max_batch_ms,
                calibrate=not args.no_calibrate,
            ),
        )
    )
    registry.add(served)
    explainer = Explainer(registry, Limits())
    if not args.no_calibrate:
        # As `explainserve serve` starts: warm-up explanations, then the batch-size calibration.
        warm_up(explainer, "bench")
        print(f"calibration: {served.worker.calibration}")
    worker = served.worker
    huge_batches_seen = HugeBatches(max(2, (args.huge_rows or method.probe_rows) // 2))
    worker.fault_hook = huge_batches_seen.hook
    worker.observer = huge_batches_seen
    running = start(ServerOptions(port=0), explainer)
    target = f"127.0.0.1:{running.port}"
    channels = [grpc.insecure_channel(target) for _ in range(args.small_clients + 1)]
    stubs = [explain_pb2_grpc.ExplainServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]

    def huge_of(rows: int) -> pb.ExplainRequest:
        return huge_request(args.huge_method, rows, args.priority)

    def small(i: int) -> pb.ExplainRequest:
        return small_request(args.small_method, i)

    def timed_call(
        stub: explain_pb2_grpc.ExplainServiceStub, request: pb.ExplainRequest
    ) -> tuple[float, int]:
        t0 = time.perf_counter()
        reply = stub.Explain(request, timeout=600)
        return time.perf_counter() - t0, sum(e.counters.forward_passes for e in reply.explanations)

    try:
        # Warm-up: the cost model learns from these batches too.
        for i in range(10):
            timed_call(stubs[0], small(i))
        sizing = ""
        if args.huge_rows is None:
            # The probes are the huge request's warm-up.
            args.huge_rows, sizing = sized_rows(
                lambda rows: timed_call(stubs[0], huge_of(rows))[0],
                args.huge_seconds,
                method.probe_rows,
            )
            sizing = f", {sizing}"
            huge_batches_seen.min_rows = max(2, args.huge_rows // 2)
        huge = huge_of(args.huge_rows)
        if not sizing:
            timed_call(stubs[0], huge)
        idle = [timed_call(stubs[0], small(i))[0] for i in range(args.idle_calls)]
        huge_rows = 0

        def alone() -> tuple[float, int, list[float]]:
            """The huge request with nothing else running: seconds, batches, batch times."""
            nonlocal huge_rows
            batches0 = worker.stats.batches
            huge_batches_seen.recording = True
            seconds, huge_rows = timed_call(stubs[0], huge)
            huge_batches_seen.recording = False
            return seconds, worker.stats.batches - batches0, huge_batches_seen.take()[0]

        def mixed() -> tuple[float, list[float], list[float], list[float], float, float]:
            """The huge request beside the stream: its seconds, the small requests' latencies,
            the huge request's batch times and the other batches' (the small requests' own),
            the small requests' share of the tokens and the worker's busy / wall."""
            done = threading.Event()
            latencies: list[float] = []
            lock = threading.Lock()
            pool = ThreadPoolExecutor(max_workers=4 * args.small_clients + 4)
            huge_done = [float("inf")]  # when the huge request's answer came

            def send(i: int, arrival: float) -> None:
                timed_call(stubs[1 + i % args.small_clients], small(i))
                end = time.perf_counter()
                with lock:
                    if arrival <= huge_done[0]:  # it arrived while the huge one ran
                        # From its arrival: a request the pool sent late still counts its wait.
                        latencies.append(end - arrival)

            def stream() -> None:
                """Open loop: arrivals at Poisson times, whatever the answers take."""
                arrivals = random.Random(1234 + len(runs))
                i, at = 0, time.perf_counter()
                while not done.is_set():
                    at += arrivals.expovariate(args.rate)
                    if done.wait(max(0.0, at - time.perf_counter())):
                        break
                    pool.submit(send, i, at)
                    i += 1

            sender = threading.Thread(target=stream)
            busy0, tokens0 = worker.stats.busy_seconds, worker.stats.padded_tokens
            huge_tokens0 = huge_batches_seen.huge_tokens
            huge_batches_seen.recording = True
            t0 = time.perf_counter()
            sender.start()
            seconds, _ = timed_call(stubs[0], huge)
            with lock:
                huge_done[0] = time.perf_counter()
            done.set()
            sender.join()
            pool.shutdown(wait=True)
            wall = time.perf_counter() - t0
            huge_batches_seen.recording = False
            huge_s, other_s = huge_batches_seen.take()
            tokens = worker.stats.padded_tokens - tokens0
            huge_tokens = huge_batches_seen.huge_tokens - huge_tokens0
            share = 1 - huge_tokens / max(tokens, 1)
            busy = (worker.stats.busy_seconds - busy0) / wall
            return seconds, latencies, huge_s, other_s, share, busy

        runs: list[tuple[tuple[float, int, list[float]], tuple[Any, ...]]] = []
        for _ in range(args.repeats):
            runs.append((alone(), mixed()))
        latencies = [x for _, m in runs for x in m[1]]
        bound = worker.max_batch_seconds
        caps = worker.time_caps()
        fit = worker.cost.fit(method.kind)
        # The time cap never goes below the cost model's overhead floor (`cost.MAX_OVERHEAD`):
        # where the measured fixed cost per batch is near max_batch_ms, the floor decides.
        fit_text = (
            "none"
            if fit is None
            else f"{fit.intercept * 1000:.1f} ms + {fit.slope * 1e6:.1f} us/token, "
            f"floor {fit.tokens_within(0.0)} tokens"
        )
        print(
            f"# bench/mixed.py on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cpus, torch {torch.__version__}, device {args.device} "
            f"({args.dtype}), model {args.model_dir.name}; huge: {method.title}-{args.huge_rows} "
            f"on a {len(served.tokenizer(LONG_TEXT)['input_ids'])}-token text ({huge_rows} "
            f"sequences, priority {args.priority}{sizing}); small: "
            f"{SMALL_METHODS[args.small_method]} of one sentence, "
            f"{args.rate:g}/s from {args.small_clients} clients (open loop); max_batch_ms "
            f"{'off' if bound is None else f'{bound * 1000:.0f}'}; token budget "
            f"{args.token_budget}; time caps (tokens) {dict(caps)}; {method.kind} cost fit "
            f"{fit_text}"
        )
        print()
        print("| measurement | value |")
        print("|---|---:|")
        print(
            f"| small, idle: p50 / p99 (s) | {statistics.median(idle):.3f} / "
            f"{percentile(idle, 99):.3f} |"
        )
        if latencies:
            print(
                f"| small, beside the huge one: p50 / p99 (s), {len(latencies)} calls | "
                f"{statistics.median(latencies):.3f} / {percentile(latencies, 99):.3f} |"
            )
        for k, ((a_s, a_batches, a_times), (m_s, lat, m_times, o_times, share, busy)) in enumerate(
            runs, 1
        ):
            print(f"| run {k}: huge alone (s), {a_batches} batches | {a_s:.2f} |")
            print(
                f"| run {k}: huge beside the small ones (s), {len(lat)} small calls | {m_s:.2f} |"
            )
            print(f"| run {k}: huge slowed | {m_s / a_s - 1:+.1%} |")
            print(
                f"| run {k}: the small requests' own batches, {len(o_times)}: seconds, share of "
                f"the huge request's time alone | {sum(o_times):.2f}, {sum(o_times) / a_s:.1%} |"
            )
            print(
                f"| run {k}: huge slowed beyond the small requests' own batches | "
                f"{(m_s - sum(o_times)) / a_s - 1:+.1%} |"
            )
            for label, times in (("alone", a_times), ("mixed", m_times)):
                if times:
                    print(
                        f"| run {k}: huge request's batches {label}: mean / max (s), "
                        f"{len(times)} batches | {statistics.mean(times):.3f} / {max(times):.3f} |"
                    )
            print(f"| run {k}: small requests' share of the tokens run while mixed | {share:.1%} |")
            print(f"| run {k}: worker busy / wall while mixed | {busy:.2f} |")
        slowed = statistics.median(m[0] / a[0] - 1 for a, m in runs)
        print(f"| huge slowed, median of the {len(runs)} runs | {slowed:+.1%} |")
        print()
        if bound is not None and latencies:
            goal = percentile(idle, 99) + 2 * bound
            print(
                f"goal small p99 <= idle p99 + 2 x max_batch_ms = {goal:.3f} s: "
                f"{'met' if percentile(latencies, 99) <= goal else 'missed'} "
                f"({percentile(latencies, 99):.3f} s over {len(latencies)} calls); "
                f"goal huge slowed <= 15% (median of the runs, {slowed:+.1%}): "
                f"{'met' if slowed <= 0.15 else 'missed'}"
            )
        if torch.device(args.device).type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"\n# peak GPU memory: {peak:.2f} GiB", flush=True)
    finally:
        for c in channels:
            c.close()
        running.stop(grace=None)
        registry.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
