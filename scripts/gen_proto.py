"""Regenerates the committed Python code of the protos: the server's (server/explainserve/v1/)
and the light client's copy (clients/python/src/explainserve_client/v1/).

It also writes the two configurations from which grpc-gateway's protoc-gen-openapiv2 makes the
OpenAPI document of the JSON RPCs (`make proto` runs it, with buf.gen.openapi.yaml): the HTTP
rule of every RPC of every service (`POST /v1/explainserve/<Rpc>`, the path the HTTP server
routes: `explainserve.http.paths.rpc_path`) and the document's own options (title, version,
bearer authentication, the media types of the streaming RPCs), both from the descriptors, so
that a new RPC needs nothing written by hand.

Usage: python scripts/gen_proto.py [--out DIR] [--client-out DIR] [--http-out DIR]   (defaults:
the committed locations). The tests tests/grpc/test_proto_drift.py and tests/http/test_openapi.py
run this into a temporary directory and fail when the committed files differ, so edit the .proto
files, then `make proto` (which also regenerates the Go and TypeScript code and the OpenAPI
document with `buf generate`).

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

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from explainserve import __version__
from explainserve.http.paths import rpc_path

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


#: Where the OpenAPI generator's two configurations go (read by buf.gen.openapi.yaml).
HTTP_CONFIG_DIR = PROTO_ROOT / "explainserve" / "v1"
HTTP_RULES = "explain.http.yaml"
OPENAPI_OPTIONS = "explain.openapi.yaml"
_GENERATED = "# Generated by scripts/gen_proto.py from the protos' descriptors: do not edit.\n"
_DESCRIPTION = (
    "ExplainService's RPCs as JSON beside gRPC (proto3's canonical JSON mapping). "
    "Streaming RPCs answer newline-delimited JSON, or server-sent events for Accept: "
    "text/event-stream, one {result: message} per message and {error: status} if the call "
    "fails after its first. Errors are a google.rpc.Status with grpc-gateway's HTTP status."
)


def services() -> list[tuple[str, descriptor_pb2.ServiceDescriptorProto]]:
    """The services of the public contract (not the vendored protocols'), as protoc parses
    them, each with its full name ("explainserve.v1.ExplainService")."""
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files(vendored=False)]
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--descriptor_set_out={out}"]
        if protoc.main([*args, *files]) != 0:
            raise RuntimeError("protoc failed to parse the protos")
        parsed = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return [(f"{f.package}.{s.name}", s) for f in parsed.file for s in f.service]


def generate_http(out: Path) -> list[Path]:
    """Writes the OpenAPI generator's configurations (HTTP rules and document options) under
    `out`; returns the written files."""
    rules = ["type: google.api.Service", "config_version: 3", "http:", "  rules:"]
    streaming = []
    for name, service in services():
        for method in service.method:
            rules += [
                f"    - selector: {name}.{method.name}",
                f"      post: {rpc_path(method.name)}",
                '      body: "*"',
            ]
            if method.server_streaming:
                streaming.append(f"{name}.{method.name}")
    options = [
        "openapiOptions:",
        "  file:",
        "    - file: explainserve/v1/explain.proto",
        "      option:",
        "        info:",
        "          title: ExplainServe",
        f'          version: "{__version__}"',
        f"          description: >-\n            {_DESCRIPTION}",
        "        consumes: [application/json]",
        "        produces: [application/json]",
        "        securityDefinitions:",
        "          security:",
        "            Bearer:",
        "              type: TYPE_API_KEY",
        "              in: IN_HEADER",
        "              name: Authorization",
        "              description: >-",
        "                'Bearer <token>', when the server has tokens (auth_tokens,",
        "                auth_token_file).",
        "        security:",
        "          - securityRequirement:",
        "              Bearer: {}",
        "  method:",
    ]
    for name in streaming:
        options += [
            f"    - method: {name}",
            "      option:",
            "        produces: [application/x-ndjson, text/event-stream]",
        ]
    out.mkdir(parents=True, exist_ok=True)
    written = [out / HTTP_RULES, out / OPENAPI_OPTIONS]
    written[0].write_text(_GENERATED + "\n".join(rules) + "\n")
    written[1].write_text(_GENERATED + "\n".join(options) + "\n")
    return written


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "server")
    parser.add_argument("--client-out", type=Path, default=CLIENT_SRC)
    parser.add_argument("--http-out", type=Path, default=HTTP_CONFIG_DIR)
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    for path in generate_client(args.client_out):
        print(path.relative_to(args.client_out))
    for path in generate_http(args.http_out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
