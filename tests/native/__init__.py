"""Tests of the Rust extension `explainserve._native` against docs/native.md."""
