"""GetModel reports how a model's worker sizes its batches (issue 17), over a live loopback
server: after the warm-up `explainserve serve` runs (its calibration included), the counted
calibration batches, the measured rates by size class, the chosen cap under the memory bound;
a model served without calibration reports its budgets and no calibration. Counts, never
seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from explainserve.cli import CALIBRATION_TEXT, warm_up
from explainserve.explain.service import Explainer, Limits
from explainserve.grpc.server import ServerOptions, start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.scheduling.calibration import ROUNDS, sizes
from explainserve.scheduling.options import WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

BUDGET = 1024


@pytest.fixture(scope="module")
def served(tiny_bert_dir: Path) -> Iterator[tuple[explain_pb2_grpc.ExplainServiceStub, Registry]]:
    """Tiny BERT twice: calibrated at warm-up (a time budget it never reaches, so every size
    runs every round) and bare."""
    registry = Registry()
    calibrated = WorkerOptions(
        token_budget=BUDGET,
        gradient_token_budget=BUDGET,
        max_batch_ms=0,
        calibrate=True,
        calibration_seconds=600.0,
    )
    for name, options in (("calibrated", calibrated), ("bare", WorkerOptions())):
        registry.add(
            load_model(ModelConfig(name=name, path=tiny_bert_dir, device="cpu", worker=options))
        )
    explainer = Explainer(registry, Limits())
    for name in ("calibrated", "bare"):
        warm_up(explainer, name)
    running = start(ServerOptions(port=0), explainer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield explain_pb2_grpc.ExplainServiceStub(channel), registry  # type: ignore[no-untyped-call]
    finally:
        running.stop(grace=None)
        registry.close()


def test_get_model_reports_the_calibration_and_the_chosen_caps(
    served: tuple[explain_pb2_grpc.ExplainServiceStub, Registry],
) -> None:
    stub, registry = served
    worker = registry.get("calibrated").worker
    length = len(registry.get("calibrated").tokenizer(CALIBRATION_TEXT)["input_ids"])
    expected = ROUNDS * 2 * len(sizes(BUDGET, length, 512))  # forward and gradient sizes
    reply = stub.GetModel(pb.GetModelRequest(name="calibrated"), timeout=10)
    batching = reply.batching
    assert batching.calibrate
    assert batching.batch_tokens == 0
    assert batching.HasField("calibration")
    assert batching.calibration.batches == expected == worker.stats.calibration_batches
    assert batching.calibration.seconds > 0
    kinds = {k.kind: k for k in batching.kinds}
    assert set(kinds) == {"forward", "gradient"}
    for kind in kinds.values():
        assert kind.memory_bound_tokens == BUDGET
        assert kind.time_bound_tokens == 0  # max_batch_ms 0: no time bound
        # The optimum is one of the measured classes, the best rate, and the cap.
        rates = {r.tokens: r for r in kind.rates}
        assert kind.optimum_tokens in rates
        assert kind.cap_tokens == min(kind.optimum_tokens, BUDGET)
        best = max(r.tokens_per_second for r in rates.values())
        assert rates[kind.optimum_tokens].tokens_per_second >= best / 1.05  # hysteresis
        # Every calibration size was measured ROUNDS times (the warm-up's batches besides).
        assert sum(r.batches for r in kind.rates) >= ROUNDS * len(sizes(BUDGET, length, 512))
    # Requests are served as before, now cut at the calibrated caps.
    before = worker.stats.batches
    response = stub.Explain(
        pb.ExplainRequest(
            model="calibrated",
            inputs=[pb.Input(text="a fine and quiet evening")] * 4,
            occlusion=pb.Occlusion(),
        ),
        timeout=60,
    )
    assert len(response.explanations) == 4
    assert worker.stats.batches > before
    assert worker.stats.calibration_batches == expected  # requests are not calibration


def test_a_model_served_without_calibration_reports_its_budgets(
    served: tuple[explain_pb2_grpc.ExplainServiceStub, Registry],
) -> None:
    stub, registry = served
    batching = stub.GetModel(pb.GetModelRequest(name="bare"), timeout=10).batching
    assert not batching.calibrate
    assert not batching.HasField("calibration")
    assert registry.get("bare").worker.stats.calibration_batches == 0
    kinds = {k.kind: k for k in batching.kinds}
    defaults = WorkerOptions()
    assert kinds["forward"].cap_tokens == defaults.token_budget
    assert kinds["gradient"].cap_tokens == defaults.gradient_token_budget
    # Rates are measured all the same (the warm-up's batches), never used to cut batches.
    assert kinds["forward"].rates
