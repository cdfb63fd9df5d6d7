"""Causal LMs: perturbed rows run from their first changed position on a cached prefix.

A perturbed sequence that equals the unperturbed one (the job's `reference`) before position
`s` has, at every position before `s`, the same keys and values in every layer (attention is
causal). So a batch of forward rows runs in two steps:

1. the prefix pass: each reference (one per distinct reference: a request's teacher-forced
   row and its method's rows share theirs), cut to the longest prefix its rows in the batch
   share with it, left-padded together, keeping the KV cache; where rows equal to a reference
   are in the batch (the teacher-forced row, Occlusion's unperturbed row), it runs the whole
   reference instead and scores them: the unperturbed sequence's own pass is the prefix pass;
2. the suffixes, each row's positions `s..n` only, with explicit position ids:
   - packed (`Runner.packing`: attention that takes a 4D mask, a plain LM head): several rows'
     suffixes to a batch row, as wide as the longest suffix, first fit by decreasing length, in
     one pass; a 4D mask lets each position see its own reference's cache slots before its
     row's `s` and its own row's earlier positions, nothing of the rows packed beside it;
     the scored positions' final states are gathered, and only the target rows of the head run;
   - otherwise in groups: the rows sorted by how many positions they still have to run, cut
     into groups whose padding stays small; each group gets its rows' cache rows (gathered, and
     cut to the group's longest prefix) and a 2D mask that hides each row's cache slots past its
     own `s` and its padding.

Whether a batch takes this path or runs every row in full is measured (`PassCosts`: each
path's seconds per token, per model), except for isolated requests, which keep a fixed rule
(`MIN_SAVING` of the tokens saved) so that their results are reproducible.

A row is run from `min(s, first scored position)`, so every logit it is scored by is computed.
Scores equal the full recomputation up to float rounding (the same sums in another order: the
masked cache slots add exact zeros). Occlusion of unit `j` then costs about `n - start_j`
tokens instead of `n`; LIME, KernelSHAP and Sobol rows save their leading kept units.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve.scheduling.cost import RecentMedian
from explainserve.scheduling.interfaces import Runner, WorkerStats
from explainserve.scheduling.jobs import ForwardJob, position_ids
from explainserve.scheduling.scores import target_scores

#: Suffix groups (models without packing): what one more group (one more pass, its cache rows
#: gathered) costs, in tokens run; the groups minimise padded tokens plus this per group.
GROUP_COST_TOKENS = 96


#: Isolated requests: the share of a batch's tokens the prefix path must save to be taken;
#: below, its extra passes (the prefix, the suffixes) cost more than the tokens saved (measured
#: on short prompts: bench/RESULTS.md). Other batches choose by measured cost (`PassCosts`).
MIN_SAVING = 0.25


class PassCosts:
    """Which path a forward batch of a causal LM takes, from what each path has cost.

    Each path's rate (seconds per token it runs, padding counted: the prefix path's prefix and
    packed or grouped suffix tokens, the full path's rows times width) is the median of the
    last `WINDOW` batches timed on it (`record`): a slow first call or a burst of load on the
    machine does not decide for long. A batch takes the path whose rate times its tokens is
    smaller. Until each path has `SAMPLES` timings, the batches alternate between them (the
    prefix path first); then every `EXPLORE`-th decision takes the other path, to keep both
    rates current, and every `CLOSE_EXPLORE`-th while the two predicted times are within
    `CLOSE` of each other: only the path taken is timed, so after a burst of load that made
    one path's timings slow, a close call would otherwise stay on the other path for
    `EXPLORE` decisions (the tiny LMs' Occlusion, whose paths are 1.1-1.4x apart, ran every
    timed request of a benchmark case on the slower full path so), while trying the other
    path costs at most a quarter of one decision in `CLOSE_EXPLORE`. Isolated requests never
    come here (fixed rules keep them reproducible).
    """

    #: One decision in this many takes the path the rates do not pick.
    EXPLORE = 32
    #: ... one in this many when the paths' predicted times are within a factor `CLOSE`.
    CLOSE_EXPLORE = 6
    CLOSE = 1.25
    #: Timings each path needs before the rates decide.
    SAMPLES = 3
    #: Timings a rate is the median of.
    WINDOW = 8

    def __init__(self) -> None:
        self.rates = {"prefix": RecentMedian(self.WINDOW), "full": RecentMedian(self.WINDOW)}
        self.decisions = 0
        #: Tokens of the full-path batch decided last and not yet timed.
        self.pending_full = 0

    def rate(self, path: str) -> float | None:
        """Seconds per token on `path` ("prefix" or "full"), None before `SAMPLES` timings."""
        timed = self.rates[path]
        return timed.median() if len(timed) >= self.SAMPLES else None

    def choose(self, prefix_tokens: int, full_tokens: int) -> bool:
        """Whether a batch takes the prefix path (`prefix_tokens` run) rather than the full one
        (`full_tokens`)."""
        self.decisions += 1
        prefix_rate, full_rate = self.rate("prefix"), self.rate("full")
        if prefix_rate is None or full_rate is None:
            take = len(self.rates["prefix"]) <= len(self.rates["full"])
        else:
            on_prefix, on_full = prefix_rate * prefix_tokens, full_rate * full_tokens
            take = on_prefix < on_full
            close = max(on_prefix, on_full) < self.CLOSE * min(on_prefix, on_full)
            if self.decisions % (self.CLOSE_EXPLORE if close else self.EXPLORE) == 0:
                take = not take
        self.pending_full = 0 if take else full_tokens
        return take

    def record(self, path: str, tokens: int, seconds: float) -> None:
        """A batch of `tokens` ran on `path` ("prefix" or "full") in `seconds`."""
        if tokens > 0:
            self.rates[path].add(seconds / tokens)

    def full_ran(self, seconds: float) -> None:
        """The full-path batch last decided ran in `seconds`."""
        if self.pending_full:
            self.record("full", self.pending_full, seconds)
            self.pending_full = 0


def row_starts(job: ForwardJob) -> NDArray[np.int64]:
    """Per row of `job`, the position it runs from: its first position that differs from the
    reference (a changed id, or a zeroed embedding), at most the first scored position; 0 for
    every row of a job without reference. Computed once per job, with `unchanged_rows`."""
    if job._starts is not None:
        return job._starts
    n = job.length
    if job.reference is None or job.positions is None:
        starts = np.zeros(job.n_rows, dtype=np.int64)
        unchanged = np.zeros(job.n_rows, dtype=bool)
    else:
        changed = job.ids != job.reference[None, :]
        if job.replaced is not None:
            changed |= job.replaced
        some = changed.any(axis=1)
        first = np.where(some, changed.argmax(axis=1), n)
        starts = np.minimum(first, int(job.positions.min())).astype(np.int64)
        unchanged = ~some
    job._starts, job._unchanged = starts, unchanged
    return starts


def unchanged_rows(job: ForwardJob) -> NDArray[np.bool_]:
    """Per row of `job`, whether it equals its reference (Occlusion's unperturbed row, a
    request's teacher-forced row): it may be scored from the pass that computes the reference's
    cache (`forward_scores`)."""
    row_starts(job)
    assert job._unchanged is not None
    return job._unchanged


def _references(pieces: list[tuple[ForwardJob, int, int]]) -> NDArray[np.int64]:
    """Per piece, the index of its job's reference among the batch's distinct ones: jobs of one
    reference (a request's teacher-forced row and its method's rows) share one prefix row; a
    job without reference has one of its own."""
    index: dict[object, int] = {}
    out = np.empty(len(pieces), dtype=np.int64)
    for p, (job, _, _) in enumerate(pieces):
        key: object = id(job)
        if job.reference is not None:
            key = (job.reference.tobytes(), job.attention.tobytes())
        out[p] = index.setdefault(key, len(index))
    return out


def _groups(lengths: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Row indices cut into groups of similar suffix length (longest first): among the cuts of
    the rows sorted by length, the one with the fewest padded tokens plus `GROUP_COST_TOKENS`
    per group (dynamic programming over the distinct lengths; rows of one length stay
    together)."""
    order = np.argsort(-lengths, kind="stable")
    sizes, counts = np.unique(-lengths[order], return_counts=True)
    sizes = -sizes  # distinct lengths, longest first
    d = len(sizes)
    before = np.concatenate([[0], np.cumsum(counts)])  # rows before distinct length k
    # best[j]: the cheapest cut of the first j distinct lengths; a group of lengths k..j-1 is
    # padded to sizes[k].
    best = np.zeros(d + 1, dtype=np.float64)
    cut = np.zeros(d + 1, dtype=np.int64)
    for j in range(1, d + 1):
        costs = best[:j] + (before[j] - before[:j]) * sizes[:j] + GROUP_COST_TOKENS
        k = int(np.argmin(costs))
        best[j], cut[j] = costs[k], k
    bounds = []
    j = d
    while j > 0:
        bounds.append((int(before[cut[j]]), int(before[j])))
        j = int(cut[j])
    return [order[lo:hi].astype(np.int64) for lo, hi in reversed(bounds)]


def _pack(rows: NDArray[np.int64], lengths: NDArray[np.int64], width: int) -> list[list[int]]:
    """Rows `rows` (of one job) cut into bins of at most `width` tokens, first fit by
    decreasing length: Occlusion's suffixes (lengths `n - start_j`, a triangle) pack nearly
    without padding, two to three to a batch row. Plain lists: a batch has tens to hundreds
    of rows, for which numpy's per-call cost is most of the time."""
    order = rows[np.argsort(-lengths[rows], kind="stable")].tolist()
    sizes = lengths[order].tolist()
    bins: list[list[int]] = []
    room: list[int] = []
    for r, n in zip(order, sizes, strict=True):
        for b, left in enumerate(room):
            if left >= n:
                bins[b].append(r)
                room[b] = left - n
                break
        else:
            bins.append([r])
            room.append(width - n)
    return bins


def forward_scores(
    runner: Runner,
    pieces: list[tuple[ForwardJob, int, int]],
    stats: WorkerStats,
    costs: PassCosts | None = None,
    always: bool = False,
) -> list[NDArray[np.float64]] | None:
    """Each piece's `(rows, t)` scores, run on cached prefixes; None (nothing run, nothing
    counted) when the runner cannot cut its cache, when no row would run on a cached prefix, or
    when the full path is chosen: by `costs` (the executor's measured `PassCosts`), or without
    them (isolated requests) when the prefix path would save less than `MIN_SAVING` of the
    tokens. `always` (`WorkerOptions.always_prefix`): never the full path by choice.

    Jobs of one reference share its prefix row. Where rows equal to the reference are in the
    batch (the request's teacher-forced row, Occlusion's unperturbed one), the prefix row runs
    the whole reference and they are scored from that pass, the unperturbed sequence's own,
    without a suffix of their own: that costs no more tokens, since such a row starts at the
    first scored position, the latest any row of the reference starts at, so the prefix grows
    by exactly one such row's suffix."""
    if not runner.prefix_reuse:
        return None
    # Flat row table: piece, row within the job, start, whether it equals its reference.
    piece_of, row_of, start_of, same_of = [], [], [], []
    for p, (job, start, stop) in enumerate(pieces):
        if job.positions is None:
            return None
        piece_of.append(np.full(stop - start, p, dtype=np.int64))
        row_of.append(np.arange(start, stop, dtype=np.int64))
        start_of.append(row_starts(job)[start:stop])
        same_of.append(unchanged_rows(job)[start:stop])
    piece = np.concatenate(piece_of)
    row = np.concatenate(row_of)
    s = np.concatenate(start_of)
    same = np.concatenate(same_of)
    lengths = np.asarray([job.length for job, _, _ in pieces], dtype=np.int64)
    ref_of = _references(pieces)
    ref = ref_of[piece]  # each flat row's reference
    n_refs = int(ref_of.max()) + 1
    ref_len = np.zeros(n_refs, dtype=np.int64)
    ref_len[ref_of] = lengths
    # Per reference: the longest prefix its rows need; the whole reference where rows equal
    # to it are in the batch.
    need = np.zeros(n_refs, dtype=np.int64)
    np.maximum.at(need, ref, s)
    whole = np.zeros(n_refs, dtype=bool)
    whole[ref[same]] = True
    prefix_len = np.where(whole, ref_len, need)
    scored = same & whole[ref]  # rows scored from the prefix pass
    runs = ~scored  # rows run as suffixes on the cache (or in full, from 0)
    if not (runs & (s > 0)).any():
        return None  # nothing on a cached prefix: the full path runs the same rows
    naive = int(lengths[piece].sum())
    prefixed = np.flatnonzero(prefix_len > 0)
    width = int(prefix_len.max())
    sub = np.flatnonzero(runs)
    suffix = lengths[piece] - s
    span = int(suffix[sub].max())
    packs: list[list[int]] | None = None
    if runner.packing:
        packs = []
        for k in range(n_refs):
            mine = np.flatnonzero(ref[sub] == k)
            if len(mine):
                packs.extend(_pack(mine, suffix[sub], span))
        run_tokens = len(prefixed) * width + len(packs) * span
    else:
        run_tokens = len(prefixed) * width + sum(
            len(g) * int(suffix[sub][g].max()) for g in _groups(suffix[sub])
        )
    if always:
        pass
    elif costs is not None:
        if not costs.choose(run_tokens, len(s) * int(lengths[piece].max())):
            return None
    elif int(prefix_len.sum()) + int(suffix[sub].sum()) > (1 - MIN_SAVING) * naive:
        return None
    began = time.perf_counter()
    host = _run(runner, pieces, stats, _Plan(piece, row, s, ref_of, prefix_len, scored), packs)
    if host is not None and costs is not None:
        costs.record("prefix", run_tokens, time.perf_counter() - began)
    return host


class _Plan:
    """How a batch runs on the prefix path: the flat row table (`piece`, `row`, `s`), each
    piece's reference (`ref_of`), each reference's prefix row length (`prefix_len`, 0: none)
    and the rows scored from the prefix pass (`scored`; the others run as suffixes)."""

    def __init__(
        self,
        piece: NDArray[np.int64],
        row: NDArray[np.int64],
        s: NDArray[np.int64],
        ref_of: NDArray[np.int64],
        prefix_len: NDArray[np.int64],
        scored: NDArray[np.bool_],
    ) -> None:
        self.piece, self.row, self.s = piece, row, s
        self.ref_of, self.prefix_len, self.scored = ref_of, prefix_len, scored


def _run(
    runner: Runner,
    pieces: list[tuple[ForwardJob, int, int]],
    stats: WorkerStats,
    plan: _Plan,
    packs: list[list[int]] | None,
) -> list[NDArray[np.float64]] | None:
    """The prefix pass (scoring the rows equal to a whole reference), then the other rows'
    suffixes: packed (`packs`, bins of indices into the rows that run) or in groups."""
    lengths = np.asarray([job.length for job, _, _ in pieces], dtype=np.int64)
    piece, row, s, ref_of, prefix_len = plan.piece, plan.row, plan.s, plan.ref_of, plan.prefix_len
    naive = int(lengths[piece].sum())
    prefixed = np.flatnonzero(prefix_len > 0)
    slot = np.zeros(len(prefix_len), dtype=np.int64)
    slot[prefixed] = np.arange(len(prefixed))
    width = int(prefix_len.max())
    reference_of = {int(ref_of[p]): job for p, (job, _, _) in enumerate(pieces)}
    device = runner.device
    pre_ids = torch.full((len(prefixed), width), runner.pad_id, dtype=torch.long)
    pre_att = torch.zeros((len(prefixed), width), dtype=torch.long)
    for i, k in enumerate(prefixed.tolist()):
        m = int(prefix_len[k])
        job = reference_of[k]
        assert job.reference is not None
        pre_ids[i, width - m :] = torch.from_numpy(job.reference[:m])
        pre_att[i, width - m :] = torch.from_numpy(job.attention[:m])
    # The positions the rows scored from the prefix pass read (their rows end at its end).
    scored_pieces = np.unique(piece[plan.scored]).tolist()
    keep = max((pieces[p][0].keep for p in scored_pieces), default=0)
    # A job's attention and position ids, made once per job, not once per row.
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def job_positions(job: ForwardJob) -> tuple[torch.Tensor, torch.Tensor]:
        if id(job) not in made:
            full_att = torch.from_numpy(job.attention)
            made[id(job)] = (full_att, position_ids(full_att))
        return made[id(job)]

    with torch.inference_mode():
        passed = runner.prefix_cache(pre_ids.to(device), pre_att.to(device), keep)
        if passed is None:
            return None
        cache, kept_prefix = passed
        if scored_pieces and kept_prefix is None:
            raise RuntimeError(
                f"the runner's prefix_cache kept none of the last {keep} positions it was asked "
                "to keep (Runner.prefix_cache): the rows equal to their reference cannot be scored"
            )
        out_rows: list[tuple[NDArray[np.int64], torch.Tensor]] = []
        for p in scored_pieces:
            job = pieces[p][0]
            assert job.positions is not None
            assert kept_prefix is not None  # checked above, for the type checker
            flat = np.flatnonzero((piece == p) & plan.scored)
            rows_t = torch.full((len(flat),), int(slot[ref_of[p]]), dtype=torch.long)
            cols = torch.from_numpy(keep - (job.length - job.positions)).to(device)
            targets = torch.from_numpy(job.targets).to(device)
            scores = target_scores(kept_prefix, rows_t.to(device), cols, targets, job.mode)
            out_rows.append((flat, scores))
        del kept_prefix
        padded = len(prefixed) * width
        real = int(prefix_len.sum())
        n_rows = len(s)
        # The rows that run a suffix, renumbered 0.. (`packs` and groups index them).
        sub = np.flatnonzero(~plan.scored)
        s_sub, piece_sub = s[sub], piece[sub]
        suffix = lengths[piece_sub] - s_sub
        job_slot = [int(slot[ref_of[p]]) for p in range(len(pieces))]
        job_offset = [width - int(prefix_len[ref_of[p]]) for p in range(len(pieces))]
        if packs is not None:
            span = int(suffix.max())
            for flat, scores in _packed_scores(
                runner, pieces, packs, span, piece_sub, row[sub], s_sub, cache, pre_att,
                job_slot, job_offset, job_positions,
            ):  # fmt: skip
                out_rows.append((sub[flat], scores))
            padded += len(packs) * span
            real += int(suffix.sum())
        for group in [] if packs is not None else _groups(suffix):
            g = len(group)
            span = int(suffix[group].max())
            # Cache slots: row r's reference prefix sits at [width - m_j, width - m_j + s_r).
            group_slot = np.asarray([job_slot[piece_sub[r]] for r in group], dtype=np.int64)
            offset = np.asarray([job_offset[piece_sub[r]] for r in group], dtype=np.int64)
            ends = np.where(s_sub[group] > 0, offset + s_sub[group], 0)
            cached = int(ends.max())
            ids = torch.full((g, span), runner.pad_id, dtype=torch.long)
            att = torch.zeros((g, cached + span), dtype=torch.long)
            pos = torch.zeros((g, span), dtype=torch.long)
            zero = torch.zeros((g, span), dtype=torch.bool)
            any_zero = False
            job_keep = 0
            for i, r in enumerate(group.tolist()):
                job = pieces[int(piece_sub[r])][0]
                start, n, j = int(s_sub[r]), int(lengths[piece_sub[r]]), int(row[sub[r]])
                if start > 0:
                    att[i, int(offset[i]) : int(ends[i])] = pre_att[
                        int(group_slot[i]), int(offset[i]) : int(ends[i])
                    ]
                full_att, full_pos = job_positions(job)
                att[i, cached + span - (n - start) :] = full_att[start:]
                ids[i, span - (n - start) :] = torch.from_numpy(job.ids[j, start:])
                pos[i, span - (n - start) :] = full_pos[start:]
                if job.replaced is not None:
                    zero[i, span - (n - start) :] = torch.from_numpy(job.replaced[j, start:])
                    any_zero = True
                job_keep = max(job_keep, job.keep)
            ids_d = ids.to(device)
            embeds = runner.embed(ids_d)
            if any_zero:
                embeds = embeds.masked_fill(zero.to(device).unsqueeze(-1), 0.0)
            rows_cache = None
            if cached > 0:
                rows_cache = runner.cache_rows(
                    cache, torch.from_numpy(group_slot).to(device), cached
                )
            kept = runner.kept(ids_d, att.to(device), embeds, job_keep, pos.to(device), rows_cache)
            for p in np.unique(piece_sub[group]).tolist():
                job = pieces[p][0]
                assert job.positions is not None
                local = torch.from_numpy(np.flatnonzero(piece_sub[group] == p))
                cols = torch.from_numpy(job_keep - (job.length - job.positions)).to(device)
                targets = torch.from_numpy(job.targets).to(device)
                scores = target_scores(kept, local.to(device), cols, targets, job.mode)
                out_rows.append((sub[group[local.numpy()]], scores))
            del kept
            padded += g * span
            real += int(suffix[group].sum())
        stats.batches += 1
        stats.rows += n_rows
        stats.padded_tokens += padded
        stats.real_tokens += real
        stats.naive_tokens += naive
        host = [
            np.empty((stop - start, len(job.targets)), dtype=np.float64)
            for job, start, stop in pieces
        ]
        for flat, values in out_rows:
            values_host = values.double().cpu().numpy()
            for k, r in enumerate(flat.tolist()):
                p = int(piece[r])
                host[p][int(row[r]) - pieces[p][1]] = values_host[k]
    return host


def _packed_scores(
    runner: Runner,
    pieces: list[tuple[ForwardJob, int, int]],
    packs: list[list[int]],
    span: int,
    piece: NDArray[np.int64],
    row: NDArray[np.int64],
    s: NDArray[np.int64],
    cache: Any,
    pre_att: torch.Tensor,
    job_slot: list[int],
    job_offset: list[int],
    job_positions: Callable[[ForwardJob], tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[NDArray[np.int64], torch.Tensor]]:
    """The suffixes of the flat rows, several to a batch row (`packs`, `span` wide), in one
    pass on the cache: each row's positions see the cache slots of its own reference prefix
    (its job's, up to its start) and its own earlier positions, nothing of the rows packed
    beside it (a 4D mask), with its own position ids. Each piece's `(rows, t)` scores.
    """
    device = runner.device
    b = len(packs)
    n_flat = len(s)
    lengths = np.asarray([job.length for job, _, _ in pieces], dtype=np.int64)[piece]
    suffix = lengths - s
    # Each flat row's batch row and first column (plain integers: cheap).
    where = np.zeros(n_flat, dtype=np.int64)
    first = np.zeros(n_flat, dtype=np.int64)
    slots = np.zeros(b, dtype=np.int64)
    for i, members in enumerate(packs):
        at = 0
        for r in members:
            where[r] = i
            first[r] = at
            at += int(suffix[r])
        slots[i] = job_slot[int(piece[members[0]])]
    ids = np.full((b, span), runner.pad_id, dtype=np.int64)
    pos = np.zeros((b, span), dtype=np.int64)
    zero = np.zeros((b, span), dtype=bool)
    segment = np.full((b, span), -1, dtype=np.int64)
    local = np.zeros((b, span), dtype=np.int64)
    seen = np.zeros((b, span), dtype=bool)  # the position's own attention
    cache_end = np.zeros((b, span), dtype=np.int64)  # cache slots seen: [0, end)
    t_max = max(len(job.targets) for job, _, _ in pieces)
    index = np.zeros((n_flat, t_max), dtype=np.int64)
    any_zero = False
    for p in np.unique(piece).tolist():
        job = pieces[p][0]
        assert job.positions is not None
        mine = np.flatnonzero(piece == p)
        n_tok = suffix[mine]
        # One entry per token run: its flat row, its offset in the row's suffix.
        flat = np.repeat(mine, n_tok)
        k = np.arange(len(flat)) - np.repeat(np.cumsum(n_tok) - n_tok, n_tok)
        src = s[flat] + k
        at_row, at_col = where[flat], first[flat] + k
        ids[at_row, at_col] = job.ids[row[flat], src]
        full_att, full_pos = job_positions(job)
        pos[at_row, at_col] = full_pos.numpy()[src]
        seen[at_row, at_col] = full_att.numpy()[src] != 0
        if job.replaced is not None:
            zero[at_row, at_col] = job.replaced[row[flat], src]
            any_zero = True
        segment[at_row, at_col] = flat
        local[at_row, at_col] = k
        cache_end[at_row, at_col] = np.where(s[flat] > 0, job_offset[p] + s[flat], 0)
        index[mine, : len(job.positions)] = (where[mine] * span + first[mine] - s[mine])[
            :, None
        ] + job.positions[None, :]
    cached = int(cache_end.max())
    row_att = pre_att.numpy()[slots, :cached] != 0  # (b, C)
    real = segment >= 0
    sees = np.empty((b, span, cached + span), dtype=bool)
    sees[:, :, :cached] = (np.arange(cached)[None, None, :] < cache_end[:, :, None]) & row_att[
        :, None, :
    ]
    sees_new = sees[:, :, cached:]
    np.equal(segment[:, :, None], segment[:, None, :], out=sees_new)
    sees_new &= local[:, None, :] <= local[:, :, None]
    sees_new &= seen[:, None, :] & real[:, :, None]
    # A padding (or unattended) position sees itself only: no row of the mask is empty.
    alone = np.nonzero(~(real & seen))
    sees_new[alone[0], alone[1], alone[1]] = True
    ids_d = torch.from_numpy(ids).to(device)
    embeds = runner.embed(ids_d)
    if any_zero:
        embeds = embeds.masked_fill(torch.from_numpy(zero).to(device).unsqueeze(-1), 0.0)
    mask = torch.from_numpy(sees)
    pos_t = torch.from_numpy(pos)
    index_t = torch.from_numpy(index)
    same = bool((slots == slots[0]).all())
    rows_cache = runner.cache_rows(
        cache,
        torch.from_numpy(slots[:1] if same else slots).to(device),
        cached,
        expand=b if same else 0,
    )
    kept = runner.packed(
        embeds, mask.unsqueeze(1).to(device), pos_t.to(device), rows_cache, index_t.to(device)
    )
    out: list[tuple[NDArray[np.int64], torch.Tensor]] = []
    for p in np.unique(piece).tolist():
        job = pieces[p][0]
        mine = np.flatnonzero(piece == p)
        kept_cols = torch.arange(len(job.targets), device=device)
        targets = torch.from_numpy(job.targets).to(device)
        scores = target_scores(
            kept, torch.from_numpy(mine).to(device), kept_cols, targets, job.mode
        )
        out.append((mine, scores))
    return out
