"""The light Python client (clients/python) against a real server: its dataclasses hold exactly
what the server sent, its helpers build the requests the raw stub would, tensors decode to the
documented values, tokens and TLS work, and it imports and runs without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from client_server import CHUNK_INPUTS, ClientServer, assert_same, raw_call
from packaging.requirements import Requirement
from pki import Pki
from tiny_models import LABELS

from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve_client import (
    Client,
    Explanation,
    Progress,
    Tls,
    decode_tensor,
    encode_tensor,
    pb,
    text_input,
)

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ["The food was cold.", "Great service, friendly staff!", "It was fine."]


@pytest.fixture
def client(client_server: ClientServer) -> Client:
    return Client(client_server.target, token=client_server.token)


def test_explain_returns_what_the_server_sent(client: Client, client_server: ClientServer) -> None:
    explanations = client.explain("bert", SENTENCES, granularity="word", isolate_batches=True)
    request = pb.ExplainRequest(
        model="bert",
        inputs=[pb.Input(text=s) for s in SENTENCES],
        occlusion=pb.Occlusion(),
        granularity=pb.GRANULARITY_WORD,
        isolate_batches=True,
    )
    # isolate_batches: the design promises the same scores, bit for bit, for the same request.
    reply = raw_call(client_server, "Explain", request)
    assert len(explanations) == len(SENTENCES)
    for e, proto in zip(explanations, reply.explanations, strict=True):
        assert_same(e, proto)
    first = explanations[0]
    assert first.unit_texts == ["The", "food", "was", "cold", "."]
    assert all(first.text[u.start : u.end] == u.text for u in first.units)
    assert first.labels == tuple(LABELS)
    # No targets: the predicted class is explained, and it is the argmax of the logits.
    assert first.predicted_index == int(np.argmax(first.logits))
    assert first.predicted_label == LABELS[first.predicted_index]
    assert first.targets[0].label == first.predicted_label
    probabilities = first.probabilities
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-6)  # float32 sum of 3 values
    assert int(np.argmax(probabilities)) == first.predicted_index
    assert first.valid is None
    assert first.target_units == ()


def test_methods_targets_and_enums_build_the_raw_request(client: Client) -> None:
    request = client.explain_request(
        "bert",
        ["a", text_input("b", targets=[1])],
        method=pb.Lime(n_perturbations=16),
        targets=["positive", 0],
        granularity="token",
        aggregation="signed_max",
        inference_mode="softmax",
        seed=7,
    )
    assert request.WhichOneof("method") == "lime"
    assert request.lime.n_perturbations == 16
    assert [t.label or t.index for t in request.inputs[0].targets] == ["positive", 0]
    assert [t.index for t in request.inputs[1].targets] == [1]
    assert request.granularity == pb.GRANULARITY_TOKEN
    assert request.aggregation == pb.AGGREGATION_SIGNED_MAX
    assert request.inference_mode == pb.INFERENCE_MODE_SOFTMAX
    assert request.seed == 7
    by_name = client.explain_request("bert", "a", method="integrated_gradients", granularity=2)
    assert by_name.WhichOneof("method") == "integrated_gradients"
    assert by_name.granularity == pb.GRANULARITY_TOKEN
    with pytest.raises(ValueError, match=r"unknown method 'shapley'.*'kernel_shap'"):
        client.explain_request("bert", "a", method="shapley")
    with pytest.raises(ValueError, match=r"unknown granularity 'words'.*'word'"):
        client.explain_request("bert", "a", granularity="words")
    with pytest.raises(ValueError, match=r"explainserve.v1.Unit is not an explanation method"):
        client.explain_request("bert", "a", method=pb.Unit())


def test_targets_by_label_and_index(client: Client) -> None:
    (e,) = client.explain("bert", SENTENCES[0], targets=["positive", 0], method="saliency")
    assert [(t.index, t.label) for t in e.targets] == [(2, "positive"), (0, "negative")]
    assert e.scores.shape == (2, len(e.units))
    assert np.isfinite(e.scores).all()


def test_causal_lm_explanation(client: Client) -> None:
    (e,) = client.explain(
        "gpt2-lm", text_input("the cat sat", continuation=" on the mat"), method="occlusion"
    )
    assert e.continuation == " on the mat"
    assert not e.generated
    assert len(e.target_units) == e.scores.shape[0] > 0
    assert e.valid is not None
    assert e.valid.dtype == np.bool_
    assert e.valid.shape == e.scores.shape
    assert e.predicted_index is None
    assert e.labels == ()
    assert len(e.continuation_scores) == len(e.continuation_token_ids) > 0
    assert e.token_ids[e.prompt_token_count :].tolist() == e.continuation_token_ids.tolist()
    # Invalid cells (a unit at or after the row's unit) are 0 by the proto's contract.
    assert (e.scores[~e.valid] == 0).all()


def test_stream_yields_progress_and_the_same_explanations(client: Client) -> None:
    request = client.explain_request("bert", SENTENCES, method="occlusion", isolate_batches=True)
    events = list(client.explain_stream(request))
    progress = [p for p in events if isinstance(p, Progress)]
    streamed = sorted(
        (e for e in events if isinstance(e, Explanation)), key=lambda e: e.input_index
    )
    assert progress
    assert all(0 <= p.done <= p.total for p in progress)
    whole = client.explain("bert", SENTENCES, method="occlusion", isolate_batches=True)
    assert [e.input_index for e in streamed] == [0, 1, 2]
    for a, b in zip(streamed, whole, strict=True):
        assert a.unit_texts == b.unit_texts
        assert a.scores.tolist() == b.scores.tolist()


def bfloat16_rounded(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """float32 values rounded to bfloat16 (nearest, ties to even), back as float32."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def test_activations_reassemble_and_decode(client: Client) -> None:
    texts = [*SENTENCES, "One more.", "And the last one"]
    assert len(texts) > 2 * CHUNK_INPUTS  # several chunks to put back together
    acts = client.activations("bert", texts, include_predictions=True)
    ((head, values),) = acts.values.items()
    assert head.endswith(":input")
    assert values.dtype == np.float32
    assert values.shape[0] == len(texts)
    assert acts.row_offsets.tolist() == list(range(len(texts) + 1))
    assert acts.units is None
    # Each input alone gets the same rows (one input per request: nothing shared but the model).
    for i, text in enumerate(texts):
        alone = client.activations("bert", text)
        np.testing.assert_allclose(acts.rows(i), alone.rows(0), rtol=0, atol=1e-5)
    # The head applied to the returned activations predicts what include_predictions said.
    assert acts.logits is not None
    assert acts.predicted_classes is not None
    predictions = client.predict_from_activations("bert", values)
    # Same head on the same float32 rows; batching may change float32 summation order.
    np.testing.assert_allclose(predictions.logits, acts.logits, rtol=0, atol=1e-5)
    assert predictions.predicted_classes.tolist() == acts.predicted_classes.tolist()
    assert acts.predicted_classes.tolist() == np.argmax(acts.logits, axis=1).tolist()

    # The reduced types are the float32 values rounded, as the proto documents.
    half = client.activations("bert", texts, dtype="float16")
    assert half.values[head].dtype == np.float16
    assert half.values[head].tolist() == values.astype(np.float16).tolist()
    brain = client.activations("bert", texts, dtype="bfloat16")
    assert brain.values[head].dtype == np.float32
    assert brain.values[head].tolist() == bfloat16_rounded(values).tolist()


