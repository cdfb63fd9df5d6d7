"""Causal LMs: perturbed rows run from their first changed position on a cached prefix.

A perturbed sequence that equals the unperturbed one (the job's `reference`) before position
`s` has, at every position before `s`, the same keys and values in every layer (attention is
causal). So a batch of forward rows runs in two steps:

1. the prefix pass: each job's reference, cut to the longest prefix its rows in the batch
   share with it, left-padded together, keeping the KV cache;
2. the suffix passes: the rows sorted by how many positions they still have to run, cut into
   groups whose padding stays small; each group gets its rows' cache rows (gathered, and cut to
   the group's longest prefix) and runs only its positions `s..n`, with explicit position ids
   and an attention mask that hides each row's cache slots past its own `s` and its padding.

A row is run from `min(s, first scored position)`, so every logit it is scored by is computed.
Scores equal the full recomputation up to float rounding (the same sums in another order: the
masked cache slots add exact zeros). Occlusion of unit `j` then costs about `n - start_j`
tokens instead of `n`; LIME, KernelSHAP and Sobol rows save their leading kept units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve.scheduling.jobs import position_ids

if TYPE_CHECKING:
    from explainserve.scheduling.execute import Runner
    from explainserve.scheduling.jobs import ForwardJob
    from explainserve.scheduling.worker import WorkerStats

#: Padding a suffix group may add, as a fraction of its real tokens: more groups cost more
#: passes (small on a GPU, smaller on a CPU), fewer cost padded tokens.
MAX_GROUP_PADDING = 0.125


#: The share of a batch's tokens the prefix path must save to be taken: below, its extra passes
#: (the prefix, one per suffix group) cost more than the tokens saved (measured on short
#: prompts: bench/RESULTS.md).
MIN_SAVING = 0.25


def row_starts(job: ForwardJob) -> NDArray[np.int64]:
    """Per row of `job`, the position it runs from: its first position that differs from the
    reference (a changed id, or a zeroed embedding), at most the first scored position; 0 for
    every row of a job without reference. Computed once per job."""
    if job._starts is not None:
        return job._starts
    n = job.length
    if job.reference is None or job.positions is None:
        starts = np.zeros(job.n_rows, dtype=np.int64)
    else:
        changed = job.ids != job.reference[None, :]
        if job.replaced is not None:
            changed |= job.replaced
        first = np.where(changed.any(axis=1), changed.argmax(axis=1), n)
        starts = np.minimum(first, int(job.positions.min())).astype(np.int64)
    job._starts = starts
    return starts


def _groups(lengths: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Row indices cut into groups of similar suffix length (longest first), each padded by at
    most `MAX_GROUP_PADDING` of its real tokens."""
    order = np.argsort(-lengths, kind="stable")
    groups: list[list[int]] = []
    width = 0
    real = 0
    for r in order.tolist():
        n = int(lengths[r])
        if groups and (len(groups[-1]) + 1) * width <= (1 + MAX_GROUP_PADDING) * (real + n):
            groups[-1].append(r)
            real += n
        else:
            groups.append([r])
            width = n
            real = n
    return [np.asarray(g, dtype=np.int64) for g in groups]


