"""`explainserve concepts fit`: extract (or read from the cache), fit, interpret, evaluate and
write a concept set file the server serves with `--concepts`. Every check that can refuse the
run happens before anything is written at the output path, and the file is written atomically.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve.concepts.codec import Codec
from explainserve.concepts.sets import PROBE_TEXT, ConceptInfo, ConceptSet, ModelBinding
from explainserve.discovery import evaluate, interpret
from explainserve.discovery.base import FitError, FitOptions, Fitted
from explainserve.discovery.cav import fit_cav, significance, tcav_scores
from explainserve.discovery.dataset import Dataset
from explainserve.discovery.extract import FIT_GRANULARITY, ExtractError, Servers, extract
from explainserve.discovery.fit import fit
from explainserve.discovery.remote import Remote, explain_limit_error
from explainserve.discovery.store import Store, cache_root


@dataclass(frozen=True)
class FitRun:
    """One `concepts fit`: where from, what, how, where to."""

    servers: Servers
    dataset: Dataset
    model: str
    out: Path
    fit: FitOptions
    split_point: str | None = None
    granularity: str = "cls"
    aggregation: str = "mean"
    dtype: str = "float32"
    cache: Path | None = None
    shard_size: int = 1024
    concurrency: int = 2
    top_k: int = 5
    ngrams: int = 1
    min_count: int = 5
    max_words: int = 20_000
    probe_texts: int = 200
    stability: bool = True
    show_progress: bool = True
    #: `cav`: the linear probe, and the random runs of the significance test.
    probe: str = "logistic"
    random_runs: int = 20


def default_cache(run: FitRun) -> Path:
    """Where a run's activations are cached by default: one directory per model, split point,
    granularity and dataset (so that every method and K refits from it)."""
    root = cache_root()
    key = "|".join(
        [
            run.model,
            run.split_point or "",
            run.granularity,
            run.aggregation,
            str(run.dataset.path.resolve()),
            run.dataset.text_field,
        ]
    )
    return root / "activations" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _say(text: str) -> None:
    print(f"explainserve concepts fit: {text}", file=sys.stderr, flush=True)


def run_fit(run: FitRun, say: Callable[[str], None] = _say) -> ConceptSet:
    """Runs `concepts fit`; returns the set written at `run.out`."""
    cache = run.cache or default_cache(run)
    store = extract(
        run.servers,
        run.dataset,
        cache,
        run.model,
        split_point=run.split_point,
        granularity=run.granularity,
        aggregation=run.aggregation,
        dtype=run.dtype,
        shard_size=run.shard_size,
        concurrency=run.concurrency,
        show_progress=run.show_progress,
    )
    manifest = store.manifest
    n_rows = store.rows()
    say(f"{manifest.texts} texts, {n_rows} rows of {manifest.features} features (cache {cache})")

    def rows() -> Iterator[NDArray[np.float32]]:
        for shard in store.shards():
            yield shard.activations

    def texts() -> Iterator[str]:
        # Streamed from the file each time: a dataset larger than memory is never held.
        return (e.text for e in run.dataset.examples())

    supervised = run.fit.method == "cav"
    names: list[str] = []
    labels: list[str] = []
    if supervised:
        if run.granularity != "cls":
            raise FitError("cav learns from one row per labelled text: use --granularity cls")
        # A CAV's probe is fitted in memory: its rows and labels are held anyway.
        labels = [e.label for e in run.dataset.examples()]
        unlabelled = sum(1 for label in labels if not label)
        if unlabelled:
            raise FitError(
                f"{unlabelled} of {len(labels)} examples have no label: a label field per line "
                f"(--label-field), or --positive and --negative files"
            )
        x = np.concatenate(list(rows()))
        fitted, names, _ = fit_cav(x, labels, run.probe, run.fit.seed)
    else:
        fitted = fit(rows, n_rows, manifest.features, run.fit, say)
    with Remote(run.servers) as remote:
        probe = remote.rows(run.model, [PROBE_TEXT], manifest.split_point)[0]
        info = remote.model(run.model)
        head_input = next((p.name for p in info.split_points if p.head_input), "")
        concept_set = ConceptSet(
            model=ModelBinding(name=run.model, labels=manifest.labels, probe=probe),
            split_point=manifest.split_point,
            encoder=fitted.encoder,
            decoder_weight=fitted.decoder_weight,
            decoder_bias=fitted.decoder_bias,
            granularity=FIT_GRANULARITY[run.granularity],  # type: ignore[arg-type]
            method=run.fit.method,
            fit=_options(run, len(names) if supervised else run.fit.concepts),
        ).check(str(run.out))
        if supervised:
            concept_set = replace(concept_set, concepts=tuple(ConceptInfo(n) for n in names))
        codec = Codec(concept_set, torch.device("cpu"))
        say("interpreting: top examples per concept")
        tops = interpret.top_examples(store, texts(), codec, run.top_k)
        words: list[tuple[Any, ...]] = [()] * concept_set.n_concepts
        if run.granularity == "cls":
            frequent = interpret.frequent_ngrams(texts(), run.ngrams, run.min_count)
            frequent = frequent[: run.max_words]
            say(f"interpreting: {len(frequent)} words and n-grams run as inputs")
            words = interpret.top_words(
                frequent,
                lambda block: remote.rows(run.model, block, manifest.split_point),
                codec,
                run.top_k,
            )
        metrics: dict[str, Any] = {**fitted.notes}
        metrics.update(evaluate.reconstruction(codec, rows()))
        if manifest.split_point == head_input and run.granularity == "cls":
            metrics["prediction_agreement"] = _agreement(remote, run.model, store, codec)
        probe_set = list(itertools.islice(texts(), run.probe_texts))
        try:
            per_text = remote.contributions(run.model, probe_set, concept_set, len(manifest.labels))
            metrics["importance"] = evaluate.importance(per_text, list(manifest.labels))
            metrics["importance_probe_texts"] = len(probe_set)
        except ExtractError as e:
            if not explain_limit_error(e):
                raise
            metrics["importance"] = None
            metrics["importance_skipped"] = (
                "the set is over the server's max_inline_concept_values: serve it and ask "
                "ExplainConcepts"
            )
        if supervised:
            metrics.update(_tcav(run, remote, concept_set, x, labels, say))
        if run.stability and not supervised:
            say(f"stability: a second fit with seed {run.fit.seed + 1}")
            second = fit(
                rows, n_rows, manifest.features, replace(run.fit, seed=run.fit.seed + 1), say
            )
            metrics["stability"] = evaluate.stability(fitted.decoder_weight, second.decoder_weight)
    labels = names if supervised else unique_labels(tops, words)
    infos = tuple(
        ConceptInfo(label=label, top_examples=examples, top_words=top_words)
        for label, examples, top_words in zip(labels, tops, words, strict=True)
    )
    concept_set = replace(concept_set, concepts=infos, fit={**concept_set.fit, "metrics": metrics})
    concept_set.save(run.out)
    return concept_set


def _tcav(
    run: FitRun,
    remote: Remote,
    concept_set: ConceptSet,
    x: NDArray[np.float32],
    labels: list[str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The vectors' TCAV scores per class over the probe texts, and their significance against
    random vectors (`discovery.cav`)."""
    probe = [e.text for e in itertools.islice(run.dataset.examples(), run.probe_texts)]
    classes = len(concept_set.model.labels)

    def score(fitted: Fitted) -> NDArray[np.float64]:
        cs = replace(
            concept_set,
            encoder=fitted.encoder,
            decoder_weight=fitted.decoder_weight,
            concepts=concept_set.concepts[: fitted.decoder_weight.shape[0]],
        )
        return tcav_scores(remote.contributions(run.model, probe, cs, classes, gradients=True))

    own = concept_set
    scores = tcav_scores(remote.contributions(run.model, probe, own, classes, gradients=True))
    say(f"significance: {run.random_runs} bootstrap and {run.random_runs} random-label CAVs")
    test = significance(x, labels, run.probe, run.fit.seed, run.random_runs, score)
    return {
        "tcav": {
            label: [float(v) for v in scores[i]] for i, label in enumerate(concept_set.model.labels)
        },
        "tcav_probe_texts": len(probe),
        "significance": test,
    }


