"""ExplainStream: progress events, each input's explanation once, as soon as it is finished."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from explainserve import _native
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

SMALL = "Fine."
# 100 WordPiece tokens (+ [CLS] and [SEP]): at TOKEN granularity with Sobol (8 points) it costs
# (100 + 2) * 8 = 816 sequences, against 32 for SMALL.
BIG = "The quick brown fox jumps over the lazy dog. " * 10
OTHER_SMALL = "Bad!"


def stream_events(
    stub: explain_pb2_grpc.ExplainServiceStub, request: pb.ExplainRequest
) -> list[pb.ExplainStreamResponse]:
    return list(stub.ExplainStream(pb.ExplainStreamRequest(request=request), timeout=120))


def without_timing(e: pb.Explanation) -> pb.Explanation:
    """A copy with the wall time cleared (the only field that differs between two runs)."""
    out = pb.Explanation()
    out.CopyFrom(e)
    out.counters.elapsed_ms = 0.0
    return out


def check_progress(events: list[pb.ExplainStreamResponse]) -> list[pb.Progress]:
    """Progress is non-decreasing against a fixed total and ends done == total."""
    progress = [ev.progress for ev in events if ev.WhichOneof("event") == "progress"]
    assert progress, "no progress event"
    totals = {p.forward_passes_total for p in progress}
    assert len(totals) == 1, f"the total changed: {sorted(totals)}"
    done = [p.forward_passes_done for p in progress]
    assert done == sorted(done), "progress went backwards"
    assert done[0] > 0
    assert done[-1] == progress[-1].forward_passes_total
    return progress


def test_stream_of_one_input_equals_the_unary_reply(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text="Unbelievably good film. I hated the ending!")],
        kernel_shap=pb.KernelShap(n_perturbations=64),
        granularity=pb.GRANULARITY_TOKEN,
        seed=11,
    )
    events = stream_events(stub, request)
    progress = check_progress(events)
    explanations = [ev.explanation for ev in events if ev.WhichOneof("event") == "explanation"]
    assert len(explanations) == 1
    # The explanation comes after the last of its forward passes is counted.
    assert events[-1].WhichOneof("event") == "explanation"
    (unary,) = stub.Explain(request, timeout=60).explanations
    assert without_timing(explanations[0]) == without_timing(unary)
    # The 64 coalitions; the first, empty, is the unperturbed input that predicts the target.
    assert progress[-1].forward_passes_total == unary.counters.forward_passes == 64


def sobol_passes(n_units: int, n_points: int, seed: int) -> int:
    """Sobol's rows, and the unperturbed input (that predicts the target) when its design's
    first row is not that."""
    first = _native.sobol_masks(n_units, n_points, "sobol", seed)[0]
    return (n_units + 2) * n_points + int(first.any())


def test_stream_sends_each_input_once_as_it_finishes(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    texts = [SMALL, BIG, BIG, OTHER_SMALL]
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=t) for t in texts],
        sobol=pb.Sobol(n_points=8),
        granularity=pb.GRANULARITY_TOKEN,
        seed=3,
    )
    events = stream_events(stub, request)
    progress = check_progress(events)

    arrived: list[int] = []
    passes_arrived = 0
    last_done = 0
    done_when_arrived: dict[int, int] = {}
    for ev in events:
        if ev.WhichOneof("event") == "progress":
            last_done = ev.progress.forward_passes_done
            continue
        e = ev.explanation
        arrived.append(e.input_index)
        passes_arrived += e.counters.forward_passes
        done_when_arrived[e.input_index] = last_done
        # By completion: an explanation never arrives before its forward passes are done.
        assert last_done >= passes_arrived
    assert sorted(arrived) == [0, 1, 2, 3], f"each input exactly once, got {arrived}"

    explanations = {
        ev.explanation.input_index: ev.explanation
        for ev in events
        if ev.WhichOneof("event") == "explanation"
    }
    passes = [explanations[i].counters.forward_passes for i in range(len(texts))]
    small, big = sobol_passes(2, 8, 3), sobol_passes(100, 8, 3)
    assert (small, big) == ((2 + 2) * 8, (100 + 2) * 8 + 1)
    assert passes == [small, big, big, small]
    total = progress[-1].forward_passes_total
    assert total == sum(passes)
    # The small first input is streamed while the big ones are still running: it needs 32 of
    # the 1698 passes and the big ones another 1634 (about twenty batches, a good fraction of a
    # second) after it, so this only fails if the server's streaming thread starves for all of
    # that time.
    assert done_when_arrived[0] < total - big
    assert arrived[0] == 0

    # Same explanations as the unary call (which returns them in request order). Inputs share
    # batches cut by timing, so floats may differ in the last bits; the rest is exact.
    unary = stub.Explain(request, timeout=120).explanations
    assert [e.input_index for e in unary] == [0, 1, 2, 3]
    for want in unary:
        got = explanations[want.input_index]
        assert [(u.text, u.char_start, u.char_end) for u in got.units] == [
            (u.text, u.char_start, u.char_end) for u in want.units
        ]
        assert [list(u.token_indices) for u in got.units] == [
            list(u.token_indices) for u in want.units
        ]
        assert list(got.targets) == list(want.targets)
        assert list(got.token_ids) == list(want.token_ids)
        assert (got.scores.rows, got.scores.cols) == (want.scores.rows, want.scores.cols)
        np.testing.assert_allclose(got.scores.values, want.scores.values, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-6)
        assert got.counters.forward_passes == want.counters.forward_passes


def test_stream_errors_carry_the_status_and_field(
    stub: explain_pb2_grpc.ExplainServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stream_events(stub, pb.ExplainRequest(model="bert", occlusion=pb.Occlusion()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no inputs" in err.value.details()
    status = rpc_status.from_call(err.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["inputs"]

    with pytest.raises(grpc.RpcError) as err:
        stream_events(
            stub,
            pb.ExplainRequest(
                model="nope", inputs=[pb.Input(text=SMALL)], occlusion=pb.Occlusion()
            ),
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "loaded models: bert, gpt2" in err.value.details()


def test_stream_error_after_work_started(stub: explain_pb2_grpc.ExplainServiceStub) -> None:
    """Labels are resolved once the logits are known: the stream may have sent progress, then
    ends with NOT_FOUND."""
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=SMALL, targets=[pb.Target(label="meh")])],
        occlusion=pb.Occlusion(),
    )
    received: list[pb.ExplainStreamResponse] = []
    events = stub.ExplainStream(pb.ExplainStreamRequest(request=request), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        received.extend(events)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no label 'meh'" in err.value.details()
    assert all(ev.WhichOneof("event") == "progress" for ev in received)
    # The server still streams.
    ok = stream_events(
        stub,
        pb.ExplainRequest(model="bert", inputs=[pb.Input(text=SMALL)], occlusion=pb.Occlusion()),
    )
    assert ok[-1].explanation.scores.cols == 2
