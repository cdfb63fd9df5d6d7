"""Prometheus metrics, served on their own HTTP port (`metrics_port`).

Per RPC: requests by RPC, explanation method, model, status code and protocol (gRPC or HTTP),
and their latency. Per model worker: how long jobs wait in the queue, how long batches compute,
how full batches are (padded tokens / token budget) and how much of them is padding, sequences
(forward passes) run, the queue depth and the worker's fault counters; serialization time per
RPC and protocol; device memory on CUDA. Each server owns its registry (tests start several).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from explainserve.models.registry import Registry

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Finer around the time bound of a batch (tens to hundreds of milliseconds).
BATCH_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 10.0)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.5)


class _WorkerCollector(Collector):
    """Reads every worker's counters and queue depth, and CUDA memory, at scrape time."""

    def __init__(self, models: Registry) -> None:
        self.models = models

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily(
            "explainserve_queue_rows", "Sequences waiting in the model's queue", labels=["model"]
        )
        counters = {
            "rows": ("explainserve_forward_passes", "Sequences run through the model"),
            "batches": ("explainserve_batches", "Batches run (out-of-memory retries included)"),
            "oom_splits": ("explainserve_oom_splits", "Batches split after running out of memory"),
            "failed_jobs": ("explainserve_failed_jobs", "Jobs failed by an error of their own"),
            "cancelled_rows": (
                "explainserve_cancelled_rows",
                "Sequences dropped unrun because their request was cancelled or timed out",
            ),
            "dropped_rows": (
                "explainserve_dropped_rows",
                "Sequences dropped unrun because another input of their request failed",
            ),
            "rejected": ("explainserve_rejected", "Submissions refused because the queue was full"),
            "real_tokens": (
                "explainserve_tokens_run",
                "Tokens of the inputs run through the model (with prefix reuse, only the cached "
                "prefixes, once, and the suffixes)",
            ),
            "naive_tokens": (
                "explainserve_naive_tokens",
                "Tokens the same sequences would have cost each run in full",
            ),
            "calibration_batches": (
                "explainserve_calibration_batches",
                "Batches run by the warm-up calibration of batch sizes",
            ),
        }
        families = {
            k: CounterMetricFamily(name, doc, labels=["model"])
            for k, (name, doc) in counters.items()
        }
        cost = {
            "intercept": GaugeMetricFamily(
                "explainserve_batch_cost_intercept_seconds",
                "Learnt fixed cost of a batch (seconds ~ intercept + slope x tokens)",
                labels=["model", "kind"],
            ),
            "slope": GaugeMetricFamily(
                "explainserve_batch_cost_seconds_per_token",
                "Learnt cost of a batch per token, padding counted",
                labels=["model", "kind"],
            ),
            "cap": GaugeMetricFamily(
                "explainserve_batch_time_cap_tokens",
                "Tokens a batch of requests under way may hold under the time bound "
                "(1.5 x max_batch_ms)",
                labels=["model", "kind"],
            ),
            "batch_cap": GaugeMetricFamily(
                "explainserve_batch_cap_tokens",
                "Tokens a batch shared between requests may hold now: the least of the memory "
                "bound, the time bound and batch_tokens or the measured throughput optimum",
                labels=["model", "kind"],
            ),
            "optimum": GaugeMetricFamily(
                "explainserve_batch_optimum_tokens",
                "The batch size (tokens) measured to run the most tokens per second",
                labels=["model", "kind"],
            ),
            "rate": GaugeMetricFamily(
                "explainserve_batch_tokens_per_second",
                "Measured throughput of batches of a size class (median of the last 5)",
                labels=["model", "kind", "tokens"],
            ),
        }
        for model in self.models.list():
            stats = model.worker.stats
            depth.add_metric([model.name], model.worker.queued_rows)
            for k, family in families.items():
                family.add_metric([model.name], getattr(stats, k))
            for kind, fit in model.worker.cost.fits().items():
                cost["intercept"].add_metric([model.name, kind], fit.intercept)
                cost["slope"].add_metric([model.name, kind], fit.slope)
            for kind, cap in model.worker.time_caps().items():
                cost["cap"].add_metric([model.name, kind], cap)
            for sizes in model.worker.batch_sizes():
                cost["batch_cap"].add_metric([model.name, sizes.kind], sizes.cap)
                if sizes.optimum:
                    cost["optimum"].add_metric([model.name, sizes.kind], sizes.optimum)
                for rate in sizes.rates:
                    cost["rate"].add_metric(
                        [model.name, sizes.kind, str(rate.tokens)], rate.tokens_per_second
                    )
        yield depth
        yield from families.values()
        yield from cost.values()
        import torch

        if torch.cuda.is_available():
            memory = GaugeMetricFamily(
                "explainserve_gpu_memory_bytes",
                "CUDA memory held by torch",
                labels=["device", "kind"],
            )
            for i in range(torch.cuda.device_count()):
                memory.add_metric([str(i), "allocated"], torch.cuda.memory_allocated(i))
                memory.add_metric([str(i), "reserved"], torch.cuda.memory_reserved(i))
            yield memory


