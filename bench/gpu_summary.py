"""One table from the log of bench/gpu.sh: every bench's rows, side by side.

    python bench/gpu_summary.py LOG

The log holds sections `=== NAME DTYPE ===` (written by gpu.sh), each the markdown tables one
bench printed and its `# peak GPU memory` line. Per table row: efficiency against the model
alone (the column "efficiency", "vs raw model" or, for the reuse table, "speed-up" against
reuse off), rows/s (sequences per second end to end, where the table gives them) and the
section's peak GPU memory.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

#: Columns that name a row rather than measure it.
LABELS = ("model", "method", "case", "measurement", "split point, granularity")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _number(text: str) -> float | None:
    match = re.search(r"-?\d+(\.\d+)?", text.replace(",", ""))
    return float(match.group()) if match else None


def summarise(log: str) -> list[list[str]]:
    """Rows of the summary table: bench, dtype, case, efficiency, rows/s, peak GiB."""
    out: list[list[str]] = []
    sections = re.split(r"^=== (\S+) (\S+) ===$", log, flags=re.M)
    for name, dtype, body in zip(sections[1::3], sections[2::3], sections[3::3], strict=True):
        peak_match = re.search(r"# peak GPU memory: ([\d.]+) GiB", body)
        peak = peak_match.group(1) if peak_match else "-"
        header: list[str] = []
        for line in body.splitlines():
            if not line.startswith("|"):
                header = [] if not line.strip() else header
                continue
            cells = _cells(line)
            if set("".join(cells)) <= set("-:"):
                continue
            if not header:
                header = cells
                continue
            row = dict(zip(header, cells, strict=False))
            case = " / ".join(v for k, v in row.items() if k in LABELS) or cells[0]
            eff = next(
                (row[k] for k in ("efficiency", "vs raw model", "speed-up") if k in row), "-"
            )
            rate = "-"
            if "sequences/s" in row:
                rate = row["sequences/s"]
            elif "inputs/s" in row:
                rate = row["inputs/s"]
            elif "forward passes" in row and "end-to-end (s)" in row:
                passes, secs = _number(row["forward passes"]), _number(row["end-to-end (s)"])
                if passes and secs:
                    rate = f"{passes / secs:.0f}"
            elif "rows run / method rows" in row and "with reuse (s)" in row:
                passes, secs = (
                    _number(row["rows run / method rows"]),
                    _number(row["with reuse (s)"]),
                )
                if passes and secs:
                    rate = f"{passes / secs:.0f}"
            out.append([name, dtype, case, eff, rate, peak])
        failed = re.search(r"^# FAILED.*$", body, flags=re.M)
        if failed:
            out.append([name, dtype, failed.group().lstrip("# "), "-", "-", peak])
    return out


def main() -> int:
    """Prints the summary of the log named on the command line."""
    rows = summarise(Path(sys.argv[1]).read_text())
    print("| bench | dtype | case | efficiency (or speed-up) | rows/s | peak GPU GiB |")
    print("|---|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