def test_ragged_activations_with_units(client: Client) -> None:
    texts = ["The food was cold.", "Fine.", "Great service, friendly staff!"]
    acts = client.activations(
        "bert", texts, granularity="word", split_points=["bert.encoder.layer.0", "bert.embeddings"]
    )
    assert set(acts.values) == {"bert.encoder.layer.0", "bert.embeddings"}
    assert acts.units is not None
    assert acts.texts == tuple(texts)
    assert [u.text for u in acts.units[0]] == ["The", "food", "was", "cold", "."]
    for i in range(len(texts)):
        rows = acts.rows(i, "bert.encoder.layer.0")
        assert rows.shape[0] == len(acts.units[i])
        assert acts.rows(i, "bert.embeddings").shape[0] == len(acts.units[i])
    assert acts.row_offsets[-1] == acts.values["bert.embeddings"].shape[0]
    with pytest.raises(ValueError, match="name the split point"):
        acts.rows(0)


def test_tensor_codec() -> None:
    array = np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32)
    assert decode_tensor(encode_tensor(array)).tolist() == array.tolist()
    half = decode_tensor(encode_tensor(array, "float16"))
    assert half.dtype == np.float16
    assert half.tolist() == array.astype(np.float16).tolist()
    # 1.0 and -2.0 in bfloat16: 0x3F80 and 0xC000, little-endian.
    tensor = pb.Tensor(dtype="bfloat16", shape=[2], data=bytes([0x80, 0x3F, 0x00, 0xC0]))
    assert decode_tensor(tensor).tolist() == [1.0, -2.0]
    with pytest.raises(ValueError, match="needs 16 bytes, got 12"):
        decode_tensor(pb.Tensor(dtype="float32", shape=[2, 2], data=bytes(12)))
    with pytest.raises(ValueError, match="unknown tensor dtype 'int8'"):
        decode_tensor(pb.Tensor(dtype="int8", shape=[1], data=bytes(1)))


def test_token_is_sent(client_server: ClientServer) -> None:
    with Client(client_server.target) as anonymous:
        with pytest.raises(grpc.RpcError) as err:
            anonymous.list_models()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(client_server.target, token="wrong") as wrong:
        with pytest.raises(grpc.RpcError) as err:
            wrong.explain("bert", "x")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(client_server.target, token=client_server.token) as good:
        assert [m.name for m in good.list_models()] == ["bert", "gpt2-lm"]
        info = good.get_model("bert")
        assert info.labels == tuple(LABELS)
        assert info.task == "sequence-classification"
        assert any(p.head_input for p in info.split_points)


