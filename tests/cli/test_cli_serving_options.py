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
