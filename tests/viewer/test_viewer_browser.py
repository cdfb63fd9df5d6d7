"""The HTML page in a real headless Chromium: it loads without console errors, has one span per
unit per row, each coloured with its score's sign, a matrix cell per (continuation unit, input
unit) for causal LMs; for concept explanations, each class's top concepts and the residual as
bars on their sign's side, in its colour, as long as their share of the input's scale; and it is
screenshotted into the test's temp dir.

Chromium comes from Debian's `chromium` package: `make test` installs it (`make chromium`).
The checks run in the page itself (a copy with a checking script appended; the page the CLI
writes has no script) and come back in the DOM Chromium dumps after running it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, INSTALL, checked_page
from tools import missing_tool
from viewer_refs import class_terms, concept_scale

# Appended to a copy of the page (with CHECKS or CONCEPT_CHECKS): records script errors, checks
# every heat-mapped row and matrix cell against its data-score with the colours the browser
# computed, or reads every concept bar's side, colour and length as laid out, and writes the
# verdict into the DOM as JSON.
COMMON = """
<script>
const errors = [];
window.addEventListener("error", (e) => errors.push(String(e.message)));
function rgb(el) {
  const m = getComputedStyle(el).backgroundColor.match(/\\d+(\\.\\d+)?/g).map(Number);
  return m.length === 4 && m[3] === 0 ? [255, 255, 255] : m.slice(0, 3);
}
function sign(el) {
  const [r, , b] = rgb(el);
  return r > b ? 1 : b > r ? -1 : 0;
}
"""
# The heat maps' checks.
CHECKS = (
    COMMON
    + """
const rows = [...document.querySelectorAll(".heat")].map((heat) => {
  const spans = [...heat.querySelectorAll("span.unit")];
  const scored = spans.filter((s) => s.dataset.score !== "");
  return {
    title: heat.parentElement.querySelector(".row-title").textContent,
    units: Number(heat.dataset.units),
    spans: spans.length,
    distinct: new Set(spans.map((s) => s.dataset.unit)).size,
    wrong: scored.filter((s) => sign(s) !== Math.sign(Number(s.dataset.score)))
      .map((s) => [s.textContent, s.dataset.score, getComputedStyle(s).backgroundColor]),
    titled: spans.every((s) => s.title.includes(s.dataset.score === "" ? "cannot" :
      (Number(s.dataset.score) >= 0 ? "+" : "-"))),
  };
});
const cells = [...document.querySelectorAll("td.cell")];
const badCells = cells.filter((c) => c.dataset.score !== "" &&
  sign(c) !== Math.sign(Number(c.dataset.score))).length;
const out = document.createElement("pre");
out.id = "verdict";
out.textContent = JSON.stringify({errors, rows, cells: cells.length, badCells,
  sections: document.querySelectorAll("section.input").length});
document.body.appendChild(out);
</script>
"""
)
# The concept bars as the browser laid them out.
CONCEPT_CHECKS = (
    COMMON
    + """
