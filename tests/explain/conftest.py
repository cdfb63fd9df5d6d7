"""Fixtures of the Explain domain tests: the tiny models served through a `Registry`, the same
models loaded a second time and called directly (the independent reference), and a linear
bag-of-words model whose attributions are known in closed form.

Every reference here calls the Hugging Face model itself (`model(input_ids=...)` or
`model(inputs_embeds=...)` on unpadded rows of one input) and never goes through the worker, so a
bug in padding, batching, masking or estimation shows up as a mismatch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from reference_models import Direct
from transformers import AutoTokenizer

from explainserve.explain.limits import Limits
from explainserve.explain.method import Method
from explainserve.explain.params import ExplainParams, Explanation
from explainserve.explain.service import Explainer
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry, Replacement, ServedModel
from explainserve.scheduling.options import WorkerOptions
from explainserve.scheduling.worker import Worker
from explainserve.vocabulary import InputSpec

#: Served name -> (directory fixture, replacement fallback).
SERVED = {
    "bert": ("tiny_bert_dir", "unk"),
    "gpt2": ("tiny_gpt2_dir", "unk"),
    "gpt2-zero": ("tiny_gpt2_dir", "zero_embedding"),
}
#: Words of the linear model's text and their weights for class 0 ("pos"); class 1 is the negation.
LINEAR_WORDS = ["cats", "dogs", "birds", "fish", "horses", "cows", "sheep", "goats"]
LINEAR_WEIGHTS = [2.0, -1.5, 0.7, 3.1, -0.4, 1.2, -2.6, 0.1]


@dataclass
class Run:
    """Runs Explain requests and returns explanations sorted by input index."""

    explainer: Explainer

    def many(
        self,
        model: str,
        inputs: Sequence[str | InputSpec],
        method: Method,
        **kwargs: object,
    ) -> list[Explanation]:
        """Every input's explanation, by input index."""
        specs = [InputSpec(text=i) if isinstance(i, str) else i for i in inputs]
        params = ExplainParams(model=model, inputs=specs, method=method, **kwargs)  # type: ignore[arg-type]
        out = sorted(self.explainer.explain(params), key=lambda e: e.input_index)
        assert [e.input_index for e in out] == list(range(len(specs)))
        return out

    def one(
        self, model: str, item: str | InputSpec, method: Method, **kwargs: object
    ) -> Explanation:
        """The explanation of a single input."""
        return self.many(model, [item], method, **kwargs)[0]


@pytest.fixture(scope="session")
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """The tiny BERT and GPT-2 classifiers on CPU, plus GPT-2 with zero-embedding replacement."""
    reg = Registry()
    for name, (dir_fixture, fallback) in SERVED.items():
        path = request.getfixturevalue(dir_fixture)
        reg.add(load_model(ModelConfig(name, path, device="cpu", replacement_fallback=fallback)))  # type: ignore[arg-type]
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def explainer(registry: Registry) -> Explainer:
    """An Explainer over `registry` with the default limits."""
    return Explainer(registry, Limits())


@pytest.fixture(scope="session")
def run(explainer: Explainer) -> Run:
    """Runs requests against the shared registry."""
    return Run(explainer)


@pytest.fixture(scope="session")
def direct(tiny_bert_dir: Path, tiny_gpt2_dir: Path) -> dict[str, Direct]:
    """Served name -> the same weights loaded directly with AutoModelForSequenceClassification."""
    gpt2 = Direct(tiny_gpt2_dir)
    return {"bert": Direct(tiny_bert_dir), "gpt2": gpt2, "gpt2-zero": gpt2}


class LinearBagRunner:
    """A Runner for a linear bag-of-words classifier: the input embedding of a token is its row
    `W[id]` of class weights, and the logits are the sum of the attended rows."""

    pad_id = 0
    padding_side = "right"

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.device = torch.device("cpu")

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """`W[ids]`."""
        return self.table[ids]

    def logits(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        """Sum over attended positions of the input embeddings."""
        e = self.embed(ids) if inputs_embeds is None else inputs_embeds
        return (e * attention.unsqueeze(-1).to(e.dtype)).sum(dim=1)


@dataclass
class Linear:
    """The served linear model, its weight table and a request runner."""

    served: ServedModel
    table: torch.Tensor
    run: Run
    text: str

    def weights(self, ids: NDArray[np.int64], target: int) -> NDArray[np.float64]:
        """`W[id, target]` of each id."""
        return self.table[torch.as_tensor(ids), target].double().numpy()


@pytest.fixture(scope="module")
def linear(tiny_bert_dir: Path) -> Iterator[Linear]:
    """A linear bag-of-words model served through a real Worker, with the MiniLM tokenizer.

    `W[mask] = 0`, so replacing a word removes exactly its weight; the text's words get the
    well-separated weights LINEAR_WEIGHTS for class 0 (class 1 gets their negation), every other
    token a small random weight.
    """
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir, local_files_only=True)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn((len(tokenizer), 2), generator=gen) * 0.1
    for word, w in zip(LINEAR_WORDS, LINEAR_WEIGHTS, strict=True):
        (token_id,) = tokenizer(word, add_special_tokens=False)["input_ids"]
        table[token_id] = torch.tensor([w, -w])
    table[tokenizer.mask_token_id] = 0.0
    runner = LinearBagRunner(table)
    served = ServedModel(
        name="linear",
        task="sequence-classification",
        model=torch.nn.Identity(),  # type: ignore[arg-type]
        tokenizer=tokenizer,
        labels=["pos", "neg"],
        max_length=128,
        device=torch.device("cpu"),
        dtype=torch.float32,
        replacement=Replacement("mask_token", int(tokenizer.mask_token_id)),
        runner=runner,  # type: ignore[arg-type]
        worker=Worker(runner, name="linear"),
    )
    reg = Registry()
    reg.add(served)
    yield Linear(served, table, Run(Explainer(reg)), " ".join(LINEAR_WORDS))
    reg.close()


@pytest.fixture(scope="module")
def reuse_lms(tiny_gpt2_lm_dir: Path, tiny_llama_lm_dir: Path) -> Iterator[dict[str, ServedModel]]:
    """Both tiny LMs, each served with prefix reuse and dedup on and off ("gpt2-True", ...),
    no batch wait: the packing and reference-pass tests compare the two. With reuse, every
    batch that can run on a cached prefix does (`always_prefix`): those tests check that path,
    not the measured costs' choice of it."""
    out: dict[str, ServedModel] = {}
    reg = Registry()
    for name, path in (("gpt2", tiny_gpt2_lm_dir), ("llama", tiny_llama_lm_dir)):
        for reuse in (True, False):
            options = WorkerOptions(reuse=reuse, always_prefix=reuse, batch_wait_seconds=0.0)
            model = load_model(ModelConfig(f"{name}-{reuse}", path, device="cpu", worker=options))
            reg.add(model)
            out[f"{name}-{reuse}"] = model
    yield out
    reg.close()
