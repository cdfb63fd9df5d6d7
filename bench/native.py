"""Benchmark of the native core (`explainserve._native`) against vectorised numpy.

For every core function at realistic sizes, times the native call and the best numpy equivalent
we could write, interleaving the repeats of all cases in one run (so that machine noise hits
both sides alike), checks that both give the same answer, and prints a markdown table of median
times and the speed-up (numpy time / native time).

    .venv/bin/python bench/native.py            # full sizes (g = 512, p = 4096, ...)
    .venv/bin/python bench/native.py --quick    # smaller sizes and fewer repeats
    .venv/bin/python bench/native.py --floors   # also the memory floor of the target cases

The floor of a case is the time numpy takes, on one core, to write a fresh array of the case's
output size (`np.full`) plus to read the inputs the case must scan (`np.max`): no implementation
that returns a fresh output can beat it by much, so `numpy / floor` bounds the speed-up a
memory-bound case can show.

numpy's BLAS is pinned to one thread (`--blas-threads`, through threadpoolctl when installed):
OpenBLAS's worker threads busy-wait after each call, and on a 2-core machine that took one of the
native side's two cores in the cases measured right after the BLAS-backed estimator references
(bernoulli_masks ran about 2x slower in the interleaved loop than alone).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from explainserve import _native as native

try:  # numpy's BLAS thread pool (see `--blas-threads`); optional
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - the bench still runs, unpinned
    threadpool_limits = None

# ---------------------------------------------------------------------------------------------
# Vectorised numpy references (the fast ones; tests/native/reference.py has the slow, exact ones)
# ---------------------------------------------------------------------------------------------


def np_occlusion_masks(g: int) -> np.ndarray:
    out = np.zeros((g + 1, g), np.uint8)
    out[np.arange(1, g + 1), np.arange(g)] = 1
    return out


def np_bernoulli_masks(n: int, g: int, prob: float, rng: np.random.Generator) -> np.ndarray:
    # 32 random bits per cell compared with prob * 2^32: cheaper than drawing doubles.
    threshold = np.uint64(min(round(prob * 2**32), 2**32))
    return (rng.integers(0, 2**32, size=(n, g), dtype=np.uint32) < threshold).view(np.uint8)


def np_kernel_shap_masks(n: int, g: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sampled design: rows all-kept, all-replaced, then complementary pairs."""
    ks = np.arange(1, g)
    probs = 1.0 / (ks * (g - ks))
    pairs = (n - 1) // 2
    kept = rng.choice(ks, size=pairs, p=probs / probs.sum())
    # A uniform kept set of size k: the first k units of a random permutation of each row.
    order = np.argsort(rng.random((pairs, g)), axis=1)
    first = np.ones((pairs, g), np.uint8)
    np.put_along_axis(first, order, (np.arange(g)[None, :] >= kept[:, None]).view(np.uint8), 1)
    masks = np.empty((n, g), np.uint8)
    masks[0] = 0
    masks[1] = 1
    rest = masks[2:]
    rest[0::2] = first[: len(rest[0::2])]
    rest[1::2] = 1 - first[: len(rest[1::2])]
    weights = np.ones(n)
    weights[:2] = 0.0
    return masks, weights


