"""Starting `explainserve serve` as a child process and learning its port (tests, benchmarks,
supervisors): the CLI prints "explainserve listening on HOST:PORT" once its models are loaded
and warmed up, which is when it serves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

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


_METRICS = re.compile(r"metrics on [\d.]+:(\d+)")


@dataclass
class Replica:
    """One `explainserve serve` process of several (scale-out tests and benchmarks): its gRPC
    and metrics ports, and its output, read by a thread so the pipe never fills."""

    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    output: list[str] = field(default_factory=list)

    def requests(self, rpc: str = "Explain", code: str = "OK") -> int:
        """The `explainserve_requests_total` count of `rpc` answered with `code`, all methods
        and models together, scraped from the replica's metrics endpoint."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
        ) as reply:
            text = reply.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != "explainserve_requests":
                continue
            for sample in family.samples:
                if (
                    sample.name == "explainserve_requests_total"
                    and sample.labels.get("rpc") == rpc
                    and sample.labels.get("code") == code
                ):
                    total += sample.value
        return int(total)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (the server drains), then waits; kills it after `timeout` seconds. Returns
        the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def spawn_replica(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> Replica:
    """`spawn_serve` on port 0 with a metrics endpoint on a free port, once it serves."""
    proc, port = spawn_serve(
        [*args, "--port", "0", "--metrics-port", "0"], env=env, timeout=timeout
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = _METRICS.search(line)
    if match is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the server did not report its metrics port: {line!r}")
    replica = Replica(proc, port, int(match.group(1)), [line])
    stdout = proc.stdout

    def drain() -> None:
        for text in stdout:
            replica.output.append(text)

    threading.Thread(target=drain, daemon=True).start()
    return replica


def balanced_target(replicas: Sequence[Replica]) -> str:
    """A gRPC target naming every replica: `ipv4:127.0.0.1:P1,127.0.0.1:P2,...`."""
    return "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
