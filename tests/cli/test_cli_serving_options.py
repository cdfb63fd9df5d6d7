"""The production-serving options of `explainserve serve`: batching wait, queue bound."""

from __future__ import annotations

from pathlib import Path

from explainserve.cli import build_parser, config_from_args
from explainserve.config import ServeConfig


def parse(*argv: str) -> ServeConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_worker_options_from_toml_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text("batch_wait_ms = 5\nmax_queued_rows = 1000\n[models]\nm = '/m'\n")
    config = parse("--config", str(toml), "--max-queued-rows", "2000")
    (model,) = config.model_configs()
    assert model.worker.batch_wait_seconds == 0.005
    assert model.worker.max_queued_rows == 2000


def test_worker_defaults() -> None:
    (model,) = parse("--model", "m=/m").model_configs()
    assert model.worker.batch_wait_seconds == 0.002
    assert model.worker.max_queued_rows == 200_000


def test_max_batch_ms_by_device_by_default_from_toml_or_flag(tmp_path: Path) -> None:
    (model,) = parse("--model", "m=/m").model_configs()
    assert model.worker.max_batch_ms is None  # the worker picks 100 on a CPU, 30 on a GPU
    toml = tmp_path / "serve.toml"
    toml.write_text("max_batch_ms = 50\n[models]\nm = '/m'\n")
    assert parse("--config", str(toml)).model_configs()[0].worker.max_batch_ms == 50.0
    flagged = parse("--config", str(toml), "--max-batch-ms", "0").model_configs()[0]
    assert flagged.worker.max_batch_ms == 0.0


def test_reuse_is_on_by_default_and_switched_off_by_toml_or_flag(tmp_path: Path) -> None:
    (model,) = parse("--model", "m=/m").model_configs()
    assert model.worker.reuse is True
    toml = tmp_path / "serve.toml"
    toml.write_text("reuse = false\n[models]\nm = '/m'\n")
    assert parse("--config", str(toml)).model_configs()[0].worker.reuse is False
    assert parse("--config", str(toml), "--reuse").model_configs()[0].worker.reuse is True
    assert parse("--model", "m=/m", "--no-reuse").model_configs()[0].worker.reuse is False


def test_security_metrics_and_keepalive_options(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("alpha\n\n  beta  \n")
    toml = tmp_path / "serve.toml"
    toml.write_text(
        'auth_tokens = ["gamma"]\nauth_token_file = "tokens"\ntls_cert = "certs/server.pem"\n'
        'tls_key = "certs/server.key"\nmetrics_port = 9100\nlog_format = "json"\n'
        "max_connection_age_s = 1800\n"
    )
    config = parse(
        "--config", str(toml), "--keepalive-time-s", "30", "--max-tokens-per-input", "64"
    )
    assert config.tokens() == ("gamma", "alpha", "beta")
    # Paths are relative to the file.
    assert config.server.tls_cert == (tmp_path / "certs/server.pem").resolve()
    assert config.server.tls_key == (tmp_path / "certs/server.key").resolve()
    assert config.server.tls_client_ca is None
    assert (config.server.metrics_port, config.log_format) == (9100, "json")
    assert (config.server.keepalive_time_s, config.server.max_connection_age_s) == (30.0, 1800.0)
    assert config.server.max_tokens_per_input == 64
    assert config.limits.max_inputs == 256


def test_security_defaults_are_off() -> None:
    config = parse()
    assert config.tokens() == ()
    server = config.server
    assert (server.tls_cert, server.tls_key, server.metrics_port) == (None, None, None)
    assert config.log_format == "text"


def test_calibration_is_on_when_served_and_configured_by_toml_or_flags(tmp_path: Path) -> None:
    (model,) = parse("--model", "m=/m").model_configs()
    assert model.worker.calibrate  # on in `serve`, off in a bare WorkerOptions
    assert model.worker.calibration_seconds == 10.0
    assert model.worker.batch_tokens == 0
    toml = tmp_path / "serve.toml"
    toml.write_text("calibrate = false\ncalibration_seconds = 2\n[models]\nm = '/m'\n")
    (model,) = parse("--config", str(toml)).model_configs()
    assert not model.worker.calibrate
    assert model.worker.calibration_seconds == 2.0
    flagged = parse("--config", str(toml), "--calibrate", "--batch-tokens", "1024")
    (model,) = flagged.model_configs()
    assert model.worker.calibrate
    assert model.worker.batch_tokens == 1024
    (model,) = parse("--model", "m=/m", "--no-calibrate").model_configs()
    assert not model.worker.calibrate