const sections = [...document.querySelectorAll("section.input")].map((section) => ({
  text: section.querySelector(".text").textContent,
  meta: section.querySelector(".meta").textContent.replace(/\\s+/g, " ").trim(),
  targets: [...section.querySelectorAll(".target")].map((target) => ({
    heading: target.querySelector("h3").textContent,
    terms: target.querySelector(".terms").textContent,
    others: [...target.querySelectorAll("tr.others")].map((tr) => tr.textContent),
    rows: [...target.querySelectorAll("tr.concept, tr.residual")].map((tr) => {
      const bars = [...tr.querySelectorAll("span.bar")];
      const cell = bars.length ? bars[0].parentElement : null;
      const box = bars.length ? bars[0].getBoundingClientRect() : null;
      return {
        label: tr.querySelector("th").textContent,
        residual: tr.classList.contains("residual"),
        value: Number(tr.dataset.value),
        bars: bars.length,
        side: cell === null ? 0 : cell.classList.contains("against") ? -1 : 1,
        sign: bars.length ? sign(bars[0]) : 0,
        fraction: box === null ? 0 : box.width / cell.clientWidth,
        height: box === null ? 0 : box.height,
        numbers: [...tr.querySelectorAll("td.num")].map((td) => td.textContent),
      };
    }),
  })),
}));
const out = document.createElement("pre");
out.id = "verdict";
out.textContent = JSON.stringify({errors, sections});
document.body.appendChild(out);
</script>
"""
)


def check_page(page: Path, tmp_path: Path, checks: str = CHECKS) -> dict[str, Any]:
    """Loads a copy of `page` with `checks` in Chromium (`browser.checked_page`); returns the
    verdict and takes a screenshot of the page itself (`page.png` beside it)."""
    result: dict[str, Any] = checked_page(page, checks, tmp_path)
    return result


@pytest.fixture(scope="module")
def browser() -> None:
    if CHROMIUM is None:
        missing_tool(INSTALL)


@pytest.mark.usefixtures("browser")
def test_classifier_page_in_chromium(tmp_path: Path, server_address: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "classifier.html"
    texts = ["The food was cold and the waiter was rude.", "I loved the friendly staff."]
    done = run_cli(
        "explain", *texts, "--server", server_address, "--model", "bert",
        "--target", "negative", "--target", "positive", "--granularity", "all-tokens",
        "--html", str(page), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    verdict = check_page(page, tmp_path)
    assert verdict["errors"] == []
    assert verdict["sections"] == 2
    rows = verdict["rows"]
    assert isinstance(rows, list)
    assert len(rows) == 4  # two targets per input
    for row in rows:
        # One span per unit ([CLS] and [SEP] included, shown as markers), colour sign = score.
        assert row["spans"] == row["distinct"] == row["units"] > 2
        assert row["wrong"] == []
        assert row["titled"]


@pytest.mark.usefixtures("browser")
def test_causal_page_in_chromium(tmp_path: Path, server_address: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    page = tmp_path / "causal.html"
    done = run_cli(
        "explain", "The food was cold and", "--continuation", " then it rained.",
        "--server", server_address, "--model", "writer", "--inference-mode", "log-softmax",
        "--html", str(page), "--json", str(tmp_path / "causal.json"), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    explanation = json.loads((tmp_path / "causal.json").read_text())["explanations"][0]
    n_rows = len(explanation["target_units"])
    n_cols = len(explanation["units"])
    verdict = check_page(page, tmp_path)
    assert verdict["errors"] == []
    assert verdict["cells"] == n_rows * n_cols  # the continuation units x units matrix
    assert verdict["badCells"] == 0
    rows = verdict["rows"]
    assert isinstance(rows, list)
    assert len(rows) == n_rows  # the per-continuation-unit view
    for row in rows:
        assert row["spans"] == row["distinct"] == row["units"] == n_cols
        assert row["wrong"] == []


@pytest.mark.usefixtures("browser")
def test_concept_bars_page_in_chromium(tmp_path: Path, server_address: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    """Each class's top concepts by |raw contribution| and the residual, as laid out: one bar
    each, on the left of the axis (blue) when against the class, on the right (red) when for
    it, its length the term's share of the input's largest; the numbers, the concepts left out,
    the residual's share and the reconstruction error."""
    page = tmp_path / "concepts.html"
    out = tmp_path / "concepts.json"
    top = 3
    texts = ["The food was cold and the waiter was rude.", "I loved the friendly staff."]
    done = run_cli(
        "explain", *texts, "--server", server_address, "--model", "bert", "--concepts", "pca8",
        "--target", "negative", "--target", "positive", "--top", str(top),
        "--html", str(page), "--json", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    response = json.loads(out.read_text())
    verdict = check_page(page, tmp_path, CONCEPT_CHECKS)
    assert verdict["errors"] == []
    sections = verdict["sections"]
    assert [s["text"] for s in sections] == texts
    for e, section in zip(response["explanations"], sections, strict=True):
        assert f"reconstruction error {100 * e['reconstruction_error']:.1f}%" in section["meta"]
        scale = concept_scale(e)
        fractions = []
        classes = class_terms(e, response["concept_labels"], top)
        for terms, shown in zip(classes, section["targets"], strict=True):
            assert shown["heading"] == (
                f"explained: {terms.label} ({terms.probability:.1%}) · residual share "
                f"{100 * terms.residual_share:.1f}%"
            )
            assert shown["terms"].startswith(f"logit {terms.output:+.3g} = concepts ")
            assert shown["others"] == [
                f"… {terms.others} more concepts±{100 * terms.others_share:.1f}%"
            ]
            assert [(r["label"], r["residual"]) for r in shown["rows"]] == [
                (term.label, term.activation is None) for term in terms.bars
            ]
            for term, row in zip(terms.bars, shown["rows"], strict=True):
                assert row["bars"] == 1, row
                assert row["height"] > 0, row
                assert row["side"] == row["sign"] == (1 if term.value > 0 else -1), row
                assert row["fraction"] == pytest.approx(abs(term.value) / scale, abs=0.02), row
                assert row["numbers"][:2] == [f"{term.value:+.3g}", f"{100 * term.share:+.1f}%"]
                fractions.append(row["fraction"])
        # The input's largest term fills its half.
        assert max(fractions) == pytest.approx(1.0, abs=0.01)


@pytest.mark.usefixtures("browser")
def test_concept_heat_map_page_in_chromium(tmp_path: Path, server_address: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    """`--concept K`: the heat maps of concepts' activations, one row per concept, each titled
    with the concept's label and activation."""
    page = tmp_path / "concept.html"
    out = tmp_path / "concept.json"
    done = run_cli(
        "explain", "The food was cold and the waiter was rude.", "--server", server_address,
        "--model", "bert", "--concepts", "pca8", "--concept", "price", "--concept", "0",
        "--html", str(page), "--json", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (e,) = json.loads(out.read_text())["explanations"]
    verdict = check_page(page, tmp_path)
    assert verdict["errors"] == []
    rows = verdict["rows"]
    activations = e["concept_activations"]
    assert [r["title"] for r in rows] == [
        f"explained: price (activation {activations[3]:+.3g})",
        f"explained: cold food (activation {activations[0]:+.3g})",
    ]
    for row in rows:
        assert row["spans"] == row["distinct"] == row["units"] == len(e["units"])
        assert row["wrong"] == []
        assert row["titled"]
