"""README's causal-LM example runs as written against `explainserve serve --model
writer=builtin:tiny-gpt2` (built offline into a fresh cache), and its units follow one span rule
for the prompt and the continuation."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from explainserve.launch import spawn_serve
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    cache = tmp_path_factory.mktemp("builtin-cache")
    proc: subprocess.Popen[str] | None = None
    try:
        proc, port = spawn_serve(
            ["--port", "0", "--device", "cpu", "--model", "writer=builtin:tiny-gpt2"],
            env={"EXPLAINSERVE_CACHE_DIR": str(cache)},
            timeout=300,
        )
        yield port
    except RuntimeError as err:
        pytest.fail(str(err))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def readme_block(containing: str) -> str:
    """The README's ```python block that contains `containing`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_readme_causal_example_runs_as_written(writer: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{writer}") as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(readme_block('model="writer"'), {"stub": stub, "pb": pb})
    lines = out.getvalue().splitlines()
    # One line per continuation unit of " Paris." (word granularity: "Paris", ".").
    assert [line.split(" ", 1)[0] for line in lines] == ["Paris", "."]
    assert "('The', " in lines[0]


def test_prompt_and_continuation_units_follow_one_rule(writer: int) -> None:
    """GPT-2-style offsets count the space before a word in its token (" and" is 5 characters):
    prompt units and continuation units alike start after it."""
    prompt, continuation = "The food was cold and", " then it rained."
    with grpc.insecure_channel(f"127.0.0.1:{writer}") as channel:
        stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
        for granularity in (pb.GRANULARITY_TOKEN, pb.GRANULARITY_WORD):
            reply = stub.Explain(
                pb.ExplainRequest(
                    model="writer",
                    inputs=[pb.Input(text=prompt, continuation=pb.Continuation(text=continuation))],
                    occlusion=pb.Occlusion(),
                    granularity=granularity,
                ),
                timeout=60,
            )
            (e,) = reply.explanations
            text = prompt + continuation
            assert e.text == text
            for unit in [*e.units, *e.target_units]:
                assert unit.text == text[unit.char_start : unit.char_end]
                assert not unit.text[:1].isspace(), unit
            spans = {u.text: (u.char_start, u.char_end) for u in e.units}
            if granularity == pb.GRANULARITY_WORD:
                assert spans["and"] == (18, 21)  # a prompt unit
                assert spans["then"] == (22, 26)  # a continuation unit (as input)
                assert [u.text for u in e.target_units] == ["then", "it", "rained", "."]
