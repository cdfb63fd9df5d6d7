"""Extraction: a dataset's activations streamed from one or several running servers into an
activation store (`discovery.store`), with a progress bar (texts done of total, rows/s, ETA).

The dataset is cut into shards of `shard_size` texts; each shard is one GetActivations call
(units omitted unless the granularity has several rows per text, predictions included), and up
to `concurrency` calls per server run at once, so several replicas share the work: shards are
dealt to the servers' channels in turn, and a single target that resolves to several addresses
(a Kubernetes headless Service, `dns:///explainserve:50051`) is balanced by gRPC's round_robin
over them, as the light client does. Shards already in the store are skipped: a stopped run
resumes, a refit reads them again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from explainserve.discovery.dataset import Dataset, DatasetError, Example
from explainserve.discovery.store import Manifest, Shard, Store
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

#: Command-line granularity -> GetActivations' (`cls` is the row the head reads).
GRANULARITIES = {
    "cls": pb.ACTIVATION_GRANULARITY_CLS_TOKEN,
    "all-tokens": pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
    "token": pb.ACTIVATION_GRANULARITY_TOKEN,
    "word": pb.ACTIVATION_GRANULARITY_WORD,
    "sentence": pb.ACTIVATION_GRANULARITY_SENTENCE,
}
#: ... and the concept set file's name for it.
FIT_GRANULARITY = {
    "cls": "cls_token",
    "all-tokens": "all_tokens",
    "token": "token",
    "word": "word",
    "sentence": "sentence",
}
AGGREGATIONS = {
    "mean": pb.AGGREGATION_MEAN,
    "max": pb.AGGREGATION_MAX,
    "min": pb.AGGREGATION_MIN,
    "sum": pb.AGGREGATION_SUM,
    "signed-max": pb.AGGREGATION_SIGNED_MAX,
}
#: The channel's service config: round_robin over every address a target resolves to, with
#: client-side health checks (a replica that loads or drains is not picked). The same as the
#: light client's `service_config(balance=True)`, which this package cannot import (the light
#: client is a distribution of its own).
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "explainserve.v1.ExplainService"},
    }
)


class ExtractError(ValueError):
    """A server or request problem that stops the extraction: what to change, in one line."""


@dataclass(frozen=True)
class Servers:
    """Where the activations come from: one or several targets, and how to call them."""

    targets: tuple[str, ...]
    token: str | None = None
    tls_ca: Path | None = None
    timeout: float = 600.0

    def channels(self) -> list[grpc.Channel]:
        """One balanced channel per target (64 MiB messages)."""
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.service_config", SERVICE_CONFIG),
        ]
        out = []
        for target in self.targets:
            if self.tls_ca is not None:
                creds = grpc.ssl_channel_credentials(self.tls_ca.read_bytes())
                out.append(grpc.secure_channel(target, creds, options=options))
            else:
                out.append(grpc.insecure_channel(target, options=options))
        return out

    @property
    def metadata(self) -> list[tuple[str, str]]:
        """The calls' metadata (the bearer token)."""
        return [("authorization", f"Bearer {self.token}")] if self.token else []


def rpc_error(servers: Servers, e: grpc.RpcError) -> ExtractError:
    """An RPC's failure as one line."""
    code = e.code()
    return ExtractError(
        f"the server ({', '.join(servers.targets)}): {code.name if code else 'error'}: "
        f"{e.details()}"
    )


@dataclass(frozen=True)
class Target:
    """What is extracted: the model, the split point (resolved: the head's input by default),
    its row size, and the rows."""

    model: str
    split_point: str
    features: int
    granularity: str
    aggregation: str
    labels: tuple[str, ...]
    dtype: str = "float32"


def resolve(
    stub: explain_pb2_grpc.ExplainServiceStub,
    servers: Servers,
    model: str,
    split_point: str | None,
    granularity: str,
    aggregation: str = "mean",
    dtype: str = "float32",
) -> Target:
    """The model's split point (GetModel), checked against the granularity."""
    try:
        info = stub.GetModel(
            pb.GetModelRequest(name=model), metadata=servers.metadata, timeout=30
        ).model
    except grpc.RpcError as e:
        raise rpc_error(servers, e) from None
    points = {p.name: p for p in info.split_points}
    name = split_point or next((p.name for p in info.split_points if p.head_input), "")
    if not name:
        raise ExtractError(f"model '{model}' has no classification head: give --split-point")
    if name not in points:
        raise ExtractError(f"model '{model}' has no split point '{name}' (GetModel lists them)")
    shape = list(points[name].shape)
    token_dim = len(shape) > 2 and shape[1] == -1
    if not token_dim and granularity != "cls":
        raise ExtractError(
            f"split point '{name}' has one row per input: use --granularity cls, not {granularity}"
        )
    features = shape[2:] if token_dim else shape[1:]
    if len(features) != 1:
        raise ExtractError(f"split point '{name}' has rows of shape {features}, not vectors")
    return Target(
        model, name, int(features[0]), granularity, aggregation, tuple(info.labels), dtype
    )


