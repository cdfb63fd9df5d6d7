"""The HTML page in a real headless Chromium: it loads without console errors, has one span per
unit per row, each coloured with its score's sign, a matrix cell per (continuation unit, input
unit) for causal LMs, and is screenshotted into the test's temp dir.

Chromium comes from Debian's `chromium` package: `make test` installs it (`make chromium`).
The checks run in the page itself (a copy with a checking script appended; the page the CLI
writes has no script) and come back in the DOM Chromium dumps after running it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tools import missing_tool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = (
    "headless Chromium is missing: run `make chromium` "
    "(apt-get update && apt-get install -y chromium, as root)"
)

# Appended to a copy of the page: records script errors, checks every heat-mapped row and matrix
# cell against its data-score with the colours the browser computed, and writes the verdict
# into the DOM as JSON.
CHECKS = """
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
const rows = [...document.querySelectorAll(".heat")].map((heat) => {
  const spans = [...heat.querySelectorAll("span.unit")];
  const scored = spans.filter((s) => s.dataset.score !== "");
  return {
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


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check_page(page: Path, tmp_path: Path) -> dict[str, object]:
    """Loads a checked copy of `page` in Chromium; returns the verdict and takes a screenshot
    of the page itself (`page.png` beside it)."""
    html = page.read_text()
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=|url\(|@import|https?://""", html), "external asset"
    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(html.replace("</body>", CHECKS + "</body>"))
    dumped = chromium("--dump-dom", checked.as_uri())
    assert dumped.returncode == 0, dumped.stderr
    console = [line for line in dumped.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    verdict = re.search(r'<pre id="verdict">(.*?)</pre>', dumped.stdout, re.S)
    assert verdict is not None, dumped.stdout[-2000:]
    shot = page.with_suffix(".png")
    taken = chromium(f"--screenshot={shot}", "--window-size=1100,900", page.as_uri())
    assert taken.returncode == 0, taken.stderr
    assert shot.stat().st_size > 10_000  # a blank page is ~5 kB
    result: dict[str, object] = json.loads(
        verdict.group(1).replace("&quot;", '"').replace("&amp;", "&")
    )
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
