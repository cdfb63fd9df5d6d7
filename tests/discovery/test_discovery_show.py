"""`explainserve concepts show` the way a person sees it: in a real terminal (a pty) and as the
HTML page in headless Chromium (one section per concept, its label, its top examples with bars
as long as their activations, its words; no external asset, no console error)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from browser import checked_page
from concept_sets import random_set
from terminal import run_in_pty

from explainserve.concepts.sets import ConceptInfo, TopExample

CHECKS = """
<script>
const sections = [...document.querySelectorAll("section.concept")].map((s) => {
  const bars = [...s.querySelectorAll(".bar")];
  return {
    index: Number(s.dataset.index),
    label: s.querySelector("h2").textContent,
    examples: s.querySelectorAll("ol.examples li").length,
    first: (s.querySelector("ol.examples li") || {textContent: ""}).textContent,
    widths: bars.map((b) => b.getBoundingClientRect().width),
    activations: bars.map((b) => Number(b.dataset.activation)),
    colour: bars.length ? getComputedStyle(bars[0]).backgroundColor : "",
    words: (s.querySelector(".words") || {textContent: ""}).textContent,
    none: s.querySelectorAll(".none").length,
  };
});
const out = document.createElement("pre");
out.id = "verdict";
out.textContent = JSON.stringify({sections, title: document.title,
  metrics: document.querySelectorAll("table.metrics tr").length});
document.body.appendChild(out);
</script>
"""


def concept_file(tmp_path: Path) -> Path:
    cs = random_set("relu", 8, 3, model="minilm-sentiment")
    cs = replace(
        cs,
        method="pca",
        concepts=(
            ConceptInfo(
                "food",
                (TopExample("Cold <soup> & bread.", 4.0), TopExample("Bland pasta.", 2.0)),
                (TopExample("soup", 3.0),),
            ),
            ConceptInfo("staff", (TopExample("Rude waiter.", 1.5),)),
            ConceptInfo(""),
        ),
        fit={"metrics": {"r2": 0.91234, "stability": 0.8, "importance": {"a": [1.0]}}},
    )
    return cs.save(tmp_path / "food.safetensors")


def test_the_page_shows_each_concept_with_its_examples(tmp_path: Path) -> None:
    path = concept_file(tmp_path)
    page = tmp_path / "food.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "explainserve.cli",
            "concepts",
            "show",
            str(path),
            "--html",
            str(page),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    verdict = checked_page(page, CHECKS, tmp_path)
    assert verdict["title"] == "Concept set: pca for minilm-sentiment"
    assert verdict["metrics"] == 2  # r2 and stability; the importance table is not a number
    food, staff, third = verdict["sections"]
    assert (food["label"], food["examples"], staff["examples"], third["examples"]) == (
        "0food",
        2,
        1,
        0,
    )
    assert third["label"] == "2concept 2"
    assert third["none"] == 1
    # Bars per concept, as long as the activations: 4.0 and 2.0 -> 2:1.
    assert abs(food["widths"][0] / food["widths"][1] - 2.0) < 0.05
    assert food["colour"] == "rgb(214, 39, 40)"
    assert "soup 3" in food["words"]
    # The text as written, escaped in the page (no markup from a dataset gets in).
    assert food["first"] == "Cold <soup> & bread.4"
    assert "Cold &lt;soup&gt; &amp; bread." in page.read_text()


def test_the_terminal_view(tmp_path: Path) -> None:
    path = concept_file(tmp_path)
    text = run_in_pty(
        [sys.executable, "-m", "explainserve.cli", "concepts", "show", str(path)], columns=120
    )
    lines = text.replace("\r\n", "\n").splitlines()
    assert "model        minilm-sentiment" in lines
    assert "encoder      relu" in lines
    assert "metric       r2: 0.9123" in lines
    assert "importance   a: food 1" in lines
    assert "     0  food: 'Cold <soup> & bread.' (4); 'Bland pasta.' (2)" in lines
    assert "        words: soup (3)" in lines
    assert "     2  concept 2" in lines
