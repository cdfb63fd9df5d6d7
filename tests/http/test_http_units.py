"""Units of the HTTP layer that a live server cannot show: a compressed body is inflated within
the bound (memory measured, not trusted), enum short names, grpc-timeout values."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from explainserve.errors import InvalidArgument, ResourceExhausted
from explainserve.http.calls import _decompress
from explainserve.http.context import parse_timeout
from explainserve.http.json_mapping import short_enum_names
from explainserve.v1 import explain_pb2 as pb

LIMIT = 1 << 20


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_refused_without_inflating_it(encoding: str) -> None:
    raw = b"\0" * (64 * LIMIT)
    bomb = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    assert len(bomb) < LIMIT
    tracemalloc.start()
    try:
        with pytest.raises(ResourceExhausted, match="once decompressed"):
            _decompress(bomb, encoding, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT  # never the 64 MiB the body inflates to
    assert _decompress(gzip.compress(b'{"a": 1}'), "gzip", LIMIT) == b'{"a": 1}'
    with pytest.raises(InvalidArgument, match="does not decompress"):
        _decompress(b"not gzip", "gzip", LIMIT)
    with pytest.raises(InvalidArgument, match="not supported"):
        _decompress(b"", "br", LIMIT)


def test_enum_values_by_their_short_names() -> None:
    given = {
        "granularity": "word",
        "inferenceMode": "log_softmax",
        "lime": {"distance": "HAMMING"},
        "inputs": [{"text": "x"}],
        "priority": "PRIORITY_BATCH",
        "aggregation": "nope",
    }
    assert short_enum_names(given, pb.ExplainRequest.DESCRIPTOR) == {
        "granularity": "GRANULARITY_WORD",
        "inferenceMode": "INFERENCE_MODE_LOG_SOFTMAX",
        "lime": {"distance": "LIME_DISTANCE_HAMMING"},
        "inputs": [{"text": "x"}],
        "priority": "PRIORITY_BATCH",
        "aggregation": "nope",  # left for the parser to refuse
    }


@pytest.mark.parametrize(
    ("value", "seconds"), [("30S", 30.0), ("500m", 0.5), ("2M", 120.0), ("1H", 3600.0)]
)
def test_grpc_timeout_values(value: str, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "30", "S", "123456789S", "-1S", "1.5S", "30s"])
def test_bad_grpc_timeout_values(value: str) -> None:
    with pytest.raises(InvalidArgument, match="grpc-timeout"):
        parse_timeout(value)
