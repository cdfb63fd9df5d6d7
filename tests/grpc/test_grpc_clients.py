"""Clients in other languages, with their default settings, get the right status for requests
that quote huge values (a 100,000-character model name, a 1,000-value shape): the statuses are
bounded, so no client's metadata limit turns them into RESOURCE_EXHAUSTED or a lost callback.
The clients are built by `make clients` (part of `make test`): a Go one with
google.golang.org/grpc, a Node one with @grpc/grpc-js."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from tools import missing_tool

from explainserve.v1 import explain_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
GO_CLIENT = ROOT / ".make" / "bin" / "rawcall"
NODE_CLIENT = ROOT / "clients" / "node" / "rawcall.js"
SERVICE = "/explainserve.v1.ExplainService"

CASES: dict[str, tuple[str, Message, str]] = {
    "long model name": (
        "GetModel",
        pb.GetModelRequest(name="m" * 100_000),
        "NOT_FOUND",
    ),
    "long model name, Explain": (
        "Explain",
        pb.ExplainRequest(
            model="m" * 100_000, inputs=[pb.Input(text="Hi.")], occlusion=pb.Occlusion()
        ),
        "NOT_FOUND",
    ),
    "long shape": (
        "PredictFromActivations",
        pb.PredictFromActivationsRequest(
            model="bert", activations=pb.Tensor(dtype="float32", shape=[1] * 1000, data=b"\0" * 4)
        ),
        "INVALID_ARGUMENT",
    ),
    "a normal call after them": ("GetModel", pb.GetModelRequest(name="bert"), "OK"),
}


def client_command(language: str) -> list[str]:
    if language == "go":
        if not GO_CLIENT.exists():
            missing_tool("the Go client is not built: run `make clients`")
        return [str(GO_CLIENT)]
    node = shutil.which("node")
    if node is None or not (NODE_CLIENT.parent / "node_modules" / "@grpc").exists():
        missing_tool("the Node client is not installed: run `make clients`")
    return [node, str(NODE_CLIENT)]


@pytest.mark.parametrize("language", ["go", "node"])
def test_clients_get_the_right_code_for_huge_values(
    live_server: object, tmp_path: Path, language: str
) -> None:
    command = client_command(language)
    port = live_server.port  # type: ignore[attr-defined]
    for case, (rpc, request, code) in CASES.items():
        path = tmp_path / "request.bin"
        path.write_bytes(request.SerializeToString())
        out = subprocess.run(
            [*command, f"127.0.0.1:{port}", f"{SERVICE}/{rpc}", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        _, got, message_bytes = out.stdout.split()
        assert int(got) == grpc.StatusCode[code].value[0], (language, case, out.stdout)
        assert int(message_bytes) < 1100, (language, case)
