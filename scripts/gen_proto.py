"""Regenerates the committed Python code of the protos: the server's (server/explainserve/v1/)
and the light client's copy (clients/python/src/explainserve_client/v1/).

Usage: python scripts/gen_proto.py [--out DIR] [--client-out DIR]   (defaults: the committed
locations). The test tests/grpc/test_proto_drift.py runs this into a temporary directory and fails
when the committed files differ, so edit the .proto files, then rerun this script (`make proto`
also regenerates the Go and TypeScript code with `buf generate`).

The light client vendors its own copy rather than importing the server's: `explainserve` is the
server distribution (torch), and the client must install without it. The copy is the same
protoc output with the package renamed in the import lines only (the serialized descriptors are
byte for byte the same, so both copies can live in one process: protobuf accepts an identical
file registered twice).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
CLIENT_SRC = ROOT / "clients" / "python" / "src"
#: The light client's package, standing in for the protos' `explainserve` in module names.
CLIENT_PACKAGE = "explainserve_client"
#: Vendored protocols (the Open Inference Protocol v2): generated for the server only, since
#: their clients are other projects' (Triton's, KServe's).
VENDORED = PROTO_ROOT / "explainserve" / "oip"


def proto_files(*, vendored: bool = True) -> list[Path]:
    """Every .proto of the public contract, in a stable order (without the vendored ones when
    `vendored` is false)."""
    return sorted(
        p for p in PROTO_ROOT.rglob("*.proto") if vendored or not p.is_relative_to(VENDORED)
    )


def generate(out: Path, *, vendored: bool = True) -> list[Path]:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py under `out` (of the vendored protos too
    unless `vendored` is false); returns the written files."""
    well_known = resources.files("grpc_tools") / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files(vendored=vendored)]
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


def generate_client(out: Path) -> list[Path]:
    """Writes the light client's copy under `out`/explainserve_client/; returns the written files.

    protoc names modules after the proto's path (`explainserve.v1.explain_pb2`); only the
    generated import lines and module names are renamed, never the serialized descriptor."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        generated = generate(staged, vendored=False)
        stems = [p.name.removesuffix(".py") for p in generated if p.name.endswith("_pb2.py")]
        written = []
        for path in generated:
            rel = path.relative_to(staged)
            if rel.parts[0] != "explainserve":
                raise RuntimeError(f"unexpected generated file {rel}")
            target = out / CLIENT_PACKAGE / Path(*rel.parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            text = path.read_text()
            dotted = ".".join(rel.parts[1:-1])
            for stem in stems:
                text = text.replace(
                    f"from explainserve.{dotted} import {stem} ",
                    f"from {CLIENT_PACKAGE}.{dotted} import {stem} ",
                )
                text = text.replace(
                    f"'explainserve.{dotted}.{stem}'", f"'{CLIENT_PACKAGE}.{dotted}.{stem}'"
                )
            if path.name == "__init__.py":
                shutil.copyfile(path, target)
            else:
                target.write_text(text)
            written.append(target)
        return sorted(written)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "server")
    parser.add_argument("--client-out", type=Path, default=CLIENT_SRC)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    for path in generate_client(args.client_out):
        print(path.relative_to(args.client_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
