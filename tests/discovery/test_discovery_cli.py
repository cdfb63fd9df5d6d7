"""`explainserve concepts fit` and `explainserve activations` as a user runs them against
running servers: a file the server takes (bound to its model, labelled, measured), a refit that
reads the cache instead of extracting, a cav, the progress bar in a real terminal, and each
mistake one line naming what to change with nothing written at --out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from discovery_servers import Replica
from terminal import run_in_pty

from explainserve.cli import main
from explainserve.concepts.params import ConceptParams, ConceptRef
from explainserve.concepts.registry import ConceptRegistry, bind
from explainserve.concepts.service import ConceptExplainer
from explainserve.concepts.sets import load
from explainserve.discovery import extract as extract_module
from explainserve.vocabulary import InputSpec


def fit_cli(replica: Replica, text_file: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "concepts",
            "fit",
            "--server",
            replica.target,
            "--model",
            "bert",
            "--file",
            str(text_file),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


def test_fit_writes_a_set_the_server_explains_with(
    tmp_path: Path,
    replicas: list[Replica],
    text_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPLAINSERVE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "sets" / "pca.safetensors"
    assert fit_cli(replicas[0], text_file, out, "--concepts", "6", "--min-count", "3") == 0
    printed = capsys.readouterr()
    assert f"wrote {out}: 6 concepts (pca)" in printed.out
    cs = load(out)
    assert (cs.model.name, cs.split_point, cs.granularity) == (
        "bert",
        "classifier:input",
        "cls_token",
    )
    assert cs.method == "pca"
    metrics = cs.fit["metrics"]
    assert 0.0 <= metrics["relative_squared_error"] < 1.0
    assert metrics["prediction_agreement"] >= 0.0
    assert set(metrics["importance"]) == {"negative", "neutral", "positive"}
    assert metrics["stability"] == pytest.approx(1.0, abs=1e-4)  # PCA: the same at any seed
    labels = cs.labels()
    assert len(set(labels)) == len(labels)
    assert all(info.top_examples for info in cs.concepts)
    # The set binds to the model it was fitted on (probe, size, labels) and explains.
    served = replicas[0].registry.get("bert")
    registry = ConceptRegistry()
    registry.add(bind("pca", cs, served, str(out)))
    explainer = ConceptExplainer(replicas[0].registry, registry)
    (e,) = explainer.explain(
        ConceptParams(
            model="bert",
            inputs=[InputSpec(text="The food was cold.")],
            concepts=ConceptRef(name="pca"),
        )
    )
    assert e.concepts.shape == (1, 6)
    assert abs(float(e.gap[0])) < 1e-5  # the tiny BERT's head is linear

    # A refit with another method and K reads the cache: nothing is extracted again.
    fetched: list[int] = []
    real = extract_module.fetch

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        fetched.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_module, "fetch", counted)
    nmf = tmp_path / "nmf.safetensors"
    assert (
        fit_cli(
            replicas[0],
            text_file,
            nmf,
            "--method",
            "nmf",
            "--concepts",
            "3",
            "--nonneg",
            "relu",
            "--no-stability",
        )
        == 0
    )
    assert fetched == []
    assert load(nmf).encoder.relu_input


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--concepts", "81"], "--concepts 81 is more than the 80 activation rows: lower K"),
        (["--method", "nmf"], "NMF needs non-negative activations"),
        (["--model", "nope"], "NOT_FOUND: no model named 'nope'"),
        (["--method", "ica", "--max-memory", "1KiB"], "ica needs all 80 rows in memory"),
        (["--granularity", "word"], "has one row per input: use --granularity cls"),
        (["--method", "cav"], "80 of 80 examples have no label"),
        (["--max-memory", "lots"], "--max-memory: 'lots' is not a size"),
    ],
)
def test_a_mistake_is_one_line_and_writes_nothing(
    tmp_path: Path,
    replicas: list[Replica],
    text_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("EXPLAINSERVE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out.safetensors"
    assert fit_cli(replicas[0], text_file, out, *extra) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert message in lines[0]
    assert not out.exists()
    assert list(tmp_path.glob("*.safetensors*")) == []


def test_empty_and_unreadable_datasets(
    tmp_path: Path, replicas: list[Replica], capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert fit_cli(replicas[0], empty, tmp_path / "o.safetensors") == 2
    assert "no texts (blank lines only, or empty)" in capsys.readouterr().err
    assert fit_cli(replicas[0], tmp_path / "none.txt", tmp_path / "o.safetensors") == 2
    assert "none.txt: no such file" in capsys.readouterr().err


def test_a_cav_from_positive_and_negative_files(
    tmp_path: Path,
    replicas: list[Replica],
    sentences: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EXPLAINSERVE_CACHE_DIR", str(tmp_path / "cache"))
    food = [
        s
        for s in sentences
        if any(w in s.lower() for w in ("food", "soup", "pizza", "dessert", "coffee"))
    ]
    other = [s for s in sentences if s not in food][: len(food)]
    positive, negative = tmp_path / "food.txt", tmp_path / "other.txt"
    positive.write_text("\n".join(food) + "\n")
    negative.write_text("\n".join(other) + "\n")
    out = tmp_path / "cav.safetensors"
    argv = ["concepts", "fit", "--server", replicas[0].target, "--model", "bert", "--quiet"]
    argv += ["--method", "cav", "--positive", str(positive), "--negative", str(negative)]
    assert main([*argv, "--out", str(out), "--random-runs", "4", "--probe-texts", "20"]) == 0
    cs = load(out)
    assert cs.labels() == ["positive"]
    metrics = cs.fit["metrics"]
    assert 0.0 <= metrics["held_out_accuracy"] <= 1.0
    assert set(metrics["tcav"]) == {"negative", "neutral", "positive"}
    assert all(0.0 <= v[0] <= 1.0 for v in metrics["tcav"].values())
    significance = metrics["significance"]
    assert significance["runs"] == 4
    assert all(0.0 <= p[0] <= 1.0 for p in significance["p_value"])


def test_activations_command_and_its_progress_bar_in_a_terminal(
    tmp_path: Path, replicas: list[Replica], text_file: Path
) -> None:
    """Run as a user runs it, in a pseudo-terminal: the bar shows texts done of total, rows/s
    and the ETA; the shards and their Parquet twins are written."""
    out = tmp_path / "acts"
    argv = [sys.executable, "-m", "explainserve.cli", "activations", "--server", replicas[0].target]
    argv += ["--model", "bert", "--file", str(text_file), "--out", str(out), "--format", "parquet"]
    argv += ["--shard-size", "8"]
    text = run_in_pty(argv, columns=120)
    assert "extracting" in text
    for shown in ("80/80", "texts", "rows/s", "ETA", "80 texts, 80 rows of 32 features"):
        assert shown in text, text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["texts"] == 80
    assert len(list(out.glob("shard-*.safetensors"))) == 10
    assert len(list(out.glob("shard-*.parquet"))) == 10
