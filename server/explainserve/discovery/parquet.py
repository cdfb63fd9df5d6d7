"""An activation store's shards also as Parquet (`explainserve activations --format parquet`),
for tools that read tables: per shard, `shard-NNNNNN.parquet` with one row per activation row
(`text_index`, `row` within its text, `unit` text or null, `activation` a fixed-size list of
float32) and `predictions-NNNNNN.parquet` with one row per text (`text_index`, `logits`,
`predicted`). Needs pyarrow (the `discovery` extra)."""

from __future__ import annotations

import numpy as np

from explainserve.discovery.store import Store, StoreError


def write_parquet(store: Store) -> None:
    """Writes the Parquet files of every shard beside its safetensors file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise StoreError(
            "Parquet shards need pyarrow (pip install 'explainserve[discovery]')"
        ) from None
    features = store.manifest.features
    for shard in store.shards():
        counts = np.diff(shard.row_offsets)
        text_index = np.repeat(np.arange(shard.first, shard.first + shard.texts), counts)
        row = np.concatenate([np.arange(n) for n in counts]) if len(counts) else np.zeros(0)
        units = [u for per_text in shard.units for u in per_text] if shard.units else None
        flat = pa.array(shard.activations.reshape(-1), type=pa.float32())
        rows = pa.table(
            {
                "text_index": pa.array(text_index, type=pa.int64()),
                "row": pa.array(row, type=pa.int32()),
                "unit": pa.array(units, type=pa.string())
                if units is not None
                else pa.nulls(len(text_index), type=pa.string()),
                "activation": pa.FixedSizeListArray.from_arrays(flat, features),
            }
        )
        pq.write_table(rows, store.directory / f"shard-{shard.index:06d}.parquet")
        logits = pa.array(shard.logits.reshape(-1), type=pa.float32())
        predictions = pa.table(
            {
                "text_index": pa.array(np.arange(shard.first, shard.first + shard.texts)),
                "logits": pa.FixedSizeListArray.from_arrays(logits, shard.logits.shape[1]),
                "predicted": pa.array(shard.logits.argmax(axis=1), type=pa.int32()),
            }
        )
        pq.write_table(predictions, store.directory / f"predictions-{shard.index:06d}.parquet")
