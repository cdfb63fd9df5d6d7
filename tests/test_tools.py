"""A missing external tool fails a test under `make test` (`EXPLAINSERVE_REQUIRE_TOOLS=1`) and
skips it otherwise (`tests/tools.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tools import REQUIRE_TOOLS, missing_tool

ROOT = Path(__file__).resolve().parents[1]


def outcome(message: str) -> BaseException:
    """What `missing_tool(message)` raised: pytest's failure or its skip."""
    try:
        missing_tool(message)
    except (pytest.fail.Exception, pytest.skip.Exception) as exc:
        return exc
    raise AssertionError("missing_tool returned")


@pytest.mark.parametrize("value", ["1", "yes"])
def test_a_missing_tool_fails_when_tools_are_required(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS, value)
    raised = outcome("no frobnicator: run `make frob`")
    assert isinstance(raised, pytest.fail.Exception), type(raised)
    assert "no frobnicator: run `make frob`" in str(raised)


@pytest.mark.parametrize("value", [None, "", "0"])
def test_a_missing_tool_skips_otherwise(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_TOOLS, value)
    raised = outcome("no frobnicator: run `make frob`")
    assert isinstance(raised, pytest.skip.Exception), type(raised)
    assert "no frobnicator: run `make frob`" in str(raised)


def test_make_test_requires_every_tool() -> None:
    """The Makefile's test target runs pytest with the variable set."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert f"{REQUIRE_TOOLS}=1 $(PY) -m pytest" in recipe
