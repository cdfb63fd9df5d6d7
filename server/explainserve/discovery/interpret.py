"""Interpretation of a fitted concept set, with Interpreto's `TopKInputs` semantics: per
concept, the k unique inputs of largest activation (an input's activation being its largest over
its occurrences), at the rows' granularity: whole texts for CLS_TOKEN rows, the rows' words (or
tokens, sentences) otherwise; and, for CLS_TOKEN rows, the unique words or n-grams (up to
`ngrams` words) that occur at least `min_count` times in the dataset, each run through the model
as an input of its own (`use_unique_words`). Streamed: a per-concept pool of candidates, pruned
as it grows, whatever the dataset's size.

Words are `\\w+` runs and single punctuation marks (Interpreto uses NLTK's `word_tokenize`, whose
contractions and quotes split differently); no lemmatizing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from explainserve.concepts.codec import Codec
from explainserve.concepts.sets import TopExample
from explainserve.discovery.store import Store

_WORD = re.compile(r"\w+|[^\w\s]")


class TopK:
    """The k inputs of largest activation per concept, unique by text."""

    def __init__(self, n_concepts: int, k: int) -> None:
        self.k = k
        self._best: list[dict[str, float]] = [{} for _ in range(n_concepts)]

    def add(self, texts: list[str], codes: np.ndarray) -> None:
        """Candidates `texts` with their `(rows, K)` concept activations."""
        take = min(len(texts), 4 * self.k)
        for c, best in enumerate(self._best):
            column = codes[:, c]
            top = (
                np.argpartition(-column, take - 1)[:take]
                if take < len(texts)
                else range(len(texts))
            )
            for i in top:
                value = float(column[i])
                if value > best.get(texts[i], -np.inf):
                    best[texts[i]] = value
            if len(best) > 16 * self.k:
                kept = sorted(best.items(), key=lambda kv: -kv[1])[: 4 * self.k]
                self._best[c] = dict(kept)

    def result(self) -> list[tuple[TopExample, ...]]:
        """Per concept, its top k by activation, largest first (none where every activation is
        0 or below: a concept that never fires has nothing to show, as in Interpreto)."""
        out = []
        for best in self._best:
            ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[: self.k]
            out.append(tuple(TopExample(t, v) for t, v in ranked if v > 0))
        return out


def top_examples(
    store: Store, texts: Iterable[str], codec: Codec, k: int = 5
) -> list[tuple[TopExample, ...]]:
    """Per concept, its top k texts (CLS_TOKEN rows) or rows' units (other granularities)."""
    topk = TopK(codec.concept_set.n_concepts, k)
    text_iter: Iterator[str] = iter(texts)
    for shard in store.shards():
        shard_texts = [next(text_iter) for _ in range(shard.texts)]
        codes = _encode(codec, shard.activations)
        if shard.units is None:
            topk.add(shard_texts, codes)
        else:
            topk.add([u for units in shard.units for u in units], codes)
    return topk.result()


def _encode(codec: Codec, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return codec.encode(torch.from_numpy(rows)).numpy()


def frequent_ngrams(texts: Iterable[str], ngrams: int = 1, min_count: int = 5) -> list[str]:
    """The words and n-grams (1 to `ngrams` words) occurring at least `min_count` times, most
    frequent first (a dataset's vocabulary, held in memory: it grows far slower than the
    dataset)."""
    counts: Counter[str] = Counter()
    for text in texts:
        words = _WORD.findall(text)
        for n in range(1, ngrams + 1):
            for i in range(len(words) - n + 1):
                counts[" ".join(words[i : i + n])] += 1
    return [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]


def top_words(
    words: list[str],
    activations: Callable[[list[str]], np.ndarray],
    codec: Codec,
    k: int = 5,
    batch: int = 1024,
) -> list[tuple[TopExample, ...]]:
    """Per concept, its top k of `words`, each run as an input (`activations(words)` gives their
    CLS_TOKEN rows)."""
    topk = TopK(codec.concept_set.n_concepts, k)
    for start in range(0, len(words), batch):
        block = words[start : start + batch]
        topk.add(block, _encode(codec, activations(block)))
    return topk.result()