def np_latin_hypercube(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    strata = np.argsort(rng.random((k, d)), axis=0)
    return (strata + rng.random((k, d))) / k


def np_sobol_masks_from_points(points: np.ndarray, g: int) -> np.ndarray:
    k = points.shape[0]
    cells = (points < 0.5).view(np.uint8)
    a, b = cells[:, :g], cells[:, g:]
    out = np.empty(((g + 2) * k, g), np.uint8)
    out[:k] = a
    out[k : 2 * k] = b
    c = out[2 * k :].reshape(g, k, g)
    c[:] = a[None]
    idx = np.arange(g)
    c[idx, :, idx] = b.T
    return out


def np_expand_ids(
    masks: np.ndarray, token_to_unit: np.ndarray, input_ids: np.ndarray, replacement: int
) -> np.ndarray:
    has_unit = token_to_unit >= 0
    # np.take is several times faster than fancy indexing along axis 1.
    replaced = np.take(masks.view(np.bool_), np.where(has_unit, token_to_unit, 0), axis=1)
    replaced &= has_unit
    return np.where(replaced, replacement, input_ids)


def np_aggregate(
    scores: np.ndarray, token_to_unit: np.ndarray, n_units: int, strategy: str
) -> np.ndarray:
    """reduceat over tokens sorted by unit; empty units are patched afterwards.

    signed_max picks between the max and the min, so on an exact magnitude tie it returns the
    max rather than the first token (the native rule).
    """
    keep = token_to_unit >= 0
    units = token_to_unit[keep]
    order = np.argsort(units, kind="stable")
    cols = np.flatnonzero(keep)[order]
    counts = np.bincount(units, minlength=n_units)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nonempty = counts > 0
    if len(cols) and cols[-1] - cols[0] == len(cols) - 1 and (np.diff(cols) == 1).all():
        gathered = scores[:, cols[0] : cols[-1] + 1]  # units in token order: a view, no copy
    else:
        gathered = np.take(scores, cols, axis=1)
    idx = starts[nonempty]
    out = np.full((scores.shape[0], n_units), 0.0 if strategy == "sum" else np.nan, np.float32)
    if len(cols) == 0:
        return out
    if strategy in ("sum", "mean"):
        total = np.add.reduceat(gathered, idx, axis=1, dtype=np.float64)
        if strategy == "mean":
            total /= counts[nonempty]
        out[:, nonempty] = total
    elif strategy == "max":
        out[:, nonempty] = np.maximum.reduceat(gathered, idx, axis=1)
    elif strategy == "min":
        out[:, nonempty] = np.minimum.reduceat(gathered, idx, axis=1)
    else:
        hi = np.maximum.reduceat(gathered, idx, axis=1)
        lo = np.minimum.reduceat(gathered, idx, axis=1)
        out[:, nonempty] = np.where(np.abs(lo) > np.abs(hi), lo, hi)
    return out


def np_occlusion_scores(outputs: np.ndarray) -> np.ndarray:
    return (outputs[0][None, :] - outputs[1:]).T


def np_lime_scores(
    masks: np.ndarray, outputs: np.ndarray, kernel_width: float | None = None, alpha: float = 1.0
) -> np.ndarray:
    z = 1.0 - masks
    g = z.shape[1]
    kept = z.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(kept > 0, 1.0 - np.sqrt(kept / g), 1.0)  # cosine distance to all-ones
    w_width = 0.75 * math.sqrt(g) if kernel_width is None else kernel_width
    w = np.exp(-(d**2) / w_width**2)
    z_mean = w @ z / w.sum()
    y_mean = w @ outputs / w.sum()
    zc = z - z_mean
    wzc = zc * w[:, None]
    lhs = wzc.T @ zc + alpha * np.eye(g)
    rhs = wzc.T @ (outputs - y_mean)
    return np.linalg.solve(lhs, rhs).T


def np_kernel_shap_scores(
    masks: np.ndarray, weights: np.ndarray, outputs: np.ndarray
) -> np.ndarray:
    sums = masks.sum(axis=1, dtype=np.int64)
    g = masks.shape[1]
    full = outputs[np.flatnonzero(sums == 0)[0]]
    empty = outputs[np.flatnonzero(sums == g)[0]]
    total = full - empty
    z = 1.0 - masks
    x = z[:, :-1] - z[:, -1:]
    y = outputs - empty - z[:, -1:] * total
    wx = x * weights[:, None]
    lhs = wx.T @ x
    lhs += 1e-10 * np.trace(lhs) * np.eye(g - 1)
    head = np.linalg.solve(lhs, wx.T @ y)
    return np.vstack([head, total - head.sum(axis=0)]).T


def np_sobol_indices(outputs: np.ndarray, g: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    f_a, f_b = outputs[:k], outputs[k : 2 * k]
    f_c = outputs[2 * k :].reshape(g, k, -1)
    var = np.concatenate([f_a, f_b]).var(axis=0)
    total = ((f_a[None] - f_c) ** 2).mean(axis=1) / 2
    first = var - ((f_b[None] - f_c) ** 2).mean(axis=1) / 2
    safe = np.where(var > 0, var, 1.0)
    first = np.where(var > 0, first / safe, 0.0)
    total = np.where(var > 0, total / safe, 0.0)
    return first.T, total.T


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One benchmarked function: both implementations and a check that they agree."""

    name: str
    size: str
    native: Callable[[], object]
    numpy: Callable[[], object] | None
    check: Callable[[object, object], bool] | None = None
    target: bool = False  # one of the functions with the >= 10x target
    note: str = ""
    reads: tuple[np.ndarray, ...] = ()  # inputs the native side must read in full (for --floors)
    native_times: list[float] = field(default_factory=list)
    numpy_times: list[float] = field(default_factory=list)
    inner: dict[str, int] = field(default_factory=dict)


def word_units(n_tokens: int, n_words: int, rng: np.random.Generator) -> np.ndarray:
    """A token -> word map like a WordPiece tokenizer's: [CLS], runs of 1+ tokens, [SEP]."""
    inner = n_tokens - 2
    cuts = np.sort(rng.choice(np.arange(1, inner), size=n_words - 1, replace=False))
    lengths = np.diff(np.concatenate([[0], cuts, [inner]]))
    units = np.repeat(np.arange(n_words), lengths)
    return np.concatenate([[-1], units, [-1]]).astype(np.int64)


def build_cases(quick: bool) -> list[Case]:
    rng = np.random.default_rng(0)
    g, p = (128, 1024) if quick else (512, 4096)
    n_tokens = 2 * g
    agg_tokens, agg_rows, agg_units = (1024, 250, 175) if quick else (4096, 1000, 700)
    est_p, est_g, est_t = (1024, 32, 4) if quick else (4096, 64, 4)
    seed = 1234

    cases = [
        Case(
            "occlusion_masks",
            f"g={g}",
            lambda: native.occlusion_masks(g),
            lambda: np_occlusion_masks(g),
            lambda a, b: np.array_equal(a, b),
            target=True,
        ),
        Case(
            "bernoulli_masks",
            f"p={p} g={g}",
            lambda: native.bernoulli_masks(p, g, 0.5, seed),
            lambda: np_bernoulli_masks(p, g, 0.5, rng),
            lambda a, b: a.shape == b.shape and abs(a.mean() - b.mean()) < 0.01,
            target=True,
        ),
        Case(
            "kernel_shap_masks",
            f"p={p} g={g}",
            lambda: native.kernel_shap_masks(p, g, seed),
            lambda: np_kernel_shap_masks(p, g, rng),
            lambda a, b: a[0].shape == b[0].shape and abs(a[0].mean() - b[0].mean()) < 0.02,
            target=True,
        ),
    ]
    k = max(1, p // (g + 2))
    cases.append(
        Case(
            "sobol_masks (latin_hypercube)",
            f"p={(g + 2) * k} g={g} k={k}",
            lambda: native.sobol_masks(g, k, "latin_hypercube", seed),
            lambda: np_sobol_masks_from_points(np_latin_hypercube(k, 2 * g, rng), g),
            lambda a, b: a.shape == b.shape,
            target=True,
        )
    )
    cases.append(
        Case(
            "sobol_masks (sobol)",
            f"p={(g + 2) * k} g={g} k={k}",
            lambda: native.sobol_masks(g, k, "sobol", seed),
            None,
            note="no numpy Owen-scrambled Sobol",
        )
    )

    masks = native.bernoulli_masks(p, g, 0.3, 7)
    t2u = word_units(n_tokens, g, rng)
    ids = rng.integers(1000, 30000, size=n_tokens).astype(np.int64)
    cases.append(
        Case(
            "expand_ids",
            f"p={p} g={g} n={n_tokens}",
            lambda: native.expand_ids(masks, t2u, ids, 103),
            lambda: np_expand_ids(masks, t2u, ids, 103),
            lambda a, b: np.array_equal(a, b),
            target=True,
            reads=(masks,),
        )
    )

    scores = rng.normal(size=(agg_rows, agg_tokens)).astype(np.float32)
    agg_t2u = word_units(agg_tokens, agg_units, rng)
    for strategy in ("mean", "max", "min", "sum", "signed_max"):
        cases.append(
            Case(
                f"aggregate ({strategy})",
                f"r={agg_rows} n={agg_tokens} u={agg_units}",
                lambda s=strategy: native.aggregate(scores, agg_t2u, agg_units, s),
                lambda s=strategy: np_aggregate(scores, agg_t2u, agg_units, s),
                lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True),
                target=True,
                reads=(scores,),
            )
        )

    outputs_occ = rng.normal(size=(est_g + 1, est_t))
    cases.append(
        Case(
            "occlusion_scores",
            f"g={est_g} t={est_t}",
            lambda: native.occlusion_scores(outputs_occ),
            lambda: np_occlusion_scores(outputs_occ),
            lambda a, b: np.array_equal(a, b),
        )
    )
    lime_masks = native.bernoulli_masks(est_p, est_g, 0.5, 3)
    lime_out = rng.normal(size=(est_p, est_t))
    cases.append(
        Case(
            "lime_scores",
            f"p={est_p} g={est_g} t={est_t}",
            lambda: native.lime_scores(lime_masks, lime_out),
            lambda: np_lime_scores(lime_masks, lime_out),
            lambda a, b: np.allclose(a, b, rtol=1e-7, atol=1e-9),
        )
    )
    shap_masks, shap_w = native.kernel_shap_masks(est_p, est_g, 5)
    shap_out = rng.normal(size=(est_p, est_t))
    cases.append(
        Case(
            "kernel_shap_scores",
            f"p={est_p} g={est_g} t={est_t}",
            lambda: native.kernel_shap_scores(shap_masks, shap_w, shap_out),
            lambda: np_kernel_shap_scores(shap_masks, shap_w, shap_out),
            lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-8),
        )
    )
    sob_k = est_p // (est_g + 2)
    sob_out = rng.normal(size=((est_g + 2) * sob_k, est_t))
    cases.append(
        Case(
            "sobol_indices",
            f"p={(est_g + 2) * sob_k} g={est_g} t={est_t}",
            lambda: native.sobol_indices(sob_out, est_g, sob_k),
            lambda: np_sobol_indices(sob_out, est_g, sob_k),
            lambda a, b: all(
                np.allclose(x, y, rtol=1e-9, atol=1e-12) for x, y in zip(a, b, strict=True)
            ),
        )
    )
    return cases


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def calibrate(fn: Callable[[], object], min_seconds: float) -> int:
    """Calls per measurement so that one measurement lasts at least `min_seconds`."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, math.ceil(min_seconds / once))


def measure(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def run(cases: list[Case], repeats: int, min_seconds: float) -> None:
    for case in cases:
        if case.numpy is not None and case.check is not None:
            ok = case.check(case.native(), case.numpy())
            if not ok:
                raise SystemExit(f"{case.name}: native and numpy disagree")
        case.inner["native"] = calibrate(case.native, min_seconds)
        if case.numpy is not None:
            case.inner["numpy"] = calibrate(case.numpy, min_seconds)
    for rep in range(repeats):
        for case in cases:
            # Alternate which side goes first, so neither always runs on a warm cache.
            sides = [("native", case.native), ("numpy", case.numpy)]
            if rep % 2:
                sides.reverse()
            for side, fn in sides:
                if fn is None:
                    continue
                t = measure(fn, case.inner[side])
                (case.native_times if side == "native" else case.numpy_times).append(t)


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def table(cases: list[Case]) -> str:
    lines = [
        "| function | size | native (ms) | numpy (ms) | speed-up (numpy / native) |",
        "|---|---|---:|---:|---:|",
    ]
    for case in cases:
        nat = statistics.median(case.native_times)
        if case.numpy_times:
            num = statistics.median(case.numpy_times)
            ratio = f"{num / nat:.1f}x"
            num_s = fmt_ms(num)
        else:
            ratio, num_s = "-", f"- ({case.note})"
        lines.append(f"| {case.name} | {case.size} | {fmt_ms(nat)} | {num_s} | {ratio} |")
    return "\n".join(lines)


def target_summary(cases: list[Case]) -> str:
    parts = []
    for case in cases:
        if case.target and case.numpy_times:
            ratio = statistics.median(case.numpy_times) / statistics.median(case.native_times)
            parts.append((case.name, ratio))
    missed = [f"{name} ({ratio:.1f}x)" for name, ratio in parts if ratio < 10]
    if not missed:
        return "Target >= 10x for masks, expansion and aggregation: met by every case."
    return "Target >= 10x for masks, expansion and aggregation: NOT met by " + ", ".join(missed)


def best_time(fn: Callable[[], object], min_seconds: float, repeats: int) -> float:
    inner = calibrate(fn, min_seconds)
    return min(measure(fn, inner) for _ in range(repeats))


def floors(cases: list[Case], min_seconds: float, repeats: int) -> str:
    """Fresh-write plus read time of each target case's data, against its native and numpy times."""
    lines = [
        "| function | output (MiB) | inputs read (MiB) | floor (ms) | native (ms) | numpy (ms) "
        "| numpy / floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        if not (case.target and case.numpy_times):
            continue
        result = case.native()
        outputs = result if isinstance(result, tuple) else (result,)

        def write(outputs: tuple[np.ndarray, ...] = outputs) -> None:
            for a in outputs:
                np.full(a.shape, 1, a.dtype)

        def read(reads: tuple[np.ndarray, ...] = case.reads) -> None:
            for a in reads:
                a.max()

        floor = best_time(write, min_seconds, repeats) + (
            best_time(read, min_seconds, repeats) if case.reads else 0.0
        )
        nat = statistics.median(case.native_times)
        num = statistics.median(case.numpy_times)
        out_mib = sum(a.nbytes for a in outputs) / 2**20
        in_mib = sum(a.nbytes for a in case.reads) / 2**20
        lines.append(
            f"| {case.name} | {out_mib:.2f} | {in_mib:.2f} | {fmt_ms(floor)} | {fmt_ms(nat)} "
            f"| {fmt_ms(num)} | {num / floor:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats")
    parser.add_argument(
        "--floors", action="store_true", help="also time the memory floor of the target cases"
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="threads of numpy's BLAS (default 1; 0 = leave as is). OpenBLAS workers busy-wait "
        "for a while after each call, so with more than one they take a core away from the "
        "cases measured after the BLAS-backed estimator references",
    )
    args = parser.parse_args()
    if args.blas_threads > 0 and threadpool_limits is not None:
        threadpool_limits(limits=args.blas_threads, user_api="blas")
    blas = (
        f"BLAS threads {args.blas_threads}"
        if args.blas_threads > 0 and threadpool_limits is not None
        else "BLAS threads as configured"
    )
    repeats = args.repeats or (5 if args.quick else 21)
    min_seconds = 0.005 if args.quick else 0.02

    cases = build_cases(args.quick)
    run(cases, repeats, min_seconds)
    print(
        f"explainserve._native {native.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{blas}, {repeats} interleaved repeats, medians"
    )
    print()
    print(table(cases))
    print()
    print(target_summary(cases))
    if args.floors:
        print()
        print(floors(cases, min_seconds, repeats))


if __name__ == "__main__":
    main()
