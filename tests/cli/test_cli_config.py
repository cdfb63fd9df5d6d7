"""`explainserve serve` options: defaults, a TOML file, flags over the file, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from explainserve.cli import build_parser, config_from_args
from explainserve.config import DEFAULT_MODEL_NAME, ServeConfig, parse_model_flag
from explainserve.errors import InvalidArgument


def parse(*argv: str) -> ServeConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults() -> None:
    config = parse()
    assert (config.server.host, config.server.port, config.device, config.dtype) == (
        "127.0.0.1",
        50051,
        "auto",
        "float32",
    )
    assert config.models == {}
    assert config.server.max_message_bytes == 64 * 1024 * 1024


def test_model_flags_name_local_directories(tmp_path: Path) -> None:
    config = parse("--model", f"a={tmp_path}", "--model", "b=~/models/b")
    assert config.models == {"a": tmp_path, "b": Path("~/models/b").expanduser()}
    (a, b) = config.model_configs()
    assert (a.name, a.path, b.name) == ("a", tmp_path, "b")


@pytest.mark.parametrize("bad", ["nopath", "=dir", "name="])
def test_model_flag_needs_name_and_path(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="NAME=PATH"):
        parse_model_flag(bad)


def test_toml_file_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(
        'port = 6000\ndevice = "cpu"\ntoken_budget = 1024\nreplacement_fallback = "eos"\n'
        '[models]\nsentiment = "/srv/models/sentiment"\n'
    )
    config = parse("--config", str(toml), "--port", "7000")
    assert config.server.port == 7000  # the flag wins
    assert config.device == "cpu"
    assert config.worker.token_budget == 1024
    assert config.replacement_fallback == "eos"
    assert config.models == {"sentiment": Path("/srv/models/sentiment")}
    (model,) = config.model_configs()
    assert model.worker.token_budget == 1024
    assert model.replacement_fallback == "eos"


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text("prot = 6000\n")
    with pytest.raises(InvalidArgument, match=r"unknown key .prot. in .*did you mean .port."):
        parse("--config", str(toml))


def test_no_model_means_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import explainserve.models.default_model as default_model

    monkeypatch.setattr(default_model, "default_model_dir", lambda: tmp_path)
    (model,) = parse("--device", "cpu").model_configs()
    assert (model.name, model.path, model.device) == (DEFAULT_MODEL_NAME, tmp_path, "cpu")


def test_toml_tasks_and_logits_budget(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(
        "logits_budget = 4096\n"
        '[models]\nwriter = "/srv/models/writer"\nsentiment = "/srv/models/sentiment"\n'
        '[tasks]\nwriter = "causal-lm"\n'
    )
    models = {m.name: m for m in parse("--config", str(toml)).model_configs()}
    assert models["writer"].task == "causal-lm"
    assert models["sentiment"].task == "auto"
    assert models["writer"].worker.logits_budget == 4096


@pytest.mark.parametrize(
    ("tasks", "message"),
    [('nobody = "causal-lm"', "not a served model"), ('writer = "translation"', "unknown task")],
)
def test_bad_toml_tasks(tmp_path: Path, tasks: str, message: str) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(f'[models]\nwriter = "/srv/models/writer"\n[tasks]\n{tasks}\n')
    with pytest.raises(InvalidArgument, match=message):
        parse("--config", str(toml)).model_configs()


def test_causal_limits_from_toml_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text("max_new_tokens = 64\nmax_continuation_tokens = 100\n")
    config = parse("--config", str(toml), "--max-continuation-tokens", "50", "--logits-budget", "8")
    causal = config.limits.causal
    assert (causal.max_new_tokens, causal.max_continuation_tokens) == (64, 50)
    assert config.model_configs()[0].worker.logits_budget == 8
    defaults = parse().limits.causal
    assert (defaults.max_new_tokens, defaults.max_continuation_tokens) == (256, 256)


@pytest.mark.parametrize("flag", ["--max-new-tokens", "--max-continuation-tokens"])
def test_causal_limits_must_be_positive(flag: str) -> None:
    with pytest.raises(InvalidArgument, match="must be at least 1"):
        parse(flag, "0")
