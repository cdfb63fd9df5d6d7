"""Headless Chromium for the tests that look at a page the way a person does: load it, let a
checking script appended to a copy write its verdict into the DOM, read the dumped DOM back, and
take a screenshot. Chromium comes from Debian's `chromium` package (`make chromium`, part of
`make test`): missing, the test fails under `make test` and skips elsewhere (`tools`), saying
how to install it."""

from __future__ import annotations

import html as html_module
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tools import missing_tool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = (
    "headless Chromium is missing: run `make chromium` "
    "(apt-get update && apt-get install -y chromium, as root)"
)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs headless Chromium with `args`."""
    if CHROMIUM is None:
        missing_tool(INSTALL)
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--no-first-run",
            "--disable-background-networking",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def checked_page(page: Path, script: str, tmp_path: Path) -> Any:
    """The JSON verdict that `script` (appended to a copy of the self-contained `page`) writes
    into `<pre id="verdict">`; also screenshots the page itself (`page.png` beside it)."""
    html = page.read_text()
    # Self-contained: nothing is fetched from anywhere, and nothing runs.
    assert not re.search(r"""(src|href)\s*=|url\(|@import|https?://""", html), "external asset"
    assert "<script" not in html
    copy = tmp_path / f"checked-{page.name}"
    copy.write_text(html.replace("</body>", script + "</body>"))
    dumped = chromium("--dump-dom", copy.as_uri())
    assert dumped.returncode == 0, dumped.stderr
    console = [line for line in dumped.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    verdict = re.search(r'<pre id="verdict">(.*?)</pre>', dumped.stdout, re.S)
    assert verdict is not None, dumped.stdout[-2000:]
    shot = page.with_suffix(".png")
    taken = chromium(f"--screenshot={shot}", "--window-size=1100,900", page.as_uri())
    assert taken.returncode == 0, taken.stderr
    assert shot.stat().st_size > 10_000  # a blank page is ~5 kB
    return json.loads(html_module.unescape(verdict.group(1)))
