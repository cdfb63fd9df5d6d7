"""GetActivations' chunking options: defaults, flags, TOML, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from explainserve.activations.limits import ActivationLimits
from explainserve.cli import build_parser, config_from_args
from explainserve.config import ServeConfig
from explainserve.errors import InvalidArgument


def parse(*argv: str) -> ServeConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_are_the_domain_defaults() -> None:
    assert parse().activations == ActivationLimits()


def test_flags_and_toml(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text("activation_chunk_inputs = 16\nactivation_prefetch_chunks = 1\n")
    limits = parse("--config", str(toml), "--activation-chunk-bytes", "65536").activations
    assert (limits.chunk_inputs, limits.chunk_bytes, limits.prefetch_chunks) == (16, 65536, 1)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--activation-chunk-inputs=0", "activation_chunk_inputs must be at least 1, got 0"),
        ("--activation-chunk-bytes=-5", "activation_chunk_bytes must be at least 1, got -5"),
        ("--activation-prefetch-chunks=-1", "activation_prefetch_chunks must be at least 0"),
    ],
)
def test_bad_values(flag: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse(flag)


def test_head_rows_limit_is_a_setting(tmp_path: Path) -> None:
    assert parse().activations.max_head_rows == ActivationLimits().max_head_rows
    assert parse("--max-head-rows", "4").activations.max_head_rows == 4
    toml = tmp_path / "serve.toml"
    toml.write_text("max_head_rows = 9\n")
    assert parse("--config", str(toml)).activations.max_head_rows == 9
    with pytest.raises(InvalidArgument, match="max_head_rows must be at least 1, got 0"):
        parse("--max-head-rows", "0")
