"""Starting `explainserve serve` as a child process and learning its port (tests, benchmarks,
supervisors): the CLI prints "explainserve listening on HOST:PORT" once its models are loaded
and warmed up, which is when it serves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

_LISTENING = re.compile(r"listening on [\d.]+:(\d+)")


def spawn_serve(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> tuple[subprocess.Popen[str], int]:
    """Runs `python -m explainserve.cli serve *args` (stdout and stderr piped together,
    unbuffered, `env` added to this process's environment) and returns it with the port it
    reports. Kills it and raises RuntimeError, with its last output, if it exits or says nothing
    of the kind within `timeout` seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "explainserve.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = _LISTENING.search(line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    proc.wait()
    raise RuntimeError("the server did not start:\n" + "".join(seen[-30:]))
