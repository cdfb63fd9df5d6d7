"""The command line's papercuts: --help and --version without torch, help derived from the
option definitions, every configuration mistake one line naming the key (exit status 2), a busy
port refused at start, and the too-long-input message."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from explainserve import __version__
from explainserve.cli import build_parser
from explainserve.config import ServeConfig, option_specs
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`explainserve *args` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "explainserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_help_and_version_import_no_torch() -> None:
    """What made `--help` take seconds was importing torch: it is not imported now."""
    code = (
        "import sys\n"
        "from explainserve.cli import main\n"
        "for argv in (['--help'], ['serve', '--help'], ['explain', '--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[]")
    assert cli("--version").stdout == f"explainserve {__version__}\n"


def test_help_is_derived_from_the_option_definitions() -> None:
    """Every ServeConfig field with a flag has it, with its help and the field's own default."""
    text = " ".join(cli("serve", "--help").stdout.split())
    specs = option_specs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names))  # one key per setting
    # Every ServeConfig field is a setting, or an option dataclass that holds settings.
    assert {s.path[0] for s in specs} == {f.name for f in dataclasses.fields(ServeConfig)}
    for spec in specs:
        if not spec.flag:
            continue
        assert spec.help, spec.name
        # An option on by default is listed as "--reuse, --no-reuse".
        assert f"{spec.flag_name} " in text or f"{spec.flag_name}, " in text, spec.name
        assert f"{spec.help} (default {spec.default_text()})" in text, spec.name
    # The papercuts of the issue: the real prefetch default, and help for --dtype/--log-level.
    assert "sent (default 12)" in text
    assert "(reduced precision: CUDA) (default float32)" in text
    assert "lowest level logged (default INFO)" in text
    parsed = build_parser().parse_args(["serve", "--log-level", "debug"])
    assert parsed.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("args", "toml", "message"),
    [
        (
            ["--device", "gpu"],
            None,
            "device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'",
        ),
        (
            ["--log-level", "foo"],
            None,
            "argument --log-level: invalid choice: 'FOO' (choose from 'DEBUG', 'INFO', "
            "'WARNING', 'ERROR', 'CRITICAL')",
        ),
        (
            ["--model", "m=/no/such/model"],
            None,
            "model 'm': directory /no/such/model does not exist",
        ),
        (["--model", "m=builtin:gpt5"], None, "unknown built-in model 'gpt5' for model 'm'"),
        (["--model", "nopath"], None, "--model expects NAME=PATH, got 'nopath'"),
        ([], "prot = 6000\n", "unknown key 'prot' in {toml}: did you mean 'port'? valid keys: "),
        ([], 'port = "high"\n', "port must be an integer, got 'high'"),
        ([], 'dtype = "fp8"\n', "dtype must be one of float32, bfloat16, float16; got 'fp8'"),
        ([], "port = \n", "{toml} is not valid TOML"),
        ([], "[tasks]\nw = 'causal-lm'\n", "[tasks] names 'w', which is not a served model"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], toml: str | None, message: str
) -> None:
    if toml is not None:
        path = tmp_path / "serve.toml"
        path.write_text(toml)
        args = [*args, "--config", str(path)]
        message = message.format(toml=path)
    done = cli("serve", *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert done.stderr.startswith("explainserve serve: error: ")
    assert message in done.stderr


def test_a_directory_without_a_config_is_named(tmp_path: Path) -> None:
    done = cli("serve", "--model", f"m={tmp_path}")
    assert done.returncode == 2
    assert done.stderr == (
        f"explainserve serve: error: model 'm': {tmp_path} has no config.json (save the model "
        "with save_pretrained)\n"
    )


def test_a_busy_port_fails_at_start() -> None:
    """gRPC's SO_REUSEPORT is off: a second server on a serving port does not start."""
    first = start(ServerOptions(port=0))
    try:
        with pytest.raises(OSError, match=f"could not bind 127.0.0.1:{first.port}: address in use"):
            start(ServerOptions(port=first.port))
    finally:
        first.stop(grace=None)


def test_a_busy_port_is_one_line_from_the_cli(tiny_bert_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("serve", "--port", str(port), "--model", f"m={tiny_bert_dir}")
    assert done.returncode == 1
    assert done.stderr.endswith(
        f"explainserve serve: error: could not bind 127.0.0.1:{port}: address in use "
        "(another server listens on this port)\n"
    )
