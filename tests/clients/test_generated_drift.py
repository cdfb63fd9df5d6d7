"""The committed Go and TypeScript code of the protos (clients/go/explainserve/v1,
clients/node/src/gen) must be exactly what `buf generate` makes of proto/ with the pinned plugins
(buf.gen.yaml; `make proto` rewrites them). The Python copies are checked by
tests/grpc/test_proto_drift.py."""

from __future__ import annotations

from pathlib import Path

from generated import buf_generate

ROOT = Path(__file__).resolve().parents[2]
GENERATED_DIRS = [ROOT / "clients/go/explainserve", ROOT / "clients/node/src/gen"]


def test_go_and_typescript_code_match_the_protos(tmp_path: Path) -> None:
    plugins = [
        ROOT / ".make/bin/protoc-gen-go",
        ROOT / ".make/bin/protoc-gen-go-grpc",
        ROOT / "clients/node/node_modules/.bin/protoc-gen-ts_proto",
    ]
    generated = set(buf_generate("buf.gen.yaml", plugins, tmp_path))
    committed = {p.relative_to(ROOT) for d in GENERATED_DIRS for p in d.rglob("*") if p.is_file()}
    assert {p.suffix for p in generated} == {".go", ".ts"}
    assert generated == committed, "files added or removed: run `make proto`"
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (ROOT / p).read_bytes()]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
