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


#: bench/peers.py's section of the CPU dry run (bench/gpu.sh --device cpu --quick --budget 1800,
#: 14:35 UTC 2026-11-29), its KernelSHAP and Saliency rows and the worker's progress lines left out.
PEERS_LOG = """\
=== peers float32 ===

# bench/peers.py on x86_64, 2 cpus, device cpu; 16 texts, WORD granularity, 2 interleaved \
repeats

| method | configuration | model rows / run | rows / batch | padded / real tokens | s/text \
(median) | min-max | rows/s | model s/text | model / total |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
| occlusion | Interpreto bs 4 | 257 | 4 | 1.012 | 0.0308 | 0.0302-0.0314 | 521 | 0.0238 | 0.77 |
| occlusion | Interpreto bs 64 | 257 | 51 | 1.115 | 0.0108 | 0.0085-0.0131 | 1486 | 0.0077 | \
0.71 |
| occlusion | ExplainServe 1 request, budget 8192 | 241 | 241 | 1.277 | 0.0056 | 0.0050-0.0061 \
| 2703 | 0.0043 | 0.77 |
| occlusion | ExplainServe 8 clients, budget 8192 | 241 | 80 | 1.194 | 0.0071 | 0.0066-0.0077 \
| 2108 | 0.0059 | 0.83 |
| occlusion | ExplainServe 1 request, budget 2048 | 241 | 80 | 1.092 | 0.0055 | 0.0047-0.0062 \
| 2762 | 0.0046 | 0.84 |
| occlusion | ExplainServe 8 clients, budget 2048 | 241 | 40 | 1.052 | 0.0088 | 0.0086-0.0091 \
| 1709 | 0.0071 | 0.80 |
| integrated_gradients steps=8 | Interpreto bs 4 | 144 | 4 | 1.008 | 0.0286 | 0.0273-0.0299 | \
315 | 0.0131 | 0.46 |
| integrated_gradients steps=8 | Interpreto bs 64 | 144 | 48 | 1.163 | 0.0406 | 0.0391-0.0422 \
| 221 | 0.0049 | 0.12 |
| integrated_gradients steps=8 | ExplainServe 1 request, budget 8192 | 144 | 72 | 1.323 | \
0.0104 | 0.0095-0.0114 | 863 | 0.0044 | 0.45 |
| integrated_gradients steps=8 | ExplainServe 8 clients, budget 8192 | 144 | 29 | 1.239 | \
0.0113 | 0.0111-0.0115 | 800 | 0.0149 | 1.32 |
| integrated_gradients steps=8 | ExplainServe 1 request, budget 2048 | 144 | 48 | 1.206 | \
0.0082 | 0.0078-0.0086 | 1096 | 0.0074 | 0.90 |
| integrated_gradients steps=8 | ExplainServe 8 clients, budget 2048 | 144 | 18 | 1.206 | \
0.0106 | 0.0105-0.0106 | 851 | 0.0100 | 0.94 |

Model s/text: seconds in the model per text; the peers' forward passes only (timed by hooks on \
the model: a gradient method's backward passes are not counted), ExplainServe's worker batches \
(forward and backward passes, inputs' copies).

Speed-up = Interpreto s/text / ExplainServe s/text (ratio of medians; in brackets the min-max \
of the same ratio within each repeat). Goal: >= 1.1x Interpreto's best batch size for \
perturbation methods, >= 1.0x for gradient methods.

| method | Interpreto best | ExplainServe | s/text | vs best | vs bs 4 (default) | goal |
|---|---|---|---:|---:|---:|---|
| occlusion | bs 64 | 1 request, budget 8192 | 0.0056 | 1.94x (1.69-2.14) | 5.53x | met (>= \
1.1x) |
| occlusion | bs 64 | 8 clients, budget 8192 | 0.0071 | 1.51x (1.30-1.70) | 4.32x | met (>= \
1.1x) |
| occlusion | bs 64 | 1 request, budget 2048 | 0.0055 | 1.98x (1.80-2.12) | 5.65x | met (>= \
1.1x) |
| occlusion | bs 64 | 8 clients, budget 2048 | 0.0088 | 1.23x (1.00-1.44) | 3.50x | met (>= \
1.1x) |
| integrated_gradients steps=8 | bs 4 | 1 request, budget 8192 | 0.0104 | 2.74x (2.63-2.87) | \
2.74x | met (>= 1.0x) |
| integrated_gradients steps=8 | bs 4 | 8 clients, budget 8192 | 0.0113 | 2.54x (2.47-2.61) | \
2.54x | met (>= 1.0x) |
| integrated_gradients steps=8 | bs 4 | 1 request, budget 2048 | 0.0082 | 3.48x (3.18-3.83) | \
3.48x | met (>= 1.0x) |
| integrated_gradients steps=8 | bs 4 | 8 clients, budget 2048 | 0.0106 | 2.71x (2.57-2.84) | \
2.71x | met (>= 1.0x) |

# load average at the end: 1.1 1.3 1.4
# took 73 s of 256 s
"""


def test_peers_section_gives_one_row_per_method_against_interpreto_defaults() -> None:
    """ExplainServe's served configuration (1 request, budget 8192) against Interpreto bs 4: 5.53x
    for Occlusion (met), 2.74x for IG (not); its rows/s from the first table."""
    assert summary.summarise(PEERS_LOG) == [
        [
            "peers",
            "float32",
            "occlusion: vs Interpreto bs 4 (goal >= 3x: met; vs its best, bs 64: 1.94x)",
            "5.53x",
            "2703",
            "-",
        ],
        [
            "peers",
            "float32",
            "integrated_gradients steps=8: vs Interpreto bs 4 (goal >= 3x: NOT met; "
            "vs its best, bs 4: 2.74x)",
            "2.74x",
            "863",
            "-",
        ],
    ]


def test_peers_run_stopped_before_its_speed_ups_gives_its_failed_row() -> None:
    """A run killed at its limit before its speed-up table: no method row, the FAILED row."""
    stopped = PEERS_LOG.split("\nModel s/text")[0] + "\n# FAILED (exit 124, limit 90 s)\n"
    assert summary.summarise(stopped) == [
        ["peers", "float32", "FAILED (exit 124, limit 90 s)", "-", "-", "-"]
    ]