def _decode(tensor: pb.Tensor) -> np.ndarray:
    """A Tensor message's float32 values, in its shape."""
    if tensor.dtype == "bfloat16":
        bits = np.frombuffer(tensor.data, "<u2").astype("<u4") << 16
        values = bits.view("<f4")
    elif tensor.dtype == "float16":
        values = np.frombuffer(tensor.data, "<f2").astype(np.float32)
    else:
        values = np.frombuffer(tensor.data, "<f4")
    return values.reshape(tuple(tensor.shape)).astype(np.float32, copy=False)


def fetch(
    stub: explain_pb2_grpc.ExplainServiceStub,
    servers: Servers,
    target: Target,
    index: int,
    first: int,
    block: list[Example],
    on_rows: Callable[[int, int], None] | None = None,
) -> Shard:
    """Shard `index` (texts `first`..): one GetActivations call, its chunks reassembled;
    `on_rows(texts, rows)` after each chunk."""
    several = target.granularity != "cls"
    request = pb.GetActivationsRequest(
        model=target.model,
        inputs=[pb.Input(text=e.text) for e in block],
        split_points=[target.split_point],
        granularity=GRANULARITIES[target.granularity],
        aggregation=AGGREGATIONS[target.aggregation],
        dtype=target.dtype,
        include_predictions=True,
        omit_units=not several,
        truncate=True,
    )
    parts, logits, offsets = [], [], [0]
    units: list[list[str]] | None = [] if several else None
    try:
        for chunk in stub.GetActivations(
            request, metadata=servers.metadata, timeout=servers.timeout
        ):
            parts.append(_decode(chunk.activations[0].values))
            logits.append(_decode(chunk.logits))
            base = offsets[-1]
            offsets += [base + int(n) for n in chunk.row_offsets[1:]]
            if units is not None:
                units += [[u.text for u in item.units] for item in chunk.units]
            if on_rows is not None:
                on_rows(int(chunk.input_count), int(chunk.row_offsets[-1]))
    except grpc.RpcError as e:
        raise rpc_error(servers, e) from None
    return Shard(
        index=index,
        first=first,
        activations=np.concatenate(parts),
        row_offsets=np.asarray(offsets, dtype=np.int64),
        logits=np.concatenate(logits),
        units=units,
    )


class Progress:
    """A progress bar on stderr when it is a terminal (texts done of total, rows/s, ETA);
    thread-safe."""

    def __init__(self, total: int, show: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        console = Console(stderr=True)
        self._bar = Bar(
            TextColumn("extracting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("texts"),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not (show and console.is_terminal),
        )
        self._task = self._bar.add_task("extract", total=total, rate="-")
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.rows = 0

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def advance(self, texts: int, rows: int) -> None:
        """`texts` more texts done, with `rows` rows."""
        with self._lock:
            self.rows += rows
            rate = self.rows / max(time.monotonic() - self._started, 1e-9)
            self._bar.update(self._task, advance=texts, rate=f"{rate:,.0f}")


def extract(
    servers: Servers,
    dataset: Dataset,
    directory: Path,
    model: str,
    *,
    split_point: str | None = None,
    granularity: str = "cls",
    aggregation: str = "mean",
    dtype: str = "float32",
    shard_size: int = 1024,
    concurrency: int = 2,
    show_progress: bool = True,
) -> Store:
    """The dataset's activations in the store at `directory` (created, or resumed)."""
    dataset.check()
    total = dataset.count()
    if total == 0:
        raise DatasetError(f"{dataset.path}: no texts (blank lines only, or empty)")
    channels = servers.channels()
    try:
        stubs = [explain_pb2_grpc.ExplainServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]
        target = resolve(stubs[0], servers, model, split_point, granularity, aggregation, dtype)
        manifest = Manifest(
            model=model,
            split_point=target.split_point,
            granularity=granularity,
            aggregation=aggregation,
            dataset=str(dataset.path),
            fingerprint=dataset.fingerprint(),
            texts=total,
            shard_size=shard_size,
            features=target.features,
            labels=target.labels,
        )
        store = Store.create(directory, manifest)
        with (
            Progress(total, show_progress) as progress,
            ThreadPoolExecutor(max_workers=concurrency * len(stubs)) as pool,
        ):
            running: deque[Future[Shard]] = deque()
            for index, block in enumerate(dataset.blocks(shard_size)):
                if store.has(index):
                    progress.advance(len(block), 0)
                    continue
                stub = stubs[index % len(stubs)]
                running.append(
                    pool.submit(
                        fetch,
                        stub,
                        servers,
                        target,
                        index,
                        index * shard_size,
                        block,
                        progress.advance,
                    )
                )
                # Bounded memory: at most `concurrency` shards per server in flight.
                while len(running) >= concurrency * len(stubs):
                    _finish(store, running)
            while running:
                _finish(store, running)
    finally:
        for channel in channels:
            channel.close()
    return store


def _finish(store: Store, running: deque[Future[Shard]]) -> None:
    """Writes the shards whose calls are done (waiting for one at least)."""
    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
    for future in done:
        running.remove(future)
        store.write(future.result())
