"""The datasets concept discovery reads: one text per line (any other suffix), JSON lines
(`.jsonl`, `.ndjson`: an object per line with a text field and, for labelled examples, a label
field) or Parquet (`.parquet`: a text column and an optional label column; needs pyarrow, the
`discovery` extra). Read in order, a block at a time: a dataset larger than memory streams.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Texts read and sent at a time (a shard of the activation cache holds this many).
BLOCK = 1024


class DatasetError(ValueError):
    """A dataset that cannot be read: names the file (and line) and what is wrong."""


@dataclass(frozen=True)
class Example:
    """One text of the dataset, with its label when the dataset has them ("" otherwise)."""

    text: str
    label: str = ""


@dataclass(frozen=True)
class Dataset:
    """A dataset file and how its records are read."""

    path: Path
    text_field: str = "text"
    label_field: str = "label"

    @property
    def kind(self) -> str:
        """ "jsonl", "parquet" or "text", by the file's suffix."""
        suffix = self.path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            return "jsonl"
        if suffix == ".parquet":
            return "parquet"
        return "text"

    def check(self) -> None:
        """The file exists and is readable (DatasetError otherwise)."""
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: no such file")
        try:
            with self.path.open("rb") as f:
                f.read(1)
        except OSError as e:
            raise DatasetError(f"{self.path}: cannot be read ({e.strerror})") from None

    def fingerprint(self) -> str:
        """What the dataset's examples depend on: its bytes (sha256) and how they are read, so
        that a cache made from another file, or the same file changed, is not reused."""
        digest = hashlib.sha256()
        with self.path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(f"|{self.kind}|{self.text_field}|{self.label_field}".encode())
        return digest.hexdigest()

    def examples(self) -> Iterator[Example]:
        """Every example, in file order (blank texts skipped)."""
        if self.kind == "parquet":
            yield from self._parquet()
            return
        try:
            with self.path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if self.kind == "text":
                        if line.strip():
                            yield Example(line.rstrip("\r\n"))
                        continue
                    if not line.strip():
                        continue
                    yield self._record(line, number)
        except UnicodeDecodeError as e:
            raise DatasetError(f"{self.path}: not UTF-8 text ({e.reason})") from None

    def _record(self, line: str, number: int) -> Example:
        where = f"{self.path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
            raise DatasetError(f"{where}: no string field '{self.text_field}' (--text-field)")
        label = record.get(self.label_field, "")
        return Example(record[self.text_field], "" if label is None else str(label))

    def _parquet(self) -> Iterator[Example]:
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise DatasetError(
                f"{self.path}: reading Parquet needs pyarrow "
                "(pip install 'explainserve[discovery]')"
            ) from None
        try:
            table = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid, an OSError, ...
            raise DatasetError(f"{self.path}: not a Parquet file ({e})") from None
        names = table.schema_arrow.names
        if self.text_field not in names:
            raise DatasetError(
                f"{self.path}: no column '{self.text_field}' (--text-field); columns: "
                f"{', '.join(names)}"
            )
        columns = [self.text_field] + ([self.label_field] if self.label_field in names else [])
        for batch in table.iter_batches(batch_size=BLOCK, columns=columns):
            texts = batch.column(0).to_pylist()
            labels = batch.column(1).to_pylist() if len(columns) > 1 else [""] * len(texts)
            for text, label in zip(texts, labels, strict=True):
                if isinstance(text, str) and text.strip():
                    yield Example(text, "" if label is None else str(label))

    def count(self) -> int:
        """How many examples it has (one streaming pass)."""
        return sum(1 for _ in self.examples())

    def blocks(self, size: int = BLOCK) -> Iterator[list[Example]]:
        """The examples, `size` at a time."""
        block: list[Example] = []
        for example in self.examples():
            block.append(example)
            if len(block) == size:
                yield block
                block = []
        if block:
            yield block
