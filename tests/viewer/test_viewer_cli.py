"""`explainserve explain` end to end against a live server: the request it builds, its JSON
(the same numbers as a direct Explain or ExplainConcepts call), texts from arguments, a file or
stdin, errors, the concept options' mistakes, and no torch in the client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from explainserve.cli import build_parser
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc
from explainserve.viewer.cli import (
    UsageError,
    build_concepts_request,
    build_request,
    concept_bars,
)

RunCli = Callable[..., "subprocess.CompletedProcess[str]"]

TEXTS = ["The food was cold", "I loved the friendly staff."]


def parse(*argv: str) -> pb.ExplainRequest:
    args = build_parser().parse_args(["explain", *argv])
    return build_request(args, list(args.texts))


def test_request_from_the_command_line() -> None:
    request = parse(
        "a",
        "b",
        "--model",
        "m",
        "--method",
        "sobol",
        "--param",
        "n_points=8",
        "--param",
        "order=first",
        "--param",
        "sampler=latin-hypercube",
        "--granularity",
        "all-tokens",
        "--inference-mode",
        "log-softmax",
        "--target",
        "positive",
        "--target",
        "0",
        "--seed",
        "7",
        "--truncate",
    )
    assert request.model == "m"
    assert [i.text for i in request.inputs] == ["a", "b"]
    assert request.WhichOneof("method") == "sobol"
    assert (request.sobol.n_points, request.sobol.order, request.sobol.sampler) == (
        8,
        pb.SOBOL_ORDER_FIRST,
        pb.SOBOL_SAMPLER_LATIN_HYPERCUBE,
    )
    assert request.granularity == pb.GRANULARITY_ALL_TOKENS
    assert request.inference_mode == pb.INFERENCE_MODE_LOG_SOFTMAX
    assert [t.WhichOneof("target") for t in request.inputs[1].targets] == ["label", "index"]
    assert (request.seed, request.truncate) == (7, True)
    causal = parse("p", "--continuation", " then", "--max-new-tokens", "3", "--method", "lime")
    assert causal.inputs[0].continuation.text == " then"
    assert causal.generation.max_new_tokens == 3
    assert causal.WhichOneof("method") == "lime"


def test_concept_requests_from_the_command_line() -> None:
    """`--concepts NAME` alone: an ExplainConcepts request for raw C x gradient contributions of
    the classes asked; with `--concept K` too: an Explain of those concepts' activations."""
    args = build_parser().parse_args(
        ["explain", "a", "--model", "m", "--concepts", "pca8", "--target", "positive", "--top", "3"]
    )
    assert concept_bars(args)
    request = build_concepts_request(args, list(args.texts))
    assert (request.model, request.concepts.name) == ("m", "pca8")
    assert [t.label for t in request.inputs[0].targets] == ["positive"]
    assert (request.HasField("normalization"), request.normalization) == (True, False)
    assert (request.HasField("concepts_x_gradients"), request.concepts_x_gradients) == (True, True)
    heat = parse("a", "--concepts", "pca8", "--concept", "price", "--concept", "3", "--seed", "2")
    target = heat.concept_target
    assert target.concepts.name == "pca8"
    assert [t.WhichOneof("target") for t in target.concepts_explained] == ["label", "index"]
    assert (target.concepts_explained[0].label, target.concepts_explained[1].index) == ("price", 3)
    assert list(heat.inputs[0].targets) == []
    assert (heat.WhichOneof("method"), heat.granularity, heat.seed) == (
        "occlusion",
        pb.GRANULARITY_WORD,
        2,
    )
    assert not parse("a").HasField("concept_target")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concept", "3"], "--concept K needs --concepts NAME"),
        (["--concepts", "s", "--concept", "3", "--target", "positive"], "--target picks classes"),
        (["--concepts", "s", "--concept", "3", "--top", "2"], "--top N applies to --concepts"),
        (["--top", "2"], "--top N applies to --concepts NAME without --concept"),
        (["--concepts", "s", "--top", "0"], "--top N: at least 1 concept; got 0"),
        (
            ["--concepts", "s", "--method", "lime", "--seed", "0"],
            "--method, --seed: heat-map options; --concepts NAME alone shows concept",
        ),
    ],
)
def test_concept_option_mistakes(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        concept_bars(build_parser().parse_args(["explain", "a", *argv]))


def test_concept_mistakes_are_found_before_the_network(run_cli: RunCli) -> None:
    """A usage error (status 2) even when no server listens there."""
    done = run_cli("explain", "hi", "--server", "127.0.0.1:1", "--concept", "3")
    assert done.returncode == 2
    assert done.stderr == (
        "explainserve explain: error: --concept K needs --concepts NAME: the concept set K "
        "belongs to\n"
    )


def test_concepts_json_is_the_explain_concepts_response(
    tmp_path: Path, server_address: str, run_cli: RunCli
) -> None:
    """`--concepts NAME --json`: what a direct ExplainConcepts call with raw contributions
    returns, number for number; an unknown set is a one-line NOT_FOUND."""
    out = tmp_path / "concepts.json"
    done = run_cli(
        "explain", *TEXTS, "--server", server_address, "--model", "bert", "--concepts", "pca8",
        "--target", "positive", "--json", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    got = json.loads(out.read_text())
    with grpc.insecure_channel(server_address) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        want = stub.ExplainConcepts(
            pb.ExplainConceptsRequest(
                model="bert",
                inputs=[pb.Input(text=t, targets=[pb.Target(label="positive")]) for t in TEXTS],
                concepts=pb.ConceptSetRef(name="pca8"),
                normalization=False,
            ),
            timeout=60,
        )
    assert (got["model"], got["concept_set"]) == ("bert", "pca8")
    assert got["concept_labels"] == list(want.concept_labels)
    assert len(got["explanations"]) == len(TEXTS)
    for g, w in zip(got["explanations"], want.explanations, strict=True):
        assert g["text"] == w.text
        np.testing.assert_array_equal(
            np.asarray(g["concepts"]["values"], dtype=np.float32),
            np.asarray(w.concepts.values, dtype=np.float32),
        )
        (gt,), (wt,) = g["targets"], w.targets
        assert gt["target"] == {"index": 2, "label": "positive"}
        np.testing.assert_array_equal(
            np.asarray(gt["contributions"]["values"], dtype=np.float32),
            np.asarray(wt.contributions.values, dtype=np.float32),
        )
        # Raw contributions: they add up to concept_sum (normalized ones would add up to 1 or
        # less in absolute value).
        assert sum(gt["contributions"]["values"]) == pytest.approx(wt.concept_sum, rel=1e-4)
        assert np.float32(gt["residual"]) == np.float32(wt.residual)
    missing = run_cli(
        "explain", "hi", "--server", server_address, "--model", "bert", "--concepts", "nope"
    )
    assert missing.returncode == 1
    assert missing.stderr == (
        "explainserve explain: NOT_FOUND: no concept set named 'nope'; concept sets: pca8\n"
    )


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("n_pointz=8", "Sobol takes NAME=VALUE with NAME one of: n_points, order, sampler"),
        ("order=second", "--param order: one of first, total; got 'second'"),
        ("n_points=many", "--param n_points: 'many' is not a valid n_points"),
    ],
)
def test_bad_method_parameters(param: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse("a", "--method", "sobol", "--param", param)


def test_json_is_the_explain_response(tmp_path: Path, server_address: str, run_cli: RunCli) -> None:
    """The JSON holds what a direct Explain call of the same request returns, number for
    number (the same request alone on the server: bit-exact by design)."""
    out = tmp_path / "out.json"
    done = run_cli(
        "explain", *TEXTS, "--server", server_address, "--model", "bert", "--json", str(out)
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(out.read_text())
    with grpc.insecure_channel(server_address) as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        request = parse(*TEXTS, "--model", "bert")
        want = stub.Explain(request, timeout=60)
    assert got["model"] == "bert"
    assert len(got["explanations"]) == 2
    for g, w in zip(got["explanations"], want.explanations, strict=True):
        assert g.get("input_index", 0) == w.input_index
        assert [u["text"] for u in g["units"]] == [u.text for u in w.units]
        # JSON writes float32 values in their shortest form: exact once read back as float32.
        got_scores = np.asarray(g["scores"]["values"], dtype=np.float32)
        np.testing.assert_array_equal(got_scores, np.asarray(w.scores.values, dtype=np.float32))
        assert [t["label"] for t in g["targets"]] == [t.label for t in w.targets]
        assert g["text"] == w.text


def test_texts_from_a_file_and_from_stdin(
    tmp_path: Path, server_address: str, run_cli: RunCli
) -> None:
    listing = tmp_path / "texts.txt"
    listing.write_text("\n".join([TEXTS[0], "", TEXTS[1]]) + "\n")
    common = ("--server", server_address, "--model", "bert", "--json", "-", "--quiet")
    from_file = run_cli("explain", "--file", str(listing), *common)
    from_stdin = run_cli("explain", *common, stdin=listing.read_text())
    for done in (from_file, from_stdin):
        assert done.returncode == 0, done.stderr
        explanations = json.loads(done.stdout)["explanations"]
        assert [e["text"] for e in explanations] == TEXTS
    # The same request: the same response but for the time each took.
    a, b = (json.loads(done.stdout) for done in (from_file, from_stdin))
    for e in a["explanations"] + b["explanations"]:
        del e["counters"]["elapsed_ms"]
    assert a == b


def test_server_errors_are_one_line(server_address: str, run_cli: RunCli) -> None:
    done = run_cli("explain", "hi", "--server", server_address, "--model", "nope")
    assert done.returncode == 1
    assert done.stderr.startswith("explainserve explain: NOT_FOUND: ")
    assert done.stderr.count("\n") == 1
    bad = run_cli("explain", "hi", "--server", server_address, "--param", "x=1")
    assert bad.returncode == 2
    assert bad.stderr == (
        "explainserve explain: error: --param 'x=1': Occlusion takes NAME=VALUE with NAME one "
        "of: none\n"
    )


def test_the_client_imports_no_torch(tmp_path: Path, server_address: str) -> None:
    """The explain client (and --help) never imports torch: it runs in a light environment."""
    code = (
        "import sys\n"
        "from explainserve.cli import main\n"
        f"status = main(['explain', 'Fine.', '--server', '{server_address}', '--model', 'bert',"
        f" '--html', r'{tmp_path / 'page.html'}', '--json', r'{tmp_path / 'out.json'}'])\n"
        "assert status == 0, status\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("heavy: []")
    assert (tmp_path / "page.html").stat().st_size > 0
