"""Per-model workers: the only place model forwards run, batched by a token budget."""
