"""What a test does when an external tool it runs is missing (Go, Node and their clients,
kustomize, kubeconform, buf, headless Chromium).

`make test` builds or installs every one of them first and sets `EXPLAINSERVE_REQUIRE_TOOLS=1`,
so under it a missing tool is a failure: a build step that silently produced nothing must not
pass as a skip. A plain `pytest` run (a developer without the toolchains) skips those tests
instead, saying what to run to get the tool.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

#: Set (to 1) by the Makefile's test target: every tool is required.
REQUIRE_TOOLS = "EXPLAINSERVE_REQUIRE_TOOLS"


def tools_required() -> bool:
    """Whether a missing tool fails the test (under `make test`) rather than skipping it."""
    return os.environ.get(REQUIRE_TOOLS, "") not in ("", "0")


def missing_tool(message: str) -> NoReturn:
    """Fails the test with `message` (what is missing, how to get it) under `make test`, skips
    it otherwise."""
    if tools_required():
        pytest.fail(f"{message} ({REQUIRE_TOOLS} is set: `make test` requires every tool)")
    pytest.skip(f"{message} (set {REQUIRE_TOOLS}=1 to make this a failure, as `make test` does)")
