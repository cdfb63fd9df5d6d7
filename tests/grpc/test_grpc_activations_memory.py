"""GetActivations streams 10,000 inputs with bounded server memory, and the client reassembles
every row.

The server runs in a subprocess (the CLI, on the tiny BERT) so its resident memory can be read
from /proc without the client's. The request asks for every token at four split points, about
77 MiB of float32 in all; the client pauses after the first chunk and reads slowly, so a server
that computed ahead without bound would hold most of it. The server's peak RSS (VmHWM) may grow by
at most `MAX_GROWTH` over a warm-up with the same shape.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from explainserve.launch import Replica, spawn_replica
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc"),
]

N_INPUTS = 10_000
MAX_GROWTH = 40 * 1024 * 1024
SPLIT_POINTS = [
    "bert.embeddings.word_embeddings",
    "bert.encoder.layer.0.intermediate",
    "bert.encoder.layer.1",
    "bert.encoder.layer.1.intermediate",
]
WIDE = ["bert.encoder.layer.0.intermediate", "bert.encoder.layer.1.intermediate"]
SENTENCES = [
    f"{subject} {verb} the {thing} {when}."
    for subject in ("The cat", "A tired engineer", "Nobody")
    for verb in ("liked", "broke", "painted")
    for thing in ("red door", "old phone", "quiet garden", "long report")
    for when in ("today", "again yesterday")
]


def rss_kib(pid: int, field: str) -> int:
    """VmRSS or VmHWM (peak) of a process, in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


@pytest.fixture(scope="module")
def server(tiny_bert_dir: Path) -> Iterator[Replica]:
    """`explainserve serve` on the tiny BERT, default chunking, with its metrics endpoint."""
    try:
        replica = spawn_replica(
            [
                "--model",
                f"bert={tiny_bert_dir}",
                "--device",
                "cpu",
                *os.environ.get("EXPLAINSERVE_TEST_SERVE_ARGS", "").split(),
            ]
        )
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield replica
    finally:
        replica.stop(30)


def queued_rows(replica: Replica) -> float:
    """The sequences waiting in the server's queue (its `explainserve_queue_rows` gauge)."""
    url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "explainserve_queue_rows":
                return float(sample.value)
    raise AssertionError("no explainserve_queue_rows in the metrics")


def request(n: int) -> pb.GetActivationsRequest:
    return pb.GetActivationsRequest(
        model="bert",
        inputs=[pb.Input(text=SENTENCES[i % len(SENTENCES)]) for i in range(n)],
        split_points=SPLIT_POINTS,
        granularity=pb.ACTIVATION_GRANULARITY_ALL_TOKENS,
    )


def decode(t: pb.Tensor) -> NDArray[np.float32]:
    return np.frombuffer(t.data, "<f4").reshape([int(d) for d in t.shape])


def test_ten_thousand_inputs_stream_with_bounded_server_memory(
    server: Replica, tiny_bert_dir: Path
) -> None:
    pid, port = server.proc.pid, server.port
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, local_files_only=True, dtype=torch.float32
    ).eval()
    ids = [tokenizer(s)["input_ids"] for s in SENTENCES]
    reference: list[dict[str, NDArray[np.float32]]] = []
    with torch.no_grad():
        table = model.get_input_embeddings().weight.numpy()
        for row in ids:
            out = model(input_ids=torch.as_tensor([row]), output_hidden_states=True)
            reference.append({"bert.encoder.layer.1": out.hidden_states[2][0].numpy()})
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        # Warm-up of the same shape: model, allocator and gRPC buffers at their working size.
        for _ in stub.GetActivations(request(2000), timeout=120):
            pass
        base_rss = rss_kib(pid, "VmRSS")
        base_hwm = rss_kib(pid, "VmHWM")

        stream = stub.GetActivations(request(N_INPUTS), timeout=600)
        received = 0
        at_input = 0
        n_chunks = 0
        rss_samples = []
        for chunk in stream:
            if n_chunks == 0:
                # The client pauses until the server's queue is empty. The stream submits
                # each chunk's inputs before it waits for the oldest chunk, so a server that
                # computed ahead without bound (all at once, or chunk after chunk while the
                # client does not read) keeps its queue filled until it has computed nearly
                # everything, and its memory has grown by then.
                deadline = time.monotonic() + 300
                while queued_rows(server) > 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert queued_rows(server) == 0
            n_chunks += 1
            assert chunk.input_start == at_input
            offsets = list(chunk.row_offsets)
            assert len(offsets) == chunk.input_count + 1
            values = {a.split_point: decode(a.values) for a in chunk.activations}
            assert list(values) == SPLIT_POINTS
            for k in range(chunk.input_count):
                i = at_input + k
                sentence = i % len(SENTENCES)
                lo, hi = offsets[k], offsets[k + 1]
                assert hi - lo == len(ids[sentence])
                # The word embeddings are a table lookup: exact, whatever the batching.
                np.testing.assert_array_equal(
                    values["bert.embeddings.word_embeddings"][lo:hi], table[ids[sentence]]
                )
                np.testing.assert_allclose(
                    values["bert.encoder.layer.1"][lo:hi],
                    reference[sentence]["bert.encoder.layer.1"],
                    rtol=1e-4,
                    atol=1e-5,
                )
                for wide in (
                    "bert.encoder.layer.0.intermediate",
                    "bert.encoder.layer.1.intermediate",
                ):
                    assert values[wide][lo:hi].shape == (hi - lo, 64)
            received += sum(len(a.values.data) for a in chunk.activations)
            at_input += chunk.input_count
            if n_chunks % 10 == 0:
                rss_samples.append(rss_kib(pid, "VmRSS"))
                time.sleep(0.02)  # a slow reader
        assert at_input == N_INPUTS
        peak_growth = (rss_kib(pid, "VmHWM") - base_hwm) * 1024
        rss_growth = (max(rss_samples) - base_rss) * 1024
        print(
            f"\n{n_chunks} chunks, {received / 2**20:.1f} MiB of activations received; server "
            f"RSS {base_rss / 1024:.0f} MiB after warm-up, peak growth "
            f"{peak_growth / 2**20:.1f} MiB (VmHWM), sampled growth {rss_growth / 2**20:.1f} MiB"
        )
        assert received > 1.5 * MAX_GROWTH, "the test is too small to tell"
        assert peak_growth < MAX_GROWTH
        # The server still answers.
        (last,) = list(stub.GetActivations(request(1), timeout=30))
        assert last.input_count == 1