def test_tls_and_mutual_tls(client_server: ClientServer, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    running = start(
        ServerOptions(
            port=0, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca_file
        ),
        client_server.explainer,
    )
    try:
        target = f"localhost:{running.port}"
        tls = Tls(
            root_certificates=pki.ca_pem,
            certificate_chain=pki.client_cert,
            private_key=pki.client_key,
        )
        with Client(target, tls=tls) as client:
            (e,) = client.explain("bert", "The food was cold.")
            assert e.unit_texts == ["The", "food", "was", "cold", "."]
        # The certificate is for localhost and 127.0.0.1; server_name overrides the name checked.
        named = Tls(
            root_certificates=pki.ca_pem,
            certificate_chain=pki.client_cert,
            private_key=pki.client_key,
            server_name="localhost",
        )
        with Client(f"127.0.0.1:{running.port}", tls=named) as client:
            assert [m.name for m in client.list_models()] == ["bert", "gpt2-lm"]
        # Without the client certificate the handshake fails (not retried forever: UNAVAILABLE
        # is retried up to 5 attempts, then raised).
        with Client(target, tls=Tls(root_certificates=pki.ca_pem)) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.list_models()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(grace=None)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def importable_with(distributions: set[str]) -> set[str]:
    """Top-level modules of `distributions` and of everything they require (installed here)."""
    closure: set[str] = set()
    todo = [_canonical(d) for d in distributions]
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_canonical(requirement.name))
    return {
        module
        for module, owners in metadata.packages_distributions().items()
        if any(_canonical(owner) in closure for owner in owners)
    }


# A child interpreter that may import only the standard library, the client package and its
# declared dependencies with theirs (argv[3]): any other import (torch, transformers, the server
# package `explainserve`) raises ImportError.
_NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, json, sys

    ALLOWED = {"explainserve_client", *sys.argv[3].split(",")}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names or top in ALLOWED or top.startswith("_"):
                return None
            raise ImportError(f"the light client must not import {name}")

    sys.meta_path.insert(0, Block())

    from explainserve_client import Client

    target, token = sys.argv[1], sys.argv[2]
    with Client(target, token=token) as client:
        (e,) = client.explain("bert", "The food was cold.", isolate_batches=True)
        acts = client.activations("bert", ["The food was cold."], dtype="bfloat16")
    assert "torch" not in sys.modules and "explainserve" not in sys.modules
    import explainserve_client
    print(json.dumps({"units": e.unit_texts, "scores": e.scores.tolist(),
                      "rows": acts.rows(0).tolist(), "client": explainserve_client.__file__}))
    """
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/python built into a wheel (offline: this venv's setuptools, from a copy of the
    sources so that no build output lands in the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(
        ROOT / "clients" / "python",
        source,
        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(source)),
        ],
        check=True,
        timeout=300,
    )
    (built,) = (tmp / "dist").glob("explainserve_client-*-py3-none-any.whl")
    return built


def test_wheel_holds_the_package_and_only_light_dependencies(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (meta,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            Requirement(line.removeprefix("Requires-Dist: ")).name
            for line in archive.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    assert sorted(requires) == ["grpcio", "numpy", "protobuf"]
    package = {n for n in names if n.startswith("explainserve_client/")}
    assert package == {
        f"explainserve_client/{name}"
        for name in [
            "__init__.py",
            "client.py",
            "tensors.py",
            "py.typed",
            "v1/__init__.py",
            "v1/explain_pb2.py",
            "v1/explain_pb2.pyi",
            "v1/explain_pb2_grpc.py",
        ]
    }


def test_light_client_runs_without_torch(
    client: Client, client_server: ClientServer, wheel: Path, tmp_path: Path
) -> None:
    # The installed wheel's files, and nothing else of this repository, on the child's path.
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    allowed = importable_with(light_dependencies())
    assert "torch" not in allowed
    assert {"grpc", "google", "numpy"} <= allowed
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _NO_TORCH,
            client_server.target,
            client_server.token,
            ",".join(sorted(allowed)),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    child = json.loads(out.stdout)
    assert child["client"].startswith(str(site))
    (e,) = client.explain("bert", "The food was cold.", isolate_batches=True)
    assert child["units"] == e.unit_texts
    assert child["scores"] == e.scores.tolist()  # isolate_batches: bit for bit
    rows = client.activations("bert", ["The food was cold."], dtype="bfloat16").rows(0)
    assert child["rows"] == rows.tolist()


def light_dependencies() -> set[str]:
    """The distributions clients/python/pyproject.toml depends on."""
    project = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())
    return {Requirement(d).name for d in project["project"]["dependencies"]}


def test_declared_dependencies_are_the_light_ones() -> None:
    assert light_dependencies() == {"grpcio", "protobuf", "numpy"}
