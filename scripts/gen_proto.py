"""Regenerates the committed Python code of the protos (server/explainserve/v1/).

Usage: python scripts/gen_proto.py [--out DIR]   (default: server/, the committed location)
The test tests/grpc/test_proto_drift.py runs this into a temporary directory and fails when the
committed files differ, so edit the .proto files, then rerun this script.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    """Every .proto of the public contract, in a stable order."""
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under `out`; returns the written files."""
    well_known = resources.files("grpc_tools") / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = []
    for rel in files:
        stem = Path(rel).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(out / f"{stem}{suffix}")
    for package_dir in {p.parent for p in written}:
        init = package_dir / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated protobuf and gRPC code (scripts/gen_proto.py)."""\n')
        written.append(init)
    return sorted(set(written))


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "server")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
