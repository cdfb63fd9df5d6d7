"""Explain for a causal LM: each input is a prompt, explained for its continuation (given, or
generated first on the model's worker), by the steps classifiers take too (`common`); the
continuation mechanics are in `causal`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from explainserve.errors import InvalidArgument
from explainserve.explain import causal
from explainserve.explain.common import count_rows, finished, start_runs
from explainserve.explain.limits import Limits
from explainserve.explain.params import ExplainParams, Explanation, Generation
from explainserve.explain.run import Item, Progress, RunContext
from explainserve.models.registry import ServedModel
from explainserve.scheduling.jobs import ForwardJob, GenerateJob
from explainserve.vocabulary import Encoded, InferenceMode


def explain_causal(
    model: ServedModel,
    params: ExplainParams,
    request_limits: Limits,
    started: float,
    on_progress: Callable[[int, int], None] | None,
    is_cancelled: Callable[[], bool] | None,
) -> Iterator[Explanation]:
    """Explain for a causal LM: each input is a prompt, explained for its continuation
    (given, or generated first on the model's worker); see `explain.causal`."""
    limits = request_limits.causal
    tokenizer = model.tokenizer
    for i, spec in enumerate(params.inputs):
        if spec.targets:
            raise InvalidArgument(
                f"input {i} has class targets, but model '{model.name}' is a causal LM: give "
                "a continuation (text or token ids) or none to explain the generated one",
                field=f"inputs[{i}].targets",
            )
    to_generate = [i for i, spec in enumerate(params.inputs) if not spec.has_continuation]
    options = None
    if to_generate or params.generation is not None:
        options = causal.generation_options(params.generation or Generation(), params.seed, limits)
    prompts = []
    for i, spec in enumerate(params.inputs):
        prompt = model.encode(spec, i)
        if spec.text is not None:
            prompt = causal.strip_end_of_sequence(tokenizer, prompt)
        prompts.append(prompt)
    continuations: dict[int, Encoded] = {}
    for i, spec in enumerate(params.inputs):
        if spec.has_continuation:
            continuations[i] = causal.encode_continuation(tokenizer, spec, i, limits)
            n = prompts[i].n_tokens + continuations[i].n_tokens
            if n > model.max_length:
                raise InvalidArgument(
                    f"input {i}'s prompt and continuation have {n} tokens, more than the "
                    f"model's maximum of {model.max_length}",
                    field=f"inputs[{i}].continuation",
                )
        else:
            assert options is not None
            n = prompts[i].n_tokens + options.max_new_tokens
            if n > model.max_length:
                raise InvalidArgument(
                    f"input {i}'s prompt ({prompts[i].n_tokens} tokens) and "
                    f"generation.max_new_tokens ({options.max_new_tokens}) exceed the "
                    f"model's maximum of {model.max_length} tokens",
                    field="generation.max_new_tokens",
                )
    planned = len(to_generate) * (options.max_new_tokens if options else 0)
    progress = Progress(planned + len(prompts), on_progress)
    if to_generate:
        assert options is not None
        stop_ids = _stop_ids(model)
        jobs = {
            i: GenerateJob(
                prompt=prompts[i].ids,
                options=options,
                stop_ids=stop_ids,
                on_rows_done=progress.add,
                is_cancelled=is_cancelled,
            )
            for i in to_generate
        }
        model.worker.submit_all(jobs.values())
        for i, job in jobs.items():
            tokens = job.future.result()
            if not tokens:
                raise InvalidArgument(
                    f"the model ended input {i}'s continuation at once (end of sequence): "
                    "there is nothing to explain; give a continuation",
                    field=f"inputs[{i}]",
                )
            continuations[i] = causal.generated_continuation(tokenizer, tokens)
    items = []
    layouts = []
    rows = []
    for i, prompt in enumerate(prompts):
        cont = continuations[i]
        full = causal.join(prompt, cont)
        layout = causal.causal_units(
            prompt, cont, full, params.granularity, tokenizer, params.target_context
        )
        if layout.inputs.n_units == 0 or layout.targets.n_units == 0:
            what = "prompt" if layout.inputs.n_units == 0 else "continuation"
            raise InvalidArgument(
                f"input {i}'s {what} has no {params.granularity} units to explain",
                field=f"inputs[{i}]",
            )
        rows.append(
            count_rows(
                params.method,
                i,
                layout.inputs.n_units,
                cont.n_tokens,
                request_limits.max_rows_per_input,
                "shorten the continuation or use a coarser granularity",
            )
        )
        layouts.append(layout)
        p = prompt.n_tokens
        items.append(
            Item(
                index=i,
                encoded=full,
                units=layout.inputs,
                targets=cont.ids,
                positions=np.arange(p - 1, p - 1 + cont.n_tokens, dtype=np.int64),
            )
        )
    progress.extend(sum(rows))
    base_jobs = [_teacher_forced(item, params.mode, progress, is_cancelled) for item in items]
    model.worker.submit_all(base_jobs)
    ctx = RunContext(model, params.mode, params.aggregation, params.seed, progress, is_cancelled)
    runs = start_runs(model, items, params.method, ctx)
    for i, token_scores in finished(runs):
        item = items[i]
        cont = continuations[i]
        yield Explanation(
            input_index=i,
            units=item.units,
            target_indices=[],
            target_labels=[],
            scores=causal.to_target_units(token_scores, layouts[i], params.aggregation),
            logits=np.zeros(0, dtype=np.float32),
            token_ids=item.encoded.ids,
            text=item.encoded.text,
            forward_passes=runs[i].n_rows + 1,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            target_units=layouts[i].targets,
            valid=layouts[i].valid,
            continuation=cont.text,
            continuation_ids=cont.ids,
            generated=i in to_generate,
            prompt_tokens=prompts[i].n_tokens,
            continuation_scores=base_jobs[i].future.result()[0].astype(np.float32),
        )


def _stop_ids(model: ServedModel) -> frozenset[int]:
    """Token ids that end a generation: the tokenizer's and the generation config's EOS."""
    ids = set()
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    config = getattr(model.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(e) for e in eos)
    return frozenset(ids)


def _teacher_forced(
    item: Item,
    mode: InferenceMode,
    progress: Progress,
    is_cancelled: Callable[[], bool] | None,
) -> ForwardJob:
    """The unperturbed prompt + continuation: the score of every continuation token. Its row is
    its own `reference`: in a batch with the method's rows on the same reference, it is scored
    from the pass that computes their cached prefix (`scheduling.prefix`), not run again."""
    return ForwardJob(
        ids=item.encoded.ids[None, :],
        attention=item.encoded.attention,
        targets=item.targets,
        mode=mode,
        positions=item.positions,
        reference=item.encoded.ids,
        on_rows_done=progress.add,
        is_cancelled=is_cancelled,
    )
