"""Datasets (text lines, JSON lines, Parquet, and their mistakes) and the extraction into an
activation store: the rows are GetActivations', shards spread over replicas, a stopped run
resumes where it stopped, a store of other activations is refused, Parquet shards."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from discovery_servers import Replica

from explainserve.discovery import extract as extract_module
from explainserve.discovery.dataset import Dataset, DatasetError, Example
from explainserve.discovery.extract import ExtractError, Servers, extract
from explainserve.discovery.parquet import write_parquet
from explainserve.discovery.store import Store, StoreError
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc


def test_datasets_of_every_kind_read_the_same_examples(tmp_path: Path) -> None:
    texts = ["Great food.", "Rude staff, cold soup.", "ok"]
    lines = tmp_path / "d.txt"
    lines.write_text("\n".join([texts[0], "", texts[1], "   ", texts[2]]) + "\n")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"review": t, "label": i % 2}) for i, t in enumerate(texts)) + "\n"
    )
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"review": texts, "label": ["a", "b", None]}), parquet)
    assert [e.text for e in Dataset(lines).examples()] == texts
    assert list(Dataset(jsonl, text_field="review").examples()) == [
        Example(texts[0], "0"),
        Example(texts[1], "1"),
        Example(texts[2], "0"),
    ]
    assert list(Dataset(parquet, text_field="review").examples()) == [
        Example(texts[0], "a"),
        Example(texts[1], "b"),
        Example(texts[2], ""),
    ]
    assert [len(b) for b in Dataset(lines).blocks(2)] == [2, 1]
    # The fingerprint follows the bytes and how they are read.
    assert Dataset(lines).fingerprint() == Dataset(lines).fingerprint()
    assert Dataset(jsonl).fingerprint() != Dataset(jsonl, text_field="review").fingerprint()


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.txt", "no such file"),
        (b"\xff\xfe\x00bad", "bad.txt", "not UTF-8 text"),
        (b'{"text": "ok"}\n{not json}\n', "bad.jsonl", r"bad\.jsonl:2: not JSON"),
        (b'{"body": "ok"}\n', "field.jsonl", r"field\.jsonl:1: no string field 'text'"),
        (b"PAR1 not really", "bad.parquet", "not a Parquet file"),
    ],
)
def test_a_bad_dataset_is_one_line_naming_it(
    tmp_path: Path, content: bytes | None, name: str, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    dataset = Dataset(path)

    def read() -> None:
        dataset.check()
        list(dataset.examples())

    with pytest.raises(DatasetError, match=message):
        read()


def _rows(
    replica: Replica, texts: list[str], granularity: int, split_point: str = ""
) -> tuple[np.ndarray, list[int], list[list[str]]]:
    """GetActivations' rows, per-text row counts and rows' units, for comparison."""
    with grpc.insecure_channel(replica.target) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.GetActivationsRequest(
            model="bert",
            inputs=[pb.Input(text=t) for t in texts],
            granularity=granularity,
            split_points=[split_point] if split_point else [],
        )
        parts, counts, units = [], [], []
        for chunk in stub.GetActivations(request, timeout=60):
            values = chunk.activations[0].values
            parts.append(np.frombuffer(values.data, "<f4").reshape(values.shape))
            counts += np.diff(list(chunk.row_offsets)).tolist()
            units += [[u.text for u in item.units] for item in chunk.units]
    return np.concatenate(parts), counts, units


def test_the_store_holds_getactivations_rows_and_predictions(
    tmp_path: Path, replicas: list[Replica], text_file: Path, sentences: list[str]
) -> None:
    store = extract(
        Servers((replicas[0].target,)),
        Dataset(text_file),
        tmp_path / "store",
        "bert",
        shard_size=16,
        show_progress=False,
    )
    m = store.manifest
    assert (m.texts, m.shards, m.features, m.split_point) == (80, 5, 32, "classifier:input")
    assert m.labels == ("negative", "neutral", "positive")
    shards = list(store.shards())
    assert [s.first for s in shards] == [0, 16, 32, 48, 64]
    got = np.concatenate([s.activations for s in shards])
    want, _, _ = _rows(replicas[0], sentences[:80], pb.ACTIVATION_GRANULARITY_CLS_TOKEN)
    # Shards of 16 against one call of 80: batches padded to other lengths, float32 rounding.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert store.rows() == 80
    assert all(s.units is None and s.logits.shape == (s.texts, 3) for s in shards)


def test_word_rows_keep_their_words(
    tmp_path: Path, replicas: list[Replica], text_file: Path, sentences: list[str]
) -> None:
    store = extract(
        Servers((replicas[0].target,)),
        Dataset(text_file),
        tmp_path / "words",
        "bert",
        split_point="bert.encoder.layer.1",
        granularity="word",
        shard_size=32,
        show_progress=False,
    )
    first = store.read(0)
    rows, counts, units = _rows(
        replicas[0], sentences[:32], pb.ACTIVATION_GRANULARITY_WORD, "bert.encoder.layer.1"
    )
    assert first.units == units
    assert first.units is not None
    assert first.units[1][:3] == sentences[1].split()[:3]
    assert np.diff(first.row_offsets).tolist() == counts
    np.testing.assert_allclose(first.activations, rows, rtol=1e-4, atol=1e-5)
    with pytest.raises(ExtractError, match="has one row per input: use --granularity cls"):
        extract(
            Servers((replicas[0].target,)),
            Dataset(text_file),
            tmp_path / "bad",
            "bert",
            granularity="word",
            show_progress=False,
        )


def test_shards_spread_over_replicas_and_a_stopped_run_resumes(
    tmp_path: Path,
    replicas: list[Replica],
    text_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetched: list[int] = []
    real = extract_module.fetch
    servers = Servers(tuple(r.target for r in replicas))

    def counted(stub, servers_, target, index, first, block, on_rows=None):  # type: ignore[no-untyped-def]
        fetched.append(index)
        return real(stub, servers_, target, index, first, block, on_rows)

    monkeypatch.setattr(extract_module, "fetch", counted)
    before = [r.registry.get("bert").worker.stats.rows for r in replicas]
    store = extract(
        servers, Dataset(text_file), tmp_path / "s", "bert", shard_size=10, show_progress=False
    )
    after = [r.registry.get("bert").worker.stats.rows for r in replicas]
    # 8 shards dealt in turn: 40 texts' rows (their activation jobs) on each replica, at least.
    assert [a - b >= 40 for a, b in zip(after, before, strict=True)] == [True, True]
    assert sorted(fetched) == list(range(8))
    # A run stopped after some shards: the next one fetches only the missing ones.
    store.shard_path(3).unlink()
    store.shard_path(6).unlink()
    fetched.clear()
    again = extract(
        servers, Dataset(text_file), tmp_path / "s", "bert", shard_size=10, show_progress=False
    )
    assert sorted(fetched) == [3, 6]
    assert again.missing() == []
    # Another granularity (or dataset, or shard size) in the same directory is refused.
    with pytest.raises(StoreError, match="holds other activations"):
        extract(
            servers, Dataset(text_file), tmp_path / "s", "bert", shard_size=20, show_progress=False
        )


def test_a_server_without_the_model_is_one_line(
    tmp_path: Path, replicas: list[Replica], text_file: Path
) -> None:
    with pytest.raises(ExtractError, match="NOT_FOUND: no model named 'nope'"):
        extract(
            Servers((replicas[0].target,)),
            Dataset(text_file),
            tmp_path / "x",
            "nope",
            show_progress=False,
        )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="no texts"):
        extract(
            Servers((replicas[0].target,)),
            Dataset(empty),
            tmp_path / "y",
            "bert",
            show_progress=False,
        )
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()


def test_parquet_shards_hold_the_same_rows(
    tmp_path: Path, replicas: list[Replica], text_file: Path
) -> None:
    store = extract(
        Servers((replicas[0].target,)),
        Dataset(text_file),
        tmp_path / "p",
        "bert",
        split_point="bert.encoder.layer.0",
        granularity="token",
        shard_size=40,
        show_progress=False,
    )
    write_parquet(store)
    shard = store.read(1)
    table = pq.read_table(tmp_path / "p" / "shard-000001.parquet")
    assert table.column_names == ["text_index", "row", "unit", "activation"]
    np.testing.assert_array_equal(
        np.asarray(table.column("activation").to_pylist(), np.float32), shard.activations
    )
    assert table.column("text_index").to_pylist()[0] == 40
    assert shard.units is not None
    assert table.column("unit").to_pylist()[: len(shard.units[0])] == shard.units[0]
    predictions = pq.read_table(tmp_path / "p" / "predictions-000001.parquet")
    np.testing.assert_array_equal(
        np.asarray(predictions.column("logits").to_pylist(), np.float32), shard.logits
    )
    assert Store.open(tmp_path / "p").manifest == store.manifest
