"""The Dockerfile, checked without a Docker engine (`make image-test` builds and runs the image
where one runs): its stages, user, ports, health check and entry point parsed with
dockerfile-parse, every file it copies present in the build context, and the commands it runs
that can run here run here: the runtime part of the lock, the health probe against a live
server."""

from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from explainserve.explain.service import Explainer
from explainserve.grpc.server import RunningServer, ServerOptions, start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry
from explainserve.probe import DEFAULT_SERVICE

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import lock_subset  # noqa: E402


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser


def instructions(parser: DockerfileParser) -> list[dict[str, Any]]:
    return list(parser.structure)


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    """The instructions of each stage (from its FROM on)."""
    out: list[list[dict[str, Any]]] = []
    for ins in instructions(parser):
        if ins["instruction"] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_two_stages_from_build_arguments(dockerfile: DockerfileParser) -> None:
    build, runtime = stages(dockerfile)
    assert build[0]["value"] == "${BUILD_IMAGE} AS build"
    assert runtime[0]["value"] == "${BASE_IMAGE} AS runtime"
    args = {
        i["value"].partition("=")[0]: i["value"].partition("=")[2]
        for i in instructions(dockerfile)
        if i["instruction"] == "ARG"
    }
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert args["BUILD_IMAGE"].startswith("debian:trixie")
    build_runs = " ".join(i["value"] for i in build if i["instruction"] == "RUN")
    assert "maturin build --release --locked" in build_runs
    assert "lock_subset.py requirements.lock --runtime" in build_runs
    runtime_runs = " ".join(i["value"] for i in runtime if i["instruction"] == "RUN")
    assert "--require-hashes --no-deps -r /tmp/runtime.lock" in runtime_runs
    assert "pip check" in runtime_runs
    assert "python -m explainserve.models.default_model" in runtime_runs


