"""Slow, obviously-correct reference implementations of `explainserve._native`.

Written from docs/native.md alone, as plain loops over Python values: every function here is meant
to be read side by side with the contract, not to be fast. The tests compare the Rust core against
these on small hypothesis-generated inputs.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import numpy as np

# --------------------------------------------------------------------------------------------
# The random generator (rng.rs): SplitMix64-seeded xoshiro256++, one stream per row.
# --------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & _M64


def _splitmix64(state: int) -> tuple[int, int]:
    """One SplitMix64 step: (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


class Rng:
    """xoshiro256++ seeded through SplitMix64, as `rng::Rng`."""

    def __init__(self, seed: int) -> None:
        sm = seed & _M64
        self.s = []
        for _ in range(4):
            sm, out = _splitmix64(sm)
            self.s.append(out)

    @classmethod
    def for_stream(cls, seed: int, stream: int) -> Rng:
        """The independent generator of stream `stream` (a row index) of `seed`."""
        sm = seed ^ ((0xD1B54A32D192ED03 * (stream + 1)) & _M64)
        _, mixed = _splitmix64(sm)
        return cls(mixed ^ _rotl(stream, 32))

    def next_u64(self) -> int:
        s = self.s
        result = (_rotl((s[0] + s[3]) & _M64, 23) + s[0]) & _M64
        t = (s[1] << 17) & _M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def next_f64(self) -> float:
        """Uniform in [0, 1) with 53 random bits."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def occlusion_masks(g: int) -> np.ndarray:
    """Row 0 all zeros, row i + 1 a single 1 at column i."""
    out = np.zeros((g + 1, g), dtype=np.uint8)
    for i in range(g):
        out[i + 1, i] = 1
    return out


def bernoulli_threshold(prob: float) -> int:
    """t = round(prob * 65536), halves rounded up (exact: prob is a binary fraction)."""
    return math.floor(Fraction(prob) * 65536 + Fraction(1, 2))


def bernoulli_masks(n: int, g: int, prob: float, seed: int) -> np.ndarray:
    """Cell (r, j) is 1 iff 16-bit lane j % 4 (bits 16 (j % 4) ..) of draw j // 4 of row r's
    stream is < t = round(prob * 65536)."""
    t = bernoulli_threshold(prob)
    out = np.zeros((n, g), dtype=np.uint8)
    for r in range(n):
        rng = Rng.for_stream(seed, r)
        draw = 0
        for j in range(g):
            if j % 4 == 0:
                draw = rng.next_u64()
            lane = (draw >> (16 * (j % 4))) & 0xFFFF
            out[r, j] = 1 if lane < t else 0
    return out


def shapley_kernel_weight(g: int, k: int) -> float:
    """The Shapley kernel of a coalition keeping k of g units; 0 for k = 0 and k = g."""
    if k in (0, g):
        return 0.0
    return (g - 1) / (math.comb(g, k) * k * (g - k))


def kernel_shap_enumerated(g: int) -> tuple[np.ndarray, np.ndarray]:
    """All 2^g coalitions: bit j of row r is mask[r, j]; weights by number of kept units."""
    p = 2**g
    masks = np.zeros((p, g), dtype=np.uint8)
    weights = np.zeros(p, dtype=np.float64)
    for r in range(p):
        for j in range(g):
            masks[r, j] = (r >> j) & 1
        kept = g - int(masks[r].sum())
        weights[r] = shapley_kernel_weight(g, kept)
    return masks, weights


def kernel_shap_size_probs(g: int) -> dict[int, float]:
    """P(k) of the number of kept units of a sampled pair's first row, k = 1..g-1."""
    raw = {k: (g - 1) / (k * (g - k)) for k in range(1, g)}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def sobol_masks_from_points(points: np.ndarray, g: int) -> np.ndarray:
    """Rows [A; B; C_1 .. C_g] from a (k, 2g) design; a cell is 1 iff its value is < 0.5."""
    k = points.shape[0]
    a = [[1 if points[r, j] < 0.5 else 0 for j in range(g)] for r in range(k)]
    b = [[1 if points[r, g + j] < 0.5 else 0 for j in range(g)] for r in range(k)]
    rows = [list(row) for row in a] + [list(row) for row in b]
    for i in range(g):
        for r in range(k):
            row = list(a[r])
            row[i] = b[r][i]
            rows.append(row)
    return np.array(rows, dtype=np.uint8).reshape((g + 2) * k, g)


# --------------------------------------------------------------------------------------------
# Grouping
# --------------------------------------------------------------------------------------------

# Unicode White_Space (what Rust's `char::is_whitespace` tests).
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
TERMINATORS = frozenset(".?!")
CLOSERS = frozenset("\"')]\u201d\u2019")
ABBREVIATIONS = frozenset(
    [
        *("mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs."),
        *("etc.", "e.g.", "i.e.", "inc.", "ltd.", "co.", "no.", "fig."),
    ]
)


def is_space(c: str) -> bool:
    return c in WHITESPACE


def _is_abbreviation(text: str, period: int) -> bool:
    """Whether the single `.` at `period` ends an abbreviation or a one-letter initial.

    Two readings the docs leave open follow the core: an initial is an upper-case letter ("J."
    but not "b."), and opening punctuation before the word is not part of it ("(Dr." is "Dr.").
    """
    start = period
    while start > 0 and not is_space(text[start - 1]):
        start -= 1
    while start < period and not text[start].isalnum():
        start += 1
    word = text[start:period]
    if (word + ".").lower() in ABBREVIATIONS:
        return True
    return len(word) == 1 and word.isupper()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Split after a run of .?! (plus closing quotes/brackets) followed by whitespace."""
    n = len(text)
    cuts = []
    i = 0
    while i < n:
        if text[i] not in TERMINATORS:
            i += 1
            continue
        run_start = i
        j = i
        while j < n and text[j] in TERMINATORS:
            j += 1
        run_end = j
        while j < n and text[j] in CLOSERS:
            j += 1
        followed_by_space = j < n and is_space(text[j])
        single_period = run_end - run_start == 1 and text[run_start] == "."
        if followed_by_space and not (single_period and _is_abbreviation(text, run_start)):
            cuts.append(j)
        i = j
    pieces = []
    start = 0
    for cut in [*cuts, n]:
        pieces.append((start, cut))
        start = cut
    spans = []
    for s, e in pieces:
        while s < e and is_space(text[s]):
            s += 1
        while e > s and is_space(text[e - 1]):
            e -= 1
        if s < e:
            spans.append((s, e))
    return spans


def whitespace_words(text: str) -> list[tuple[int, int]]:
    """Maximal runs of non-whitespace characters."""
    words = []
    i = 0
    while i < len(text):
        if is_space(text[i]):
            i += 1
            continue
        j = i
        while j < len(text) and not is_space(text[j]):
            j += 1
        words.append((i, j))
        i = j
    return words


def _first_non_space(text: str, start: int, end: int) -> int | None:
    for c in range(start, end):
        if not is_space(text[c]):
            return c
    return None


def _segment_of(segments: list[tuple[int, int]], c: int) -> int:
    for idx, (s, e) in enumerate(segments):
        if s <= c < e:
            return idx
    raise AssertionError(f"character {c} is in no segment")


def _by_segments(
    segments: list[tuple[int, int]],
    special: list[bool],
    offsets: list[tuple[int, int]],
    text: str,
) -> list[int]:
    """Segment key of each token (None for specials); whitespace/empty tokens join the previous
    non-special token's key, or get a fresh key of their own when no token came before."""
    keys: list[object] = []
    previous: object = None
    for i, (s, e) in enumerate(offsets):
        if special[i]:
            keys.append(None)
            continue
        c = _first_non_space(text, s, e)
        if c is not None:
            key: object = ("segment", _segment_of(segments, c))
        elif previous is not None:
            key = previous
        else:
            key = ("token", i)
        keys.append(key)
        previous = key
    return keys


def _number_units(
    keys: list[object], offsets: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Units in order of first token; spans from the tokens' non-empty offsets."""
    unit_of_key: dict[object, int] = {}
    token_to_unit = []
    members: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            token_to_unit.append(-1)
            continue
        if key not in unit_of_key:
            unit_of_key[key] = len(members)
            members.append([])
        unit = unit_of_key[key]
        members[unit].append(i)
        token_to_unit.append(unit)
    spans = []
    for tokens in members:
        non_empty = [offsets[i] for i in tokens if offsets[i][0] != offsets[i][1]]
        if non_empty:
            spans.append((min(s for s, _ in non_empty), max(e for _, e in non_empty)))
        else:
            s = offsets[tokens[0]][0]
            spans.append((s, s))
    return (
        np.array(token_to_unit, dtype=np.int64),
        np.array(spans, dtype=np.int64).reshape(len(spans), 2),
    )


def group_units(
    granularity: str,
    special_mask: np.ndarray,
    offsets: np.ndarray,
    word_ids: np.ndarray | None,
    text: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Token -> unit map and unit spans, as docs/native.md "Grouping" describes."""
    special = [bool(x) for x in special_mask]
    offs = [(int(s), int(e)) for s, e in offsets]
    keys: list[object]
    if granularity == "all_tokens":
        keys = [("token", i) for i in range(len(offs))]
    elif granularity == "token":
        keys = [None if special[i] else ("token", i) for i in range(len(offs))]
    elif granularity == "word" and word_ids is not None:
        keys = []
        for i, w in enumerate(word_ids):
            if special[i]:
                keys.append(None)
            elif w >= 0:
                keys.append(("word", int(w)))
            else:
                keys.append(("token", i))
    elif granularity == "word":
        keys = _by_segments(whitespace_words(text), special, offs, text)
    elif granularity == "sentence":
        keys = _by_segments(sentence_spans(text), special, offs, text)
    else:
        raise ValueError(granularity)
    return _number_units(keys, offs)


# --------------------------------------------------------------------------------------------
# Expansion and aggregation
# --------------------------------------------------------------------------------------------


def expand_ids(
    masks: np.ndarray, token_to_unit: np.ndarray, input_ids: np.ndarray, replacement_id: int
) -> np.ndarray:
    p = masks.shape[0]
    n = len(input_ids)
    out = np.zeros((p, n), dtype=np.int64)
    for r in range(p):
        for i in range(n):
            u = int(token_to_unit[i])
            out[r, i] = replacement_id if u >= 0 and masks[r, u] == 1 else int(input_ids[i])
    return out


def aggregate(
    scores: np.ndarray, token_to_unit: np.ndarray, n_units: int, strategy: str
) -> np.ndarray:
    """Mean/sum accumulate in f64 token by token; NaN anywhere in a unit makes it NaN."""
    r, n = scores.shape
    out = np.zeros((r, n_units), dtype=np.float32)
    for row in range(r):
        for u in range(n_units):
            values = [float(scores[row, i]) for i in range(n) if token_to_unit[i] == u]
            if not values:
                out[row, u] = 0.0 if strategy == "sum" else math.nan
            elif any(math.isnan(v) for v in values):
                out[row, u] = math.nan
            elif strategy in ("sum", "mean"):
                total = 0.0
                for v in values:
                    total += v
                out[row, u] = total if strategy == "sum" else total / len(values)
            elif strategy == "max":
                out[row, u] = max(values)
            elif strategy == "min":
                out[row, u] = min(values)
            elif strategy == "signed_max":
                best = values[0]
                for v in values[1:]:
                    if abs(v) > abs(best):
                        best = v
                out[row, u] = best
            else:
                raise ValueError(strategy)
    return out


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


def occlusion_scores(outputs: np.ndarray) -> np.ndarray:
    p, t = outputs.shape
    out = np.zeros((t, p - 1))
    for j in range(t):
        for i in range(p - 1):
            out[j, i] = outputs[0, j] - outputs[i + 1, j]
    return out


def lime_distance(mask_row: np.ndarray, distance: str) -> float:
    g = len(mask_row)
    kept = g - int(sum(int(m) for m in mask_row))
    replaced = g - kept
    if distance == "cosine":
        if kept == 0:
            return 1.0
        return 1.0 - kept / (math.sqrt(kept) * math.sqrt(g))
    if distance == "hamming":
        return replaced / g
    if distance == "euclidean":
        return math.sqrt(replaced)
    raise ValueError(distance)


def lime_weights(masks: np.ndarray, distance: str, kernel_width: float | None) -> np.ndarray:
    g = masks.shape[1]
    w = 0.75 * math.sqrt(g) if kernel_width is None else kernel_width
    return np.array([math.exp(-(lime_distance(row, distance) ** 2) / w**2) for row in masks])


def lime_scores(
    masks: np.ndarray,
    outputs: np.ndarray,
    distance: str = "cosine",
    kernel_width: float | None = None,
    alpha: float = 1.0,
) -> np.ndarray:
    """Weighted ridge with an unpenalised intercept, by weighted centring + normal equations."""
    z = 1.0 - masks.astype(np.float64)
    g = z.shape[1]
    w = lime_weights(masks, distance, kernel_width)
    z_mean = (w[:, None] * z).sum(axis=0) / w.sum()
    y_mean = (w[:, None] * outputs).sum(axis=0) / w.sum()
    zc = z - z_mean
    yc = outputs - y_mean
    lhs = zc.T @ (w[:, None] * zc) + alpha * np.eye(g)
    rhs = zc.T @ (w[:, None] * yc)
    return np.linalg.solve(lhs, rhs).T


def kernel_shap_scores(masks: np.ndarray, weights: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Weighted least squares under sum(phi) = f(x) - f(empty), eliminating the last unit."""
    g = masks.shape[1]
    t = outputs.shape[1]
    sums = masks.sum(axis=1)
    full = int(np.flatnonzero(sums == 0)[0])
    empty = int(np.flatnonzero(sums == g)[0])
    fx, f0 = outputs[full], outputs[empty]
    total = fx - f0
    if g == 1:
        return total.reshape(t, 1).copy()
    others = [r for r in range(len(masks)) if r not in (full, empty)]
    z = 1.0 - masks[others].astype(np.float64)
    w = weights[others]
    y = outputs[others] - f0
    x = z[:, :-1] - z[:, -1:]
    y = y - z[:, -1:] * total
    lhs = x.T @ (w[:, None] * x)
    rhs = x.T @ (w[:, None] * y)
    if np.linalg.matrix_rank(lhs) < g - 1:
        # The core adds a tiny ridge; the minimum-norm solution is what that tends to.
        head = np.linalg.pinv(lhs) @ rhs
    else:
        head = np.linalg.solve(lhs, rhs)
    phi = np.vstack([head, total - head.sum(axis=0)])
    return phi.T


def brute_force_shapley(value: dict[frozenset[int], float], g: int) -> np.ndarray:
    """phi_i = sum over S not containing i of |S|! (g - |S| - 1)! / g! (v(S + i) - v(S))."""
    phi = np.zeros(g)
    for i in range(g):
        rest = [j for j in range(g) if j != i]
        for size in range(g):
            coef = math.factorial(size) * math.factorial(g - size - 1) / math.factorial(g)
            for subset in combinations(rest, size):
                s = frozenset(subset)
                phi[i] += coef * (value[s | {i}] - value[s])
    return phi


def sobol_indices(outputs: np.ndarray, g: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Jansen estimators; V is the population variance over the 2k rows of A and B."""
    t = outputs.shape[1]
    first = np.zeros((t, g))
    total = np.zeros((t, g))
    for j in range(t):
        f_a = [float(outputs[r, j]) for r in range(k)]
        f_b = [float(outputs[k + r, j]) for r in range(k)]
        both = f_a + f_b
        mean = sum(both) / len(both)
        var = sum((v - mean) ** 2 for v in both) / len(both)
        if var == 0:
            continue
        for i in range(g):
            f_c = [float(outputs[(2 + i) * k + r, j]) for r in range(k)]
            d_b = sum((f_b[r] - f_c[r]) ** 2 for r in range(k)) / k / 2
            d_a = sum((f_a[r] - f_c[r]) ** 2 for r in range(k)) / k / 2
            first[j, i] = (var - d_b) / var
            total[j, i] = d_a / var
    return first, total
