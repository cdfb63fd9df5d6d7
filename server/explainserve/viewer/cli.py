"""`explainserve explain`: placeholder replaced below."""

from __future__ import annotations

import argparse


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `explainserve explain`."""


def run_explain(args: argparse.Namespace) -> int:
    """Runs `explainserve explain`."""
    return 0
