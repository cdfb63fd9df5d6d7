"""Tests of the embedded default model (`explainserve.models.default_model`)."""
