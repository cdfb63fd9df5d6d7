"""Scale-out on loopback: two `explainserve serve` processes behind one client channel with
gRPC's round_robin and client-side health checking (`Client(balance=True)`). Counts only (calls
per replica from each replica's own metrics, failed calls at the client), never wall time."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from explainserve.launch import Replica, balanced_target, spawn_replica
from explainserve_client import Client, pb

REQUEST = pb.ExplainRequest(
    model="bert",
    inputs=[pb.Input(text="The food was cold but the staff were kind.")],
    occlusion=pb.Occlusion(),
)


@pytest.fixture
def replicas(tiny_bert_dir: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(2):
            started.append(
                spawn_replica(
                    [
                        "--model",
                        f"bert={tiny_bert_dir}",
                        "--device",
                        "cpu",
                        "--log-level",
                        "WARNING",
                        "--grace-seconds",
                        "60",
                        # Calls picked before the client's health check saw NOT_SERVING are
                        # served, not refused (2 s: ample for a loopback update under load).
                        "--drain-delay-s",
                        "2",
                    ]
                )
            )
        yield started
    finally:
        for replica in started:
            replica.stop()


def _until_both_answer(client: Client, replicas: list[Replica]) -> None:
    """Calls until every replica has answered one: round_robin picks only READY subchannels,
    and the second connection (and its first health answer) may come a moment after the
    first."""
    for _ in range(200):
        client.stub.Explain(REQUEST, timeout=60)
        if all(r.requests() > 0 for r in replicas):
            return
    raise AssertionError("a replica never got a call")


@pytest.mark.slow
def test_round_robin_spreads_calls_evenly(replicas: list[Replica]) -> None:
    with Client(balanced_target(replicas), balance=True) as client:
        _until_both_answer(client, replicas)
        before = [r.requests() for r in replicas]
        for _ in range(40):
            client.stub.Explain(REQUEST, timeout=60)
        counts = [r.requests() - b for r, b in zip(replicas, before, strict=True)]
    assert sum(counts) == 40
    # round_robin alternates over the READY replicas: one call after another gives 20 / 20.
    # Off by at most 2 allows for a health update racing a pick (nothing here should cause one).
    assert min(counts) >= 18, counts


@pytest.mark.slow
def test_a_replica_drained_under_load_fails_no_call(replicas: list[Replica]) -> None:
    """SIGTERM to one replica while 4 threads keep calling, with no retry policy: its health
    turns NOT_SERVING (the channel stops picking it), the calls it still gets within
    --drain-delay-s and those in flight finish, it exits 0, and no call fails at the client:
    the survivor answers everything after."""
    first, second = replicas
    failures: list[str] = []
    ok = [0]
    lock = threading.Lock()
    stop = threading.Event()

    # No retry policy: a call that fails is counted, not retried elsewhere.
    with Client(balanced_target(replicas), balance=True, retry=False) as client:
        _until_both_answer(client, replicas)

        def call_in_a_loop() -> None:
            while not stop.is_set():
                try:
                    client.stub.Explain(REQUEST, timeout=60)
                except grpc.RpcError as e:
                    with lock:
                        failures.append(f"{e.code()}: {e.details()}")
                else:
                    with lock:
                        ok[0] += 1

        threads = [threading.Thread(target=call_in_a_loop) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            while second.requests() < 10 and not failures:
                time.sleep(0.01)
            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(120) == 0
            after_exit = first.requests()
            with lock:
                calls_at_exit = ok[0]
            # Bounded: the load goes on until the survivor alone has answered 40 more calls.
            deadline = time.monotonic() + 120
            while first.requests() < after_exit + 40 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
    assert failures == []
    assert first.requests() >= after_exit + 40
    assert ok[0] >= calls_at_exit + 40