def _options(run: FitRun, concepts: int) -> dict[str, Any]:
    """The fit's options, as the file records them."""
    return {
        "method": run.fit.method,
        "concepts": concepts,
        "seed": run.fit.seed,
        "dataset": str(run.dataset.path),
        "granularity": run.granularity,
        "aggregation": run.aggregation,
    }


def unique_labels(tops: list[tuple[Any, ...]], words: list[tuple[Any, ...]]) -> list[str]:
    """One label per concept, each used once (a concept target names a concept by it): its top
    word or n-gram not yet taken, else the start of its top example, else "" (the set then says
    "concept K")."""
    taken: set[str] = set()
    out = []
    for examples, top_words in zip(tops, words, strict=True):
        candidates = [str(w.text) for w in top_words]
        if examples:
            text = str(examples[0].text)
            candidates.append(text if len(text) <= 40 else text[:39] + "…")
        label = next((c for c in candidates if c not in taken), "")
        taken.add(label)
        out.append(label)
    return out


def _agreement(remote: Remote, model: str, store: Store, codec: Codec) -> float:
    """The share of rows whose class on the reconstruction is the predicted one."""
    same = total = 0
    for shard in store.shards():
        with torch.no_grad():
            recon = codec.decode(codec.encode(torch.from_numpy(shard.activations))).numpy()
        logits = remote.predict(model, recon)
        same += int((logits.argmax(axis=1) == shard.logits.argmax(axis=1)).sum())
        total += len(recon)
    return same / max(total, 1)