def forward_scores(
    runner: Runner, pieces: list[tuple[ForwardJob, int, int]], stats: WorkerStats
) -> list[NDArray[np.float64]] | None:
    """Each piece's `(rows, t)` scores, run on cached prefixes; None (nothing run, nothing
    counted) when it would save less than `MIN_SAVING` of the tokens or the runner cannot cut
    its cache."""
    from explainserve.scheduling.execute import target_scores  # execute imports this module

    if not runner.prefix_reuse:
        return None
    # Flat row table: piece, row within the job, start, job length.
    piece_of, row_of, start_of = [], [], []
    for p, (job, start, stop) in enumerate(pieces):
        if job.positions is None:
            return None
        starts = row_starts(job)[start:stop]
        piece_of.append(np.full(stop - start, p, dtype=np.int64))
        row_of.append(np.arange(start, stop, dtype=np.int64))
        start_of.append(starts)
    piece = np.concatenate(piece_of)
    row = np.concatenate(row_of)
    s = np.concatenate(start_of)
    if not s.any():
        return None
    lengths = np.asarray([job.length for job, _, _ in pieces], dtype=np.int64)
    # One prefix row per job with rows starting after 0 (a job may come in several pieces).
    prefix_len: dict[int, int] = {}
    for p, (job, _, _) in enumerate(pieces):
        m = int(s[piece == p].max(initial=0))
        prefix_len[id(job)] = max(prefix_len.get(id(job), 0), m)
    jobs = {id(job): job for job, _, _ in pieces}
    naive = int(lengths[piece].sum())
    if sum(prefix_len.values()) + naive - int(s.sum()) > (1 - MIN_SAVING) * naive:
        return None
    prefixed = [k for k in jobs if prefix_len[k] > 0]
    slot = {k: i for i, k in enumerate(prefixed)}
    width = max(prefix_len[k] for k in prefixed)
    device = runner.device
    pre_ids = torch.full((len(prefixed), width), runner.pad_id, dtype=torch.long)
    pre_att = torch.zeros((len(prefixed), width), dtype=torch.long)
    for i, k in enumerate(prefixed):
        m = prefix_len[k]
        reference = jobs[k].reference
        assert reference is not None
        pre_ids[i, width - m :] = torch.from_numpy(reference[:m])
        pre_att[i, width - m :] = torch.from_numpy(jobs[k].attention[:m])
    # A job's attention and position ids, made once per job, not once per row.
    made: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def job_positions(job: ForwardJob) -> tuple[torch.Tensor, torch.Tensor]:
        if id(job) not in made:
            full_att = torch.from_numpy(job.attention)
            made[id(job)] = (full_att, position_ids(full_att))
        return made[id(job)]

    with torch.inference_mode():
        cache = runner.prefix_cache(pre_ids.to(device), pre_att.to(device))
        if cache is None:
            return None
        padded = len(prefixed) * width
        real = sum(prefix_len[k] for k in prefixed)
        n_rows = len(s)
        suffix = lengths[piece] - s
        out_rows: list[tuple[NDArray[np.int64], torch.Tensor]] = []
        for group in _groups(suffix):
            g = len(group)
            span = int(suffix[group].max())
            # Cache slots: row r's reference prefix sits at [width - m_j, width - m_j + s_r).
            job_slot = np.asarray(
                [slot.get(id(pieces[piece[r]][0]), 0) for r in group], dtype=np.int64
            )
            offset = np.asarray(
                [width - prefix_len[id(pieces[piece[r]][0])] for r in group], dtype=np.int64
            )
            ends = np.where(s[group] > 0, offset + s[group], 0)
            cached = int(ends.max())
            ids = torch.full((g, span), runner.pad_id, dtype=torch.long)
            att = torch.zeros((g, cached + span), dtype=torch.long)
            pos = torch.zeros((g, span), dtype=torch.long)
            zero = torch.zeros((g, span), dtype=torch.bool)
            any_zero = False
            keep = 0
            for i, r in enumerate(group.tolist()):
                job = pieces[int(piece[r])][0]
                start, n, j = int(s[r]), int(lengths[piece[r]]), int(row[r])
                if start > 0:
                    att[i, int(offset[i]) : int(ends[i])] = pre_att[
                        int(job_slot[i]), int(offset[i]) : int(ends[i])
                    ]
                full_att, full_pos = job_positions(job)
                att[i, cached + span - (n - start) :] = full_att[start:]
                ids[i, span - (n - start) :] = torch.from_numpy(job.ids[j, start:])
                pos[i, span - (n - start) :] = full_pos[start:]
                if job.replaced is not None:
                    zero[i, span - (n - start) :] = torch.from_numpy(job.replaced[j, start:])
                    any_zero = True
                keep = max(keep, job.keep)
            ids_d = ids.to(device)
            embeds = runner.embed(ids_d)
            if any_zero:
                embeds = embeds.masked_fill(zero.to(device).unsqueeze(-1), 0.0)
            rows_cache = None
            if cached > 0:
                rows_cache = runner.cache_rows(cache, torch.from_numpy(job_slot).to(device), cached)
            kept = runner.kept(ids_d, att.to(device), embeds, keep, pos.to(device), rows_cache)
            for p in np.unique(piece[group]).tolist():
                job = pieces[p][0]
                assert job.positions is not None
                local = torch.from_numpy(np.flatnonzero(piece[group] == p))
                cols = torch.from_numpy(keep - (job.length - job.positions)).to(device)
                targets = torch.from_numpy(job.targets).to(device)
                scores = target_scores(kept, local.to(device), cols, targets, job.mode)
                out_rows.append((group[local.numpy()], scores))
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
