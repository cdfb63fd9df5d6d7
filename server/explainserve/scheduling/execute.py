"""Running a batch: the torch code of each job kind, from padding the rows to handing each job
its results, on the model's `Runner` (`scheduling.interfaces`).

`Executor.run` takes a batch of row ranges of one kind (see `scheduling.jobs`) and runs it on
the calling thread (the worker's, which owns the model); it raises what the model raises, and the
worker handles it. Nothing here knows about queues or about attribution methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray

from explainserve.errors import Cancelled
from explainserve.scheduling import prefix
from explainserve.scheduling.interfaces import Runner, WorkerStats
from explainserve.scheduling.jobs import (
    ActivationJob,
    ActivationResult,
    ConceptJob,
    ConceptLayerJob,
    ForwardJob,
    GenerateJob,
    GradientJob,
    HeadJob,
    Job,
    LayerBatch,
    OutputHead,
    Pieces,
)
from explainserve.scheduling.scores import apply_mode, target_scores


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device out-of-memory error (CUDA's, or an injected one)."""
    return isinstance(exc, torch.OutOfMemoryError)


class Executor:
    """Runs batches of one model (on the worker's thread) and counts them in `stats`."""

    def __init__(
        self,
        runner: Runner,
        stats: WorkerStats,
        reuse: bool,
        read_only: bool = True,
        always_prefix: bool = False,
    ) -> None:
        self.runner = runner
        self.stats = stats
        #: Causal LMs: forward rows may run on the cached prefix of their reference.
        self.reuse = reuse
        #: ... and do whenever they can, not by the measured costs' choice.
        self.always_prefix = always_prefix
        #: Class logits computed at the positions the head reads only (`Runner.logits`).
        self.read_only = read_only
        #: Causal LMs: what the prefix path and the full path have cost (`prefix.PassCosts`).
        self.pass_costs = prefix.PassCosts()
        #: Tokens (padding counted) the last batch ran on the prefix path, which runs fewer
        #: than its rows x width; None when it ran every row in full (the worker's cost and
        #: throughput models record what actually ran).
        self.ran_tokens: int | None = None

    def free_cached_memory(self) -> None:
        """Returns the device memory torch caches (before a batch is retried smaller)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self, pieces: Pieces[Job[Any]]) -> None:
        """Runs a batch of jobs of one kind, and resolves the futures of those it completes."""
        kind = pieces[0][0].kind
        self.ran_tokens = None
        # The batch's kind is declared by its jobs; the casts say what the worker guarantees.
        if kind == "forward":
            self._run_forward(cast(Pieces[ForwardJob], pieces))
        elif kind == "gradient":
            self._run_gradient(cast(Pieces[GradientJob], pieces))
        elif kind == "activation":
            self._run_activation(cast(Pieces[ActivationJob], pieces))
        elif kind == "head":
            self._run_head(cast(Pieces[HeadJob], pieces))
        elif kind == "concept":
            self._run_concept(cast(Pieces[ConceptJob], pieces))
        elif kind == "concept_layer":
            self._run_concept_layer(cast(Pieces[ConceptLayerJob], pieces))
        else:
            self._run_generate([cast(GenerateJob, job) for job, _, _ in pieces])

    def _columns(self, width: int, length: int) -> slice:
        """Where a row of `length` tokens sits in a batch of `width` (the runner's side)."""
        if self.runner.padding_side == "left":
            return slice(width - length, width)
        return slice(0, length)

    def _pad(
        self,
        pieces: Sequence[
            tuple[ForwardJob | GradientJob | ActivationJob | ConceptJob | ConceptLayerJob, int, int]
        ],
    ) -> tuple[int, torch.Tensor]:
        """The padded width and the `(b, L)` attention mask of a batch."""
        width = max(job.length for job, _, _ in pieces)
        rows = sum(stop - start for _, start, stop in pieces)
        attention = torch.zeros((rows, width), dtype=torch.long)
        at = 0
        for job, start, stop in pieces:
            cols = self._columns(width, job.length)
            attention[at : at + stop - start, cols] = torch.from_numpy(job.attention)
            at += stop - start
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.padded_tokens += rows * width
        real = sum((stop - start) * job.length for job, start, stop in pieces)
        self.stats.real_tokens += real
        self.stats.naive_tokens += real
        return width, attention

    def _run_forward(self, pieces: Pieces[ForwardJob]) -> None:
        host = None
        costs = None
        if self.reuse and any(job.reference is not None for job, _, _ in pieces):
            # Isolated requests choose by fixed rules (their results reproducible), others by
            # what each path has cost.
            if not any(job.isolated for job, _, _ in pieces):
                costs = self.pass_costs
                costs.pending_full = 0
            padded = self.stats.padded_tokens
            host = prefix.forward_scores(self.runner, pieces, self.stats, costs, self.always_prefix)
            if host is not None:
                self.ran_tokens = self.stats.padded_tokens - padded
        if host is None:
            began = time.perf_counter()
            host = self._forward_scores(pieces)
            if costs is not None:
                costs.full_ran(time.perf_counter() - began)
        for (job, start, stop), out in zip(pieces, host, strict=True):
            if job._out is None:
                job._out = np.empty((job.n_rows, len(job.targets)), dtype=np.float64)
            job._out[start:stop] = out
            if job.count_done(stop - start):
                job.future.set_result(job._out)

    def _forward_scores(self, pieces: Pieces[ForwardJob]) -> list[NDArray[np.float64]]:
        """Each piece's `(rows, t)` scores, every row run in full in one padded batch."""
        width, attention = self._pad(pieces)
        rows = attention.shape[0]
        ids = torch.full((rows, width), self.runner.pad_id, dtype=torch.long)
        zero_mask = None
        if any(job.replaced is not None for job, _, _ in pieces):
            zero_mask = torch.zeros((rows, width), dtype=torch.bool)
        at = 0
        for job, start, stop in pieces:
            cols = self._columns(width, job.length)
            ids[at : at + stop - start, cols] = torch.from_numpy(job.ids[start:stop])
            if zero_mask is not None and job.replaced is not None:
                zero_mask[at : at + stop - start, cols] = torch.from_numpy(job.replaced[start:stop])
            at += stop - start
        device = self.runner.device
        with torch.inference_mode():
            ids_d = ids.to(device, non_blocking=True)
            att_d = attention.to(device, non_blocking=True)
            embeds = None
            if zero_mask is not None:
                embeds = self.runner.embed(ids_d)
                embeds = embeds.masked_fill(zero_mask.to(device).unsqueeze(-1), 0.0)
            keep = max(job.keep for job, _, _ in pieces)
            if keep:
                outputs = self._token_scores(pieces, ids_d, att_d, embeds, keep)
            else:
                logits = self._logits(pieces[0][0].output, ids_d, att_d, embeds)
                at = 0
                outputs = []
                for job, start, stop in pieces:
                    if job.logits_row and start == 0:
                        job.row_logits = logits[at].double().cpu().numpy()
                    scores = apply_mode(logits[at : at + stop - start], job.mode)
                    outputs.append(scores[:, torch.from_numpy(job.targets).to(device)])
                    at += stop - start
            return [o.double().cpu().numpy() for o in outputs]

    def _logits(
        self,
        output: OutputHead | None,
        ids: torch.Tensor,
        attention: torch.Tensor,
        embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        """`(b, C)` class logits of a padded batch, or, with an output head (every job of a
        batch has the same, `may_join`), its `(b, outputs)` on the head's input."""
        if output is None:
            return self.runner.logits(ids, attention, embeds, read_only=self.read_only)
        rows = self.runner.head_input(ids, attention, embeds, read_only=self.read_only)
        return output(rows, self.runner.run_head)

    def _token_scores(
        self,
        pieces: Pieces[ForwardJob],
        ids: torch.Tensor,
        attention: torch.Tensor,
        embeds: torch.Tensor | None,
        keep: int,
    ) -> list[torch.Tensor]:
        """Causal LMs: each job's `(rows, t)` target-token scores from the batch's last `keep`
        positions (rows are left-padded: a job's positions are the same distance from the end in
        all its rows). Only these scores leave the batch."""
        kept = self.runner.kept(ids, attention, embeds, keep)
        device = ids.device
        at = 0
        outputs = []
        for job, start, stop in pieces:
            if job.positions is None:
                # A job from a caller that forgot its positions: the batch fails, and the worker
                # retries its jobs one by one, so only that job fails.
                raise ValueError(
                    f"a forward job without positions in a batch scored at its last {keep} "
                    "positions (a causal LM's): such a job names the positions it scores"
                )
            n = stop - start
            cols = torch.from_numpy(keep - (job.length - job.positions)).to(device)
            targets = torch.from_numpy(job.targets).to(device)
            outputs.append(target_scores(kept, slice(at, at + n), cols, targets, job.mode))
            at += n
        return outputs

    def _run_gradient(self, pieces: Pieces[GradientJob]) -> None:
        width, attention = self._pad(pieces)
        rows = attention.shape[0]
        device = self.runner.device
        first = pieces[0][0].embeds
        embeds = torch.zeros((rows, width, first.shape[-1]), dtype=first.dtype, device=device)
        targets = torch.empty(rows, dtype=torch.long)
        modes = []
        at = 0
        for job, start, stop in pieces:
            cols = self._columns(width, job.length)
            embeds[at : at + stop - start, cols] = job.points(start, stop).to(device)
            targets[at : at + stop - start] = torch.from_numpy(job.targets[start:stop])
            modes.append((at, at + stop - start, job.mode))
            at += stop - start
        keep = max(job.keep for job, _, _ in pieces)
        columns = None
        if keep:
            # Causal LMs: row i is scored at its own position, `keep - (length - position)`
            # among the batch's last `keep` positions (rows are left-padded).
            columns = torch.cat(
                [
                    torch.from_numpy(keep - (job.length - job.positions[start:stop]))
                    for job, start, stop in pieces
                    if job.positions is not None
                ]
            ).to(device)
        embeds.requires_grad_(True)
        with torch.enable_grad():
            no_ids = torch.zeros((rows, width), dtype=torch.long, device=device)
            if columns is not None:
                kept = self.runner.token_logits(no_ids, attention.to(device), embeds, keep)
                logits = kept[torch.arange(rows, device=device), columns]
            else:
                logits = self._logits(pieces[0][0].output, no_ids, attention.to(device), embeds)
            picked = []
            for lo, hi, mode in modes:
                scored = apply_mode(logits[lo:hi], mode)
                picked.append(scored.gather(1, targets[lo:hi].to(device).unsqueeze(1))[:, 0])
            score = torch.cat(picked)
            (grads,) = torch.autograd.grad(score.sum(), embeds)
        grads_host = grads.float().cpu()
        score_host = score.detach().double().cpu().numpy()
        at = 0
        for job, start, stop in pieces:
            if job._scores is None:
                shape = (job.n_rows, *job.embeds.shape[1:]) if job.accumulate is None else (0,)
                job._grads = torch.empty(shape, dtype=torch.float32)
                job._scores = np.empty(job.n_rows, dtype=np.float64)
            n = stop - start
            piece = grads_host[at : at + n, self._columns(width, job.length)]
            if job.accumulate is not None:
                job.accumulate(start, stop, piece)
            else:
                assert job._grads is not None
                job._grads[start:stop] = piece
            job._scores[start:stop] = score_host[at : at + n]
            at += n
            if job.count_done(n):
                assert job._grads is not None
                job.future.set_result((job._grads, job._scores))

    def _run_activation(self, pieces: Pieces[ActivationJob]) -> None:
        """One padded forward for the batch's inputs, hooks on the union of their split points;
        each job gets its own rows, cut on the device before the copy to the host."""
        width, attention = self._pad(pieces)
        rows = attention.shape[0]
        ids = torch.full((rows, width), self.runner.pad_id, dtype=torch.long)
        real = torch.zeros((rows, width), dtype=torch.bool)
        head_pos = torch.empty(rows, dtype=torch.long)
        starts = []  # each job's first row in the flattened real positions
        n_real = 0
        for at, (job, _, _) in enumerate(pieces):
            cols = self._columns(width, job.length)
            ids[at, cols] = torch.from_numpy(job.ids)
            real[at, cols] = True
            # Left-padded runners' heads read the last token; the others, the first.
            head_pos[at] = cols.stop - 1 if self.runner.padding_side == "left" else cols.start
            starts.append(n_real)
            n_real += job.length
        names = sorted({name for job, _, _ in pieces for name in job.split_points})
        token_dim = {
            name: tok
            for job, _, _ in pieces
            for name, tok in zip(job.split_points, job.token_dim, strict=True)
        }
        selections = {
            (name, job.select if tok else "whole")
            for job, _, _ in pieces
            for name, tok in zip(job.split_points, job.token_dim, strict=True)
        }
        with_logits = any(job.logits for job, _, _ in pieces)
        device = self.runner.device
        host: dict[tuple[str, str], NDArray[np.float32]] = {}
        with torch.inference_mode():
            captured, logits = self.runner.capture(
                ids.to(device, non_blocking=True),
                attention.to(device, non_blocking=True),
                names,
                with_logits,
            )
            for name, how in sorted(selections):
                t = captured[name]
                if token_dim[name] and (t.dim() < 2 or t.shape[1] != width):
                    raise RuntimeError(
                        f"split point {name} has shape {list(t.shape)}: no token dimension of "
                        f"{width} in second place"
                    )
                if how == "all":
                    picked = t[real.to(device)]
                elif how == "head":
                    picked = t[torch.arange(rows, device=device), head_pos.to(device)]
                else:
                    picked = t
                host[(name, how)] = picked.float().cpu().numpy()
            logits_host = logits.float().cpu().numpy() if logits is not None else None
        for at, (job, _, _) in enumerate(pieces):
            values = []
            for name, tok in zip(job.split_points, job.token_dim, strict=True):
                if not tok:
                    values.append(host[(name, "whole")][at : at + 1])
                elif job.select == "head":
                    values.append(host[(name, "head")][at : at + 1])
                else:
                    values.append(host[(name, "all")][starts[at] : starts[at] + job.length])
            job_logits = logits_host[at] if job.logits and logits_host is not None else None
            if job.count_done(1):
                job.future.set_result(ActivationResult(values, job_logits))

    def _run_head(self, pieces: Pieces[HeadJob]) -> None:
        """The classification head alone on the batch's rows."""
        x = torch.cat([torch.from_numpy(job.inputs[start:stop]) for job, start, stop in pieces])
        self.stats.batches += 1
        self.stats.rows += int(x.shape[0])
        with torch.inference_mode():
            out = self.runner.run_head(x).float().cpu().numpy()
        at = 0
        for job, start, stop in pieces:
            n = stop - start
            if job._out is None:
                job._out = np.empty((job.n_rows, out.shape[1]), dtype=np.float32)
            job._out[start:stop] = out[at : at + n]
            at += n
            if job.count_done(n):
                job.future.set_result(job._out)

    def _run_concept(self, pieces: Pieces[ConceptJob]) -> None:
        """One padded pass up to the head's input for the batch's inputs; then each analysis of
        the batch once, on its jobs' rows, with gradients on (the pass itself keeps none)."""
        width, attention = self._pad(pieces)
        ids = torch.full((len(pieces), width), self.runner.pad_id, dtype=torch.long)
        for at, (job, _, _) in enumerate(pieces):
            ids[at, self._columns(width, job.length)] = torch.from_numpy(job.ids)
        device = self.runner.device
        with torch.no_grad():
            rows = self.runner.head_input(
                ids.to(device, non_blocking=True),
                attention.to(device, non_blocking=True),
                read_only=self.read_only,
            )
        groups: dict[int, list[int]] = {}
        for at, (job, _, _) in enumerate(pieces):
            groups.setdefault(id(job.analysis), []).append(at)
        with torch.enable_grad():
            for members in groups.values():
                jobs = [pieces[at][0] for at in members]
                index = torch.tensor(members, device=device)
                results = jobs[0].analysis(
                    rows.index_select(0, index), self.runner.run_head, [j.payload for j in jobs]
                )
                for job, result in zip(jobs, results, strict=True):
                    if job.count_done(1):
                        job.future.set_result(result)

    def _run_concept_layer(self, pieces: Pieces[ConceptLayerJob]) -> None:
        """The batch's inputs padded once; the analysis (one: `ConceptLayerJob.may_join`) runs
        the passes it needs through `LayerBatch`."""
        width, attention = self._pad(pieces)
        ids = torch.full((len(pieces), width), self.runner.pad_id, dtype=torch.long)
        columns = []
        for at, (job, _, _) in enumerate(pieces):
            cols = self._columns(width, job.length)
            ids[at, cols] = torch.from_numpy(job.ids)
            columns.append(cols)
        device = self.runner.device
        ids_d, att_d = ids.to(device), attention.to(device)
        point = pieces[0][0].split_point

        def capture() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                captured, logits = self.runner.capture(ids_d, att_d, [point], with_logits=True)
            assert logits is not None  # with_logits: the pass ran to the end
            return captured[point], logits

        def logits_with(edit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            with torch.enable_grad():
                return self.runner.edited_logits(ids_d, att_d, point, edit)

        jobs = [job for job, _, _ in pieces]
        results = jobs[0].analysis(
            LayerBatch(capture, logits_with, columns), [job.payload for job in jobs]
        )
        for job, result in zip(jobs, results, strict=True):
            if job.count_done(1):
                job.future.set_result(result)

    def _run_generate(self, jobs: list[GenerateJob]) -> None:
        """Continues prompts together (causal LMs' own continuations, when no target is given)."""
        self.stats.batches += 1
        self.stats.rows += len(jobs)
        done = [0] * len(jobs)

        def on_token(i: int) -> None:
            done[i] += 1
            callback = jobs[i].on_rows_done
            if callback is not None:
                callback(1)

        def is_cancelled(i: int) -> bool:
            check = jobs[i].is_cancelled
            return check is not None and check()

        first = jobs[0]
        results = self.runner.generate(
            [torch.from_numpy(job.prompt) for job in jobs],
            first.options,
            set(first.stop_ids),
            on_token,
            is_cancelled,
        )
        for i, (job, tokens) in enumerate(zip(jobs, results, strict=True)):
            job._rows_done = 1
            if job.future.done():
                continue
            if tokens is None:
                job.future.set_exception(Cancelled("request cancelled"))
                continue
            left = job.options.max_new_tokens - done[i]
            if left > 0 and job.on_rows_done is not None:
                job.on_rows_done(left)
            job.future.set_result(tokens)
