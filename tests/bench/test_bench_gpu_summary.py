"""bench/gpu_summary.py's reading of bench/mixed.py's output in a bench/gpu.sh log: the small
requests' p99 idle and beside the huge request, and the huge request's slowdown, as summary rows
(no model: a log sample, as mixed.py prints it, with its `=== NAME DTYPE ===` section header)."""

from __future__ import annotations

from bench_scripts import load_bench

summary = load_bench("gpu_summary")

#: A dry run's mixed section (bench/gpu.sh --device cpu --quick, 2 pairs instead of --quick's 1),
#: then one that ran out of its share before printing its table.
LOG = """\
=== mixed float32 ===
calibration: Calibration(batches=14, seconds=1.97, caps={'forward': 1024, 'gradient': 256})
# bench/mixed.py on x86_64, 2 cpus, torch 2.15.0+cu132, device cpu (float32), model bert-base; \
huge: KernelSHAP-2048 on a 129-token text (2048 sequences, priority interactive, sized to ~2 s \
alone: a probe of 512 took 0.51 s); small: Occlusion of one sentence, 20/s from 2 clients (open \
loop); max_batch_ms 100; token budget 8192; time caps (tokens) {'forward': 861}; forward cost fit \
8.6 ms + 105.4 us/token, floor 81 tokens

| measurement | value |
|---|---:|
| small, idle: p50 / p99 (s) | 0.022 / 0.029 |
| small, beside the huge one: p50 / p99 (s), 118 calls | 0.062 / 0.152 |
| run 1: huge alone (s), 21 batches | 1.91 |
| run 1: huge beside the small ones (s), 59 small calls | 2.55 |
| run 1: huge slowed | +33.5% |
| run 1: huge request's batches alone: mean / max (s), 21 batches | 0.090 / 0.101 |
| run 2: huge alone (s), 22 batches | 2.09 |
| run 2: huge beside the small ones (s), 59 small calls | 2.30 |
| run 2: huge slowed | +10.0% |
| run 2: small requests' share of the tokens run while mixed | 18.3% |
| huge slowed, median of the 2 runs | +21.8% |

goal small p99 <= idle p99 + 2 x max_batch_ms = 0.229 s: met (0.152 s over 118 calls); goal \
huge slowed <= 15% (median of the runs, +21.8%): missed

# peak GPU memory: 1.25 GiB
=== mixed bfloat16 ===
calibration: Calibration(batches=14, seconds=1.97, caps={'forward': 1024, 'gradient': 256})
# FAILED (exit 124, limit 30 s)
"""


def test_mixed_section_gives_latency_and_slowdown_rows() -> None:
    assert summary.summarise(LOG) == [
        [
            "mixed",
            "float32",
            "small p99 (s): idle -> beside the huge one, 118 calls (goal <= 0.229: met)",
            "0.029 -> 0.152",
            "-",
            "1.25",
        ],
        # 2048 sequences / the median of 1.91 s and 2.09 s alone.
        [
            "mixed",
            "float32",
            "huge (KernelSHAP-2048) slowed beside them, median of the 2 runs",
            "+21.8%",
            "1024",
            "1.25",
        ],
        ["mixed", "bfloat16", "FAILED (exit 124, limit 30 s)", "-", "-", "-"],
    ]


def test_mixed_rows_without_goal_or_header() -> None:
    """Without a time bound mixed.py prints no goal line, and a log cut after the table has no
    header line: the figures still come, without what is missing."""
    body = LOG.split("=== mixed bfloat16 ===")[0]
    body = "\n".join(
        line for line in body.splitlines() if not line.startswith(("goal", "# bench/mixed.py"))
    )
    assert summary.mixed_rows(body) == [
        ("small p99 (s): idle -> beside the huge one, 118 calls", "0.029 -> 0.152", "-"),
        ("huge slowed beside them, median of the 2 runs", "+21.8%", "-"),
    ]


#: bench/peers.py's section: a real run's Occlusion rows (RESULTS.md, 07:44 UTC 2026-11-29) cut to
#: gpu.sh's batch sizes (4, 64) and two of ExplainServe's configurations, the speed-ups
#: recomputed from those medians (the paired min-max in brackets left as examples).
PEERS_LOG = """\
=== peers float32 ===
# bench/peers.py on x86_64, 2 cpus, device cpu; 16 texts, WORD granularity, 1 interleaved repeats
| method | configuration | model rows / run | rows / batch | padded / real tokens \
| s/text (median) | min-max | rows/s | model s/text | model / total |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
| occlusion | Interpreto bs 4 | 257 | 4 | 1.012 | 0.1591 | 0.1528-0.2073 | 101 | 0.1537 | 0.97 |
| occlusion | Interpreto bs 64 | 257 | 51 | 1.115 | 0.1541 | 0.1431-0.1641 | 104 | 0.1506 | 0.98 |
| occlusion | ExplainServe 1 request, budget 8192 | 241 | 27 | 1.029 | 0.1257 | 0.1092-0.1382 \
| 120 | 0.1242 | 0.99 |
| occlusion | ExplainServe 8 clients, budget 8192 | 241 | 22 | 1.017 | 0.1288 | 0.0952-0.1321 \
| 117 | 0.1272 | 0.99 |

Model s/text: seconds in the model per text.

| method | Interpreto best | ExplainServe | s/text | vs best | vs bs 4 (default) | goal |
|---|---|---|---:|---:|---:|---|
| occlusion | bs 64 | 1 request, budget 8192 | 0.1257 | 1.23x (0.93-1.31) | 1.27x | met (>= 1.1x) |
| occlusion | bs 64 | 8 clients, budget 8192 | 0.1288 | 1.20x (0.91-1.30) | 1.24x | met (>= 1.1x) |
# took 93 s of 256 s
"""


def test_peers_section_gives_one_row_per_method_against_interpreto_defaults() -> None:
    assert summary.summarise(PEERS_LOG) == [
        [
            "peers",
            "float32",
            "occlusion: vs Interpreto bs 4 (goal >= 3x: NOT met; vs its best, bs 64: 1.23x)",
            "1.27x",
            "120",
            "-",
        ]
    ]


def test_peers_verdict_and_a_run_stopped_before_its_speed_ups() -> None:
    """>= 3x is met; a run killed at its limit (no speed-up table) gives its FAILED row only."""
    met = PEERS_LOG.replace("| 1.27x | met", "| 3.02x | met")
    assert summary.peers_rows(met)[0][:2] == (
        "occlusion: vs Interpreto bs 4 (goal >= 3x: met; vs its best, bs 64: 1.23x)",
        "3.02x",
    )
    stopped = PEERS_LOG.split("\nModel s/text")[0] + "\n# FAILED (exit 124, limit 256 s)\n"
    assert summary.summarise(stopped) == [
        ["peers", "float32", "FAILED (exit 124, limit 256 s)", "-", "-", "-"]
    ]