def test_runs_as_a_non_root_user_with_health_check_and_entry_point(
    dockerfile: DockerfileParser,
) -> None:
    _, runtime = stages(dockerfile)
    (user,) = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert user == "${UID}:${UID}"
    (uid,) = [i["value"] for i in runtime if i["instruction"] == "ARG"]
    assert uid == "UID=10001"
    # The default model is built before USER, so the non-root user only reads it.
    kinds = [i["instruction"] for i in runtime]
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    (expose,) = [i["value"] for i in runtime if i["instruction"] == "EXPOSE"]
    assert expose.split() == ["50051", "8080", "9090"]
    entry = json.loads(dockerfile.structure[-2]["value"])
    cmd = json.loads(dockerfile.structure[-1]["value"])
    assert (dockerfile.structure[-2]["instruction"], entry) == ("ENTRYPOINT", ["explainserve"])
    assert dockerfile.structure[-1]["instruction"] == "CMD"
    assert cmd[0] == "serve"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert flags["--host"] == "0.0.0.0"
    assert (flags["--port"], flags["--http-port"], flags["--metrics-port"]) == (
        "50051",
        "8080",
        "9090",
    )
    (health,) = [i["value"] for i in runtime if i["instruction"] == "HEALTHCHECK"]
    options, _, command = health.partition("CMD ")
    assert "--start-period=" in options
    assert json.loads(command) == [
        "python",
        "-m",
        "explainserve.probe",
        "--target",
        f"127.0.0.1:{flags['--port']}",
    ]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` out of the build context (its patterns here are plain
    names and `**/` globs, no `!` exceptions)."""
    parts = Path(path).parts
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for i in range(len(parts)):
            prefix = str(Path(*parts[: i + 1]))
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(parts[i], bare):
                return True
    return False


def test_every_copied_file_is_in_the_build_context(dockerfile: DockerfileParser) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns)
    copied = []
    for ins in instructions(dockerfile):
        if ins["instruction"] != "COPY":
            continue
        words = shlex.split(ins["value"])
        if any(w.startswith("--from=") for w in words):
            continue
        for source in words[:-1]:
            copied.append(source)
            assert (ROOT / source).exists(), source
            assert not _ignored(source, patterns), f"{source} is in .dockerignore"
    assert {"requirements.lock", "Cargo.lock", "native", "server"} <= set(copied)
    # The heavy local directories stay out of the context.
    for local in (".venv", "target", ".make", ".git"):
        assert _ignored(local, patterns), local


def _requires(name: str, extras: frozenset[str], env: dict[str, str]) -> Iterator[Requirement]:
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        if requirement.marker is None or any(
            requirement.marker.evaluate({**env, "extra": extra}) for extra in extras or {""}
        ):
            yield requirement


def test_the_runtime_lock_is_what_the_installed_server_needs() -> None:
    """The image's package set (scripts/lock_subset.py --runtime) against the installed
    distribution's own metadata: every package explainserve needs at run time, transitively,
    on this platform, is in it at the version installed here (the lock's), and the dev tools
    are not."""
    text = subprocess.run(
        [sys.executable, str(ROOT / "scripts/lock_subset.py"), "requirements.lock", "--runtime"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    subset = lock_subset.parse_lock(text)
    env: dict[str, str] = dict(default_environment())  # type: ignore[arg-type]
    needed: set[str] = set()
    todo = [(name, frozenset[str]()) for name in lock_subset.runtime_roots(ROOT / "pyproject.toml")]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in needed and not extras:
            continue
        needed.add(key)
        for requirement in _requires(name, extras, env):
            todo.append((requirement.name, frozenset(requirement.extras)))
    missing = needed - set(subset)
    assert not missing, missing
    for name in needed:
        pins = [line.split("==")[1].split()[0] for line in subset[name].lines if "==" in line]
        assert metadata.version(name) in pins, name
    assert {"torch", "transformers", "grpcio", "numpy"} <= set(subset)
    assert not {"pytest", "ruff", "mypy", "maturin", "grpcio-tools"} & set(subset)
    assert all("--hash=sha256:" in "\n".join(e.lines) for e in subset.values())


def test_lock_subset_follows_the_via_annotations() -> None:
    lock = (
        "a==1.0 \\\n    --hash=sha256:aa\n    # via explainserve\n"
        "b==2.0 \\\n    --hash=sha256:bb\n    # via\n    #   a\n    #   c\n"
        "c==3.0 \\\n    --hash=sha256:cc\n    # via explainserve\n"
        "d==4.0 ; sys_platform == 'linux' \\\n    --hash=sha256:dd\n    # via b\n"
    )

    def pins(roots: list[str]) -> list[str]:
        return [line for line in lock_subset.subset(lock, roots).splitlines() if "==" in line]

    assert pins(["a"]) == ["a==1.0 \\", "b==2.0 \\", "d==4.0 ; sys_platform == 'linux' \\"]
    assert pins(["c"]) == ["b==2.0 \\", "c==3.0 \\", "d==4.0 ; sys_platform == 'linux' \\"]
    # The hashes and annotations come along, byte for byte.
    assert lock_subset.subset(lock, ["d"]) == lock[lock.index("d==") :]
    with pytest.raises(KeyError, match="not in the lock: e"):
        lock_subset.subset(lock, ["e"])


@pytest.fixture(scope="module")
def loading_server(tiny_bert_dir: Path) -> Iterator[RunningServer]:
    registry = Registry()
    registry.add(load_model(ModelConfig(name="bert", path=tiny_bert_dir, device="cpu")))
    running = start(ServerOptions(port=0), Explainer(registry), serving=False)
    yield running
    running.stop(grace=None)
    registry.close()


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK's command, as the image runs it."""
    return subprocess.run(
        [sys.executable, "-m", "explainserve.probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_health_probe_follows_the_server(loading_server: RunningServer) -> None:
    target = f"127.0.0.1:{loading_server.port}"
    loading = probe("--target", target)
    assert (loading.returncode, loading.stdout) == (1, "NOT_SERVING\n")
    loading_server.set_serving()
    ready = probe("--target", target)
    assert (ready.returncode, ready.stdout) == (0, "SERVING\n")
    whole = probe("--target", target, "--service", "")
    assert (whole.returncode, whole.stdout) == (0, "SERVING\n")
    unknown = probe("--target", target, "--service", "no.such.Service")
    assert (unknown.returncode, unknown.stdout) == (1, "NOT_FOUND\n")
    assert DEFAULT_SERVICE == "explainserve.v1.ExplainService"


def test_the_health_probe_fails_without_a_server() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        down = probe("--target", f"127.0.0.1:{port}", "--timeout", "2")
    assert down.returncode == 1
    assert down.stdout in ("UNAVAILABLE\n", "DEADLINE_EXCEEDED\n")
