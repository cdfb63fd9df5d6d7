"""The committed generated code, the server's and the light client's copy, must be exactly what
scripts/gen_proto.py makes of the protos."""

from __future__ import annotations

from pathlib import Path

from generated import gen_proto

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    generated = gen_proto().generate(tmp_path)
    assert generated, "no proto files found"
    stale = []
    for path in generated:
        rel = path.relative_to(tmp_path)
        committed = ROOT / "server" / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    assert not stale, f"generated code is stale, run scripts/gen_proto.py: {stale}"


def test_client_copy_matches_protos(tmp_path: Path) -> None:
    generator = gen_proto()
    generated = generator.generate_client(tmp_path)
    committed_dir = ROOT / "clients" / "python" / "src"
    assert {p.relative_to(tmp_path) for p in generated} == {
        p.relative_to(committed_dir)
        for p in (committed_dir / "explainserve_client" / "v1").glob("*.py*")
    }
    stale = [
        str(p.relative_to(tmp_path))
        for p in generated
        if (committed_dir / p.relative_to(tmp_path)).read_bytes() != p.read_bytes()
    ]
    assert not stale, f"the client's generated code is stale, run scripts/gen_proto.py: {stale}"
    # Only module names differ from the server's copy: the descriptors are the same bytes.
    server = (ROOT / "server" / "explainserve" / "v1" / "explain_pb2.py").read_text()
    client = (committed_dir / "explainserve_client" / "v1" / "explain_pb2.py").read_text()
    assert client.replace("explainserve_client.v1", "explainserve.v1") == server


def test_every_committed_generated_file_has_a_proto() -> None:
    protos = {p.stem for p in (ROOT / "proto").rglob("*.proto")}
    for path in (ROOT / "server" / "explainserve" / "v1").glob("*_pb2*.py*"):
        assert path.name.split("_pb2")[0] in protos, f"{path} has no .proto any more"


def test_service_is_importable() -> None:
    from explainserve.v1 import explain_pb2, explain_pb2_grpc

    request = explain_pb2.ExplainRequest(model="m", seed=3)
    request.inputs.add(text="hello")
    assert explain_pb2.ExplainRequest.FromString(request.SerializeToString()) == request
    assert hasattr(explain_pb2_grpc, "ExplainServiceServicer")
