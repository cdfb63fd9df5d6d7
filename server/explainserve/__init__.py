"""ExplainServe: a gRPC sidecar that explains Hugging Face transformer models in production."""

__version__ = "0.1.0"
