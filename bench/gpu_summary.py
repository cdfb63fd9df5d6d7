"""One table from the log of bench/gpu.sh: every bench's rows, side by side.

    python bench/gpu_summary.py LOG

The log holds sections `=== NAME DTYPE ===` (written by gpu.sh), each the markdown tables one
bench printed and its `# peak GPU memory` line. Per table row: efficiency against the model
alone (the column "efficiency", "vs raw model" or, for the reuse table, "speed-up" against
reuse off), rows/s (sequences per second end to end, where the table gives them) and the
section's peak GPU memory. bench/mixed.py's section (one table of measurements) gives two rows
instead of its own: the small requests' p99 latency idle and beside the huge request (with the
goal's verdict), and the huge request's slowdown against running alone (median of the pairs)
with its rows/s alone. bench/peers.py's section gives one row per method: ExplainServe as served
by default (one request, token budget 8192) against Interpreto at its default batch size (4),
with issue 17's goal (>= 3x) and, in the case, the ratio to Interpreto's best batch size.
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

#: Columns that name a row rather than measure it.
LABELS = ("model", "method", "case", "measurement", "split point, granularity")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _number(text: str) -> float | None:
    match = re.search(r"-?\d+(\.\d+)?", text.replace(",", ""))
    return float(match.group()) if match else None


def _measurements(body: str) -> dict[str, str]:
    """The `| measurement | value |` rows of a section, by measurement."""
    rows = (_cells(line) for line in body.splitlines() if line.startswith("|"))
    return {cells[0]: cells[1] for cells in rows if len(cells) == 2}


def mixed_rows(body: str) -> list[tuple[str, str, str]]:
    """bench/mixed.py's figures: (case, figure, rows/s) for the small requests' p99 idle and
    beside the huge request, and for the huge request's slowdown (with its sequences per second
    alone); none for a figure its output lacks (a run that failed before printing it)."""
    values = _measurements(body)
    out: list[tuple[str, str, str]] = []
    idle = values.get("small, idle: p50 / p99 (s)")
    beside = next(((k, v) for k, v in values.items() if k.startswith("small, beside")), None)
    if idle is not None and beside is not None:
        calls = re.search(r"(\d+) calls", beside[0])
        goal = re.search(r"^goal small p99 <= .*? = ([\d.]+) s: (met|missed)", body, flags=re.M)
        case = "small p99 (s): idle -> beside the huge one"
        if calls:
            case += f", {calls.group(1)} calls"
        if goal:
            case += f" (goal <= {goal.group(1)}: {goal.group(2)})"
        p99 = (v.split("/")[-1].strip() for v in (idle, beside[1]))
        out.append((case, " -> ".join(p99), "-"))
    slowed = next(((k, v) for k, v in values.items() if k.startswith("huge slowed, median")), None)
    if slowed is not None:
        shape = re.search(r"huge: (KernelSHAP-\d+) on a .*?\((\d+) sequences", body)
        alone = [float(v) for k, v in values.items() if re.match(r"run \d+: huge alone \(s\)", k)]
        what = f"huge ({shape.group(1)})" if shape else "huge"
        case = f"{what} slowed beside them, {slowed[0].removeprefix('huge slowed, ')}"
        rate = "-"
        if shape and alone:
            rate = f"{int(shape.group(2)) / statistics.median(alone):.0f}"
        out.append((case, slowed[1], rate))
    return out


#: Issue 17: ExplainServe >= 3x Interpreto at its defaults, on a GPU.
PEERS_GOAL = 3.0
#: The ExplainServe configuration bench/peers.py's rows are read from: `explainserve serve`'s
#: defaults (one request holding every text, token budget 8192).
PEERS_SERVED = "1 request, budget 8192"


def _tables(body: str) -> list[list[dict[str, str]]]:
    """Every markdown table of a section, as rows keyed by the header's cells (a table ends at
    a blank line; other lines between its rows, such as a bench's `#` comments, are skipped)."""
    tables: list[list[dict[str, str]]] = []
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
            tables.append([])
            continue
        tables[-1].append(dict(zip(header, cells, strict=False)))
    return tables


def peers_rows(body: str) -> list[tuple[str, str, str]]:
    """bench/peers.py's figures: (case, speed-up against Interpreto bs 4, ExplainServe's rows/s)
    per method, from its `PEERS_SERVED` configuration; none for a method its speed-up table
    lacks (a run that stopped before printing it)."""
    rates: dict[str, str] = {}
    out: list[tuple[str, str, str]] = []
    for table in _tables(body):
        for row in table:
            if row.get("configuration") == f"ExplainServe {PEERS_SERVED}":
                rates[row["method"]] = row.get("rows/s", "-")
            if row.get("ExplainServe") != PEERS_SERVED or "vs bs 4 (default)" not in row:
                continue
            ratio = _number(row["vs bs 4 (default)"])
            verdict = "-" if ratio is None else ("met" if ratio >= PEERS_GOAL else "NOT met")
            best = row["vs best"].split()[0]
            case = (
                f"{row['method']}: vs Interpreto bs 4 (goal >= {PEERS_GOAL:g}x: {verdict}; "
                f"vs its best, {row['Interpreto best']}: {best})"
            )
            out.append((case, row["vs bs 4 (default)"], rates.get(row["method"], "-")))
    return out


def _table_rows(name: str, dtype: str, body: str, peak: str) -> list[list[str]]:
    """A section's table rows, one summary row each: case, efficiency, rows/s."""
    out: list[list[str]] = []
    for row in (row for table in _tables(body) for row in table):
        case = " / ".join(v for k, v in row.items() if k in LABELS) or next(iter(row.values()))
        eff = next((row[k] for k in ("efficiency", "vs raw model", "speed-up") if k in row), "-")
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
    return out


def summarise(log: str) -> list[list[str]]:
    """Rows of the summary table: bench, dtype, case, efficiency, rows/s, peak GiB."""
    out: list[list[str]] = []
    sections = re.split(r"^=== (\S+) (\S+) ===$", log, flags=re.M)
    for name, dtype, body in zip(sections[1::3], sections[2::3], sections[3::3], strict=True):
        peak_match = re.search(r"# peak GPU memory: ([\d.]+) GiB", body)
        peak = peak_match.group(1) if peak_match else "-"
        if name == "mixed":
            out.extend([name, dtype, *row, peak] for row in mixed_rows(body))
        elif name == "peers":
            out.extend([name, dtype, *row, peak] for row in peers_rows(body))
        else:
            out.extend(_table_rows(name, dtype, body, peak))
        failed = re.search(r"^# FAILED.*$", body, flags=re.M)
        if failed:
            out.append([name, dtype, failed.group().lstrip("# "), "-", "-", peak])
    return out


def main() -> int:
    """Prints the summary of the log named on the command line."""
    rows = summarise(Path(sys.argv[1]).read_text())
    print("| bench | dtype | case | efficiency (speed-up; mixed: figure) | rows/s | peak GPU GiB |")
    print("|---|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