class _WorkerObserver:
    """A worker's `Observer`: its timings into the histograms, labelled with its model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics = metrics
        self.model = model

    def queued(self, kind: str, seconds: float) -> None:
        self.metrics.queue_seconds.labels(self.model, kind).observe(seconds)

    def request_queued(self, priority: str, seconds: float) -> None:
        self.metrics.request_queue_seconds.labels(self.model, priority).observe(seconds)

    def batch(
        self, kind: str, rows: int, padded: int, real: int, budget: int, seconds: float
    ) -> None:
        m = self.metrics
        m.compute_seconds.labels(self.model, kind).observe(seconds)
        m.batch_seconds.labels(self.model, kind).observe(seconds)
        m.batch_fill.labels(self.model, kind).observe(padded / max(budget, 1))
        m.padding.labels(self.model, kind).observe(1.0 - real / max(padded, 1))


class Metrics:
    """The server's metrics and their registry."""

    def __init__(self, models: Registry) -> None:
        self.registry = CollectorRegistry()
        self.models = models
        r = self.registry
        self.requests = Counter(
            "explainserve_requests",
            "Calls answered, by RPC, explanation method, model, status code (gRPC's names, HTTP "
            "calls too) and protocol (grpc or http)",
            ["rpc", "method", "model", "code", "protocol"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "explainserve_request_seconds",
            "Call latency from the handler's start to its last message, by protocol",
            ["rpc", "method", "model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "explainserve_queue_seconds",
            "Time a job waits in the model's queue before its first rows run",
            ["model", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_queue_seconds = Histogram(
            "explainserve_request_queue_seconds",
            "Time a request's work waits in the model's queue before its first rows run (once "
            "per round a request queues), by priority (interactive or batch)",
            ["model", "priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "explainserve_batch_seconds",
            "Time one batch takes, against the worker's time bound (max_batch_ms)",
            ["model", "kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "explainserve_compute_seconds",
            "Time one batch takes on the device (forward, backward, copy to the host)",
            ["model", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.serialize_seconds = Histogram(
            "explainserve_serialize_seconds",
            "Time serializing one response message (protobuf, or JSON over HTTP)",
            ["rpc", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_fill = Histogram(
            "explainserve_batch_fill_ratio",
            "Padded tokens of a batch / the token budget",
            ["model", "kind"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.padding = Histogram(
            "explainserve_batch_padding_ratio",
            "Share of a batch's tokens that are padding",
            ["model", "kind"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        r.register(_WorkerCollector(models))
        self._watched: set[str] = set()
        self._lock = threading.Lock()
        self._http: Any = None

    def watch_workers(self) -> None:
        """Attaches an observer to every loaded model's worker (call again after loading)."""
        with self._lock:
            for model in self.models.list():
                if model.name not in self._watched:
                    model.worker.observer = _WorkerObserver(self, model.name)
                    self._watched.add(model.name)

    def serve(self, host: str, port: int) -> int:
        """Serves /metrics over HTTP; returns the port bound (`port=0`: a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stops the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
