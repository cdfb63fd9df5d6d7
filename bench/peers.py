"""ExplainServe against its peers on the same model, texts, dtype and threads: Interpreto 0.5.2
in-process (batch sizes 4, 16, 64 and 256) and Captum where it has the method.

ExplainServe runs in this process as a real gRPC server on loopback (the project's venv); the
peers run in a worker process of their own venv (`.venv-peers`, made and installed by this
script with `uv`: `interpreto==0.5.2`, `captum==0.9.0`, and the same torch and transformers
versions as the project's venv, so both sides run the same kernels and the same model code). The
two environments never mix: the parent talks to the worker over JSON lines on a pipe, and the
worker times its own calls (so the pipe is not counted against the peers).

    .venv/bin/python bench/peers.py [--quick] [--repeats N] [--threads N] [--json FILE]

Where no venv can be made (the GPU machine has no package registry), `--peers-python PYTHON
--peers-path DIR` runs the worker with that python and DIR first on its PYTHONPATH (bench/gpu.sh:
the device's python3, which has torch and transformers, and the wheels of bench/peers-wheels.txt
installed into DIR; no Captum there, so `--no-captum`).

Every side loads the embedded default model (`minilm-sentiment`: MiniLM-L6 with a sentiment
head) from the same directory, in float32, with `torch.set_num_threads(--threads)` in both
processes, and explains the same texts at WORD granularity, the predicted class as target, with
logits and mean aggregation. ExplainServe is measured as one request holding every text, and as
8 concurrent clients (own channels) each sending one request with an eighth of the texts; both
at the default token budget (8192 rows x padded tokens, 4096 for gradient rows) and at 2048 (both
kinds). Each configuration is warmed up once on a few texts (excluded); then the repeats are
interleaved (every configuration of a method once per repeat, in an order rotated each repeat)
and the medians and min-max reported, with the speed-up ratios measured in the same run.

Parameter mapping (`cases`, `explainserve_request`, `interpreto_call`, `captum_call`; every
side runs the same number of model rows per text, which the script checks by counting them):

- Occlusion: one row per word replaced by the mask token, plus the unperturbed row; Captum's
  analogue is `FeatureAblation` with one feature per word (Captum's `Occlusion` slides windows).
- LIME (n): n rows of Bernoulli(0.5) word masks, exponential kernel on the cosine distance.
  ExplainServe's row 0 is the unperturbed input (as in the LIME paper) and its surrogate is a
  ridge regression (alpha 1); Interpreto's n rows are all random and its surrogate a weighted
  least-squares fit; Captum is given `SkLearnRidge(alpha=1)`.
- KernelSHAP (n): n coalitions (all 2^words when that is fewer), every side.
- Sobol (k): k * (words + 2) rows (the A, B and the words' mixed matrices), first-order indices,
  scrambled Sobol sequence. Captum has no Sobol attribution.
- Saliency: one forward + backward per text; per-token score = mean over the hidden size of
  |gradient| (ExplainServe's `mean_abs` reduction; Interpreto with `input_x_gradient=False`,
  whose reduction is that one; Captum `Saliency` then the same mean).
- Integrated Gradients (s): s rows on the straight line from a zero baseline (Interpreto: 1e-6,
  its guard against a zero baseline) to the input embeddings, trapezoid rule, mean_abs
  reduction. Interpreto multiplies each step's gradient by that step's interpolated embeddings
  (not by input - baseline); the work is the same.
- SmoothGrad (s): s rows of Gaussian noise (std 0.1) on the embeddings, mean of |gradient|
  (Interpreto with `input_x_gradient=False`; Captum `NoiseTunnel(Saliency)`).

Captum explains one text at a time (its API takes one input of fixed length, or same-length
batches); its batch argument (`perturbations_per_eval`, `internal_batch_size`,
`nt_samples_batch_size`) is set to 64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

INTERPRETO = "interpreto==0.5.2"
CAPTUM = "captum==0.9.0"
INTERPRETO_BATCH_SIZES = (4, 16, 64, 256)
INTERPRETO_DEFAULT_BATCH_SIZE = 4
CAPTUM_BATCH_SIZE = 64
CLIENTS = 8
DEFAULT_BUDGETS = (8192, 4096)
SMALL_BUDGET = 2048


@dataclass(frozen=True)
class Case:
    """One method with its matched parameters: `n` is LIME/KernelSHAP's perturbations, Sobol's
    points, IG's steps or SmoothGrad's samples (unused by Occlusion and Saliency)."""

    method: str
    n: int = 0

    @property
    def gradient(self) -> bool:
        """True for the gradient methods (forward + backward rows)."""
        return self.method in ("saliency", "integrated_gradients", "smooth_grad")

    @property
    def label(self) -> str:
        """The method and its parameter, as the tables print it."""
        names = {
            "lime": "n",
            "kernel_shap": "n",
            "sobol": "k",
            "integrated_gradients": "steps",
            "smooth_grad": "samples",
        }
        return (
            f"{self.method} {names[self.method]}={self.n}" if self.method in names else self.method
        )


def cases(quick: bool) -> list[Case]:
    """The methods compared, with smaller parameters for a smoke run."""
    n, k, s = (32, 4, 8) if quick else (64, 8, 16)
    return [
        Case("occlusion"),
        Case("lime", n),
        Case("kernel_shap", n),
        Case("sobol", k),
        Case("saliency"),
        Case("integrated_gradients", s),
        Case("smooth_grad", s),
    ]


def rows_per_text(case: Case, n_words: int) -> int:
    """Model rows Interpreto 0.5.2 runs for one text of `n_words` words (its perturbators' mask
    shapes), besides the one forward pass that finds the predicted class."""
    if case.method == "occlusion":
        return n_words + 1
    if case.method == "lime":
        return case.n
    if case.method == "kernel_shap":
        return min(case.n, 2**n_words)
    if case.method == "sobol":
        return case.n * (n_words + 2)
    if case.method == "saliency":
        return 1
    return case.n


def explainserve_request(case: Case) -> dict[str, Any]:
    """The ExplainRequest fields (besides model and inputs) matching `case`, as keyword
    arguments of `explain_pb2.ExplainRequest`."""
    from explainserve.v1 import explain_pb2 as pb

    mean_abs = pb.GRADIENT_REDUCTION_MEAN_ABS
    method: dict[str, Any] = {
        "occlusion": lambda: {"occlusion": pb.Occlusion()},
        "lime": lambda: {"lime": pb.Lime(n_perturbations=case.n, perturb_probability=0.5)},
        "kernel_shap": lambda: {"kernel_shap": pb.KernelShap(n_perturbations=case.n)},
        "sobol": lambda: {
            "sobol": pb.Sobol(
                n_points=case.n, order=pb.SOBOL_ORDER_FIRST, sampler=pb.SOBOL_SAMPLER_SOBOL
            )
        },
        "saliency": lambda: {"saliency": pb.Saliency(reduction=mean_abs)},
        "integrated_gradients": lambda: {
            "integrated_gradients": pb.IntegratedGradients(
                n_steps=case.n,
                baseline=pb.BASELINE_ZERO,
                rule=pb.INTEGRATION_RULE_RIEMANN_TRAPEZOID,
                reduction=mean_abs,
            )
        },
        "smooth_grad": lambda: {
            "smooth_grad": pb.SmoothGrad(n_samples=case.n, noise_std=0.1, reduction=mean_abs)
        },
    }[case.method]()
    return {
        **method,
        "granularity": pb.GRANULARITY_WORD,
        "aggregation": pb.AGGREGATION_MEAN,
        "inference_mode": pb.INFERENCE_MODE_LOGITS,
        "seed": 0,
    }


def interpreto_call(case: Case) -> tuple[str, dict[str, Any]]:
    """Interpreto 0.5.2's explainer class name and its keyword arguments (besides model,
    tokenizer, batch size, granularity and device) matching `case`."""
    return {
        "occlusion": ("Occlusion", {}),
        "lime": ("Lime", {"n_perturbations": case.n, "perturb_probability": 0.5}),
        "kernel_shap": ("KernelShap", {"n_perturbations": case.n}),
        "sobol": ("Sobol", {"n_token_perturbations": case.n}),
        "saliency": ("Saliency", {"input_x_gradient": False}),
        "integrated_gradients": (
            "IntegratedGradients",
            {"n_perturbations": case.n, "input_x_gradient": True},
        ),
        "smooth_grad": (
            "SmoothGrad",
            {"n_perturbations": case.n, "noise_std": 0.1, "input_x_gradient": False},
        ),
    }[case.method]


def captum_call(case: Case) -> str | None:
    """Captum's class for `case` (None: Captum has no such method)."""
    return {
        "occlusion": "FeatureAblation",
        "lime": "Lime",
        "kernel_shap": "KernelShap",
        "saliency": "Saliency",
        "integrated_gradients": "IntegratedGradients",
        "smooth_grad": "NoiseTunnel(Saliency)",
    }.get(case.method)


# ---------------------------------------------------------------------------------------------
# The peers' side: runs in .venv-peers, imports only torch, transformers, interpreto, captum.


class _PeerWorker:
    """Loads the model once; runs Interpreto or Captum on request; counts model rows."""

    def __init__(self, model_dir: str, threads: int, device: str) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=torch.float32
        ).to(self.device)
        self.model.eval()
        #: Per run: model rows and batches, padded and real tokens (the attention mask's ones),
        #: and seconds in the model's forward passes (backward passes not included).
        self.counts = dict.fromkeys(("rows", "batches", "padded", "real", "model_seconds"), 0.0)
        self._started = 0.0
        self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.model.register_forward_hook(self._stop)
        self._explainers: dict[tuple[str, int], Any] = {}

    def _count(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        mask = kwargs.get("attention_mask")
        self.counts["rows"] += int(x.shape[0])
        self.counts["batches"] += 1
        self.counts["padded"] += int(x.shape[0] * x.shape[1])
        self.counts["real"] += int(mask.sum()) if mask is not None else int(x.shape[0] * x.shape[1])
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        self._started = time.perf_counter()

    def _stop(self, *_: Any) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        self.counts["model_seconds"] += time.perf_counter() - self._started

    def info(self) -> dict[str, Any]:
        """Versions and settings of this side."""
        from importlib.metadata import version

        import torch

        return {
            "torch": torch.__version__,
            "transformers": version("transformers"),
            "interpreto": version("interpreto"),
            "captum": _version_or_none("captum"),
            "threads": torch.get_num_threads(),
            "dtype": str(next(self.model.parameters()).dtype),
        }

    def run(self, tool: str, case: Case, batch_size: int, texts: list[str]) -> dict[str, Any]:
        """Explains `texts`; the seconds it took and the model's counts (`counts`)."""
        self.counts = dict.fromkeys(self.counts, 0.0)
        t0 = time.perf_counter()
        if tool == "interpreto":
            self._interpreto(case, batch_size)(texts)
        else:
            for text in texts:
                self._captum(case, batch_size, text)
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - t0, **self.counts}

    def _interpreto(self, case: Case, batch_size: int) -> Any:
        import interpreto

        key = (case.label, batch_size)
        if key not in self._explainers:
            name, kwargs = interpreto_call(case)
            self._explainers[key] = getattr(interpreto, name)(
                self.model,
                self.tokenizer,
                batch_size=batch_size,
                granularity=interpreto.Granularity.WORD,
                device=self.device,
                **kwargs,
            )
        return self._explainers[key]

    def _captum(self, case: Case, batch_size: int, text: str) -> Any:
        import captum.attr as ca

        torch = self.torch
        enc = self.tokenizer(text, return_tensors="pt").to(self.device)
        ids = enc["input_ids"]
        words = [w for w in enc.word_ids()[1:-1]]
        n_words = max(w for w in words if w is not None) + 1
        with torch.no_grad():
            target = int(self.model(input_ids=ids).logits[0].argmax())
        if not case.gradient:
            # Captum perturbs the tokens between [CLS] and [SEP]: those two are put back by
            # the forward function, as they are never units.
            inner = ids[:, 1:-1]
            cls, sep = ids[:, :1], ids[:, -1:]
            mask = torch.tensor([words], device=self.device)

            def forward(x: Any) -> Any:
                b = x.shape[0]
                full = torch.cat([cls.expand(b, 1), x, sep.expand(b, 1)], dim=1)
                with torch.no_grad():
                    return self.model(input_ids=full).logits

            common = {
                "baselines": self.tokenizer.mask_token_id,
                "target": target,
                "feature_mask": mask,
                "perturbations_per_eval": batch_size,
            }
            if case.method == "occlusion":
                return ca.FeatureAblation(forward).attribute(inner, **common)
            if case.method == "lime":
                from captum._utils.models.linear_model import SkLearnRidge

                lime = ca.Lime(forward, interpretable_model=SkLearnRidge(alpha=1.0))
                return lime.attribute(inner, n_samples=case.n, **common)
            return ca.KernelShap(forward).attribute(inner, n_samples=case.n, **common)
        embeds = self.model.get_input_embeddings()(ids).detach()

        def forward_embeds(e: Any) -> Any:
            return self.model(inputs_embeds=e).logits

        if case.method == "saliency":
            grads = ca.Saliency(forward_embeds).attribute(embeds, target=target, abs=True)
        elif case.method == "integrated_gradients":
            grads = ca.IntegratedGradients(forward_embeds).attribute(
                embeds,
                baselines=torch.zeros_like(embeds),
                target=target,
                n_steps=case.n,
                method="riemann_trapezoid",
                internal_batch_size=batch_size,
            )
        else:
            grads = ca.NoiseTunnel(ca.Saliency(forward_embeds)).attribute(
                embeds,
                nt_type="smoothgrad",
                nt_samples=case.n,
                nt_samples_batch_size=batch_size,
                stdevs=0.1,
                target=target,
            )
        per_token = grads.abs().mean(dim=-1)[0, 1:-1]
        index = torch.tensor(words, device=self.device)
        sums = torch.zeros(n_words, device=self.device).index_add_(0, index, per_token)
        counts = torch.zeros(n_words, device=self.device).index_add_(
            0, index, torch.ones_like(per_token)
        )
        return sums / counts


def _version_or_none(name: str) -> str | None:
    """`name`'s installed version; None where it is not installed (Captum, which
    bench/peers-wheels.txt leaves out)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def peer_main(model_dir: str, threads: int, device: str) -> int:
    """The worker loop: one JSON request per line on stdin, one JSON answer per line."""
    # Libraries may print; only answers go to the real stdout.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    worker = _PeerWorker(model_dir, threads, device)
    answers.write(json.dumps(worker.info()) + "\n")
    for line in sys.stdin:
        ask = json.loads(line)
        reply = worker.run(ask["tool"], Case(**ask["case"]), ask["batch_size"], ask["texts"])
        answers.write(json.dumps(reply) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: the project's venv, the ExplainServe side, the tables.


def ensure_peers_venv(venv: Path) -> Path:
    """Creates `venv` with the peers and this venv's torch and transformers versions (once: a
    stamp file names what was installed); returns its python."""
    from importlib.metadata import version

    wanted = [
        INTERPRETO,
        CAPTUM,
        f"torch=={version('torch')}",
        f"transformers=={version('transformers')}",
    ]
    python = venv / "bin" / "python"
    stamp = venv / "peers-installed.txt"
    if stamp.exists() and stamp.read_text().split() == wanted:
        return python
    # The project's venv has uv (the Makefile installs it): fast, and it reuses the wheel cache.
    uv = Path(sys.executable).with_name("uv")
    print(f"# installing {' '.join(wanted)} into {venv}", file=sys.stderr, flush=True)
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", str(python), *wanted], check=True
    )
    stamp.write_text("\n".join(wanted) + "\n")
    return python


class Peers:
    """The worker process in the peers' venv."""

    def __init__(
        self,
        python: Path,
        model_dir: Path,
        threads: int,
        device: str,
        path: Path | None = None,
    ) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if path is not None:
            # The peers' packages first, so that they shadow the python's own versions
            # (jaxtyping 0.2.36 over the GPU image's 0.3.11).
            env["PYTHONPATH"] = os.pathsep.join(
                [str(path.resolve())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            )
        self._proc = subprocess.Popen(
            [
                str(python),
                __file__,
                "--peer-worker",
                "--model-dir",
                str(model_dir),
                "--threads",
                str(threads),
                "--device",
                device,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the peers' worker exited ({self._proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, tool: str, case: Case, batch_size: int, texts: list[str]) -> dict[str, float]:
        """Seconds of one explanation of `texts` by the peer `tool`, and its model's counts
        (`_PeerWorker.counts`)."""
        assert self._proc.stdin is not None
        ask = {"tool": tool, "case": asdict(case), "batch_size": batch_size, "texts": texts}
        self._proc.stdin.write(json.dumps(ask) + "\n")
        self._proc.stdin.flush()
        return {k: float(v) for k, v in self._read().items()}

    def close(self) -> None:
        """Ends the worker (end of its input)."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=60)


def texts(n: int) -> list[str]:
    """`n` texts: half bench/explain.py's 8 review sentences (15-20 words) as far as they go, the
    rest the default model's first held-out sentences (8-12 words); 32 = 8 + 24."""
    import importlib.util

    from explainserve.models.default_model import HELDOUT_FILE, read_dataset

    spec = importlib.util.spec_from_file_location(
        "bench_explain", Path(__file__).with_name("explain.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    long: list[str] = list(module.TEXTS)
    short = list(read_dataset(HELDOUT_FILE).texts)
    head = long[: min(len(long), n // 2)]
    return head + short[: n - len(head)]


@dataclass(frozen=True)
class Config:
    """One measured configuration: `tool` is interpreto, captum or explainserve."""

    tool: str
    batch_size: int = 0
    token_budget: int = 0
    clients: int = 1
    #: ExplainServe without the scheduler's time bound (`WorkerOptions.max_batch_ms = 0`).
    untimed: bool = False
    #: ExplainServe with the final layer at every position (`WorkerOptions.read_position_only`
    #: off), to measure in the same run what running it at the head's position saves.
    full_layer: bool = False

    @property
    def label(self) -> str:
        """How the tables name it."""
        if self.tool == "interpreto":
            return f"Interpreto bs {self.batch_size}"
        if self.tool == "captum":
            return f"Captum (per text, batch {self.batch_size})"
        shape = "1 request" if self.clients == 1 else f"{self.clients} clients"
        bound = ", no time bound" if self.untimed else ""
        layer = ", full final layer" if self.full_layer else ""
        return f"ExplainServe {shape}, budget {self.token_budget}{bound}{layer}"

    @property
    def model(self) -> str:
        """ExplainServe's model name for it (`ExplainServeSide`)."""
        return (
            f"b{self.token_budget}"
            + ("-untimed" if self.untimed else "")
            + ("-full-layer" if self.full_layer else "")
        )


class ExplainServeSide:
    """A live server on loopback serving the default model twice: at the default token budgets
    and at `SMALL_BUDGET` (names `b8192`, `b2048`), same weights, float32; with `untimed`, a
    third time at the default budgets without the time bound (`b8192-untimed`); with
    `full_layer`, a time at the default budgets with the full final layer
    (`b8192-full-layer`)."""

    def __init__(
        self, model_dir: Path, device: str, untimed: bool, calibrate: bool, full_layer: bool
    ) -> None:
        import grpc

        from explainserve.cli import warm_up
        from explainserve.explain.service import Explainer, Limits
        from explainserve.grpc.server import ServerOptions, start
        from explainserve.models.loading import ModelConfig, load_model
        from explainserve.models.registry import Registry
        from explainserve.scheduling.options import WorkerOptions
        from explainserve.v1 import explain_pb2_grpc

        self.registry = Registry()
        # max_batch_ms None and calibrate: the time bound and the calibrated batch sizes
        # `explainserve serve` uses (the calibration runs at warm-up, below).
        served: dict[str, Any] = {"max_batch_ms": None, "calibrate": calibrate}
        default = {
            **served,
            "token_budget": DEFAULT_BUDGETS[0],
            "gradient_token_budget": DEFAULT_BUDGETS[1],
        }
        small = {**served, "token_budget": SMALL_BUDGET, "gradient_token_budget": SMALL_BUDGET}
        # Named as the configurations measured name them (`Config.model`).
        configs = [
            (Config("explainserve", token_budget=DEFAULT_BUDGETS[0]), default),
            (Config("explainserve", token_budget=SMALL_BUDGET), small),
        ]
        if untimed:
            untimed_config = Config("explainserve", token_budget=DEFAULT_BUDGETS[0], untimed=True)
            configs.append((untimed_config, {**default, "max_batch_ms": 0.0}))
        if full_layer:
            full = Config("explainserve", token_budget=DEFAULT_BUDGETS[0], full_layer=True)
            configs.append((full, {**default, "read_position_only": False}))
        models: dict[str, dict[str, Any]] = {c.model: options for c, options in configs}
        for name, options in models.items():
            self.registry.add(
                load_model(
                    ModelConfig(
                        name,
                        model_dir,
                        device=device,
                        dtype="float32",
                        worker=WorkerOptions(**options),
                    )
                )
            )
        # The warm-up `explainserve serve` runs, its calibration of batch sizes included.
        explainer = Explainer(self.registry, Limits())
        #: Per model, what the warm-up calibration chose.
        self.calibrations: dict[str, str] = {}
        for name in models:
            warm_up(explainer, name)
            done = self.registry.get(name).worker.calibration
            if done is not None:
                self.calibrations[name] = (
                    f"{done.batches} batches in {done.seconds:.1f} s, caps {done.caps}"
                )
        self.running = start(ServerOptions(port=0), explainer)
        target = f"127.0.0.1:{self.running.port}"
        self.channels = [grpc.insecure_channel(target) for _ in range(CLIENTS)]
        self.stubs = [
            explain_pb2_grpc.ExplainServiceStub(c)  # type: ignore[no-untyped-call]
            for c in self.channels
        ]

    def run(self, config: Config, case: Case, texts: list[str]) -> dict[str, float]:
        """Seconds (end to end, at the clients) and what the worker ran: model rows, batches,
        padded and real tokens, seconds in batches (forward and backward passes)."""
        from explainserve.v1 import explain_pb2 as pb

        name = config.model
        fields = explainserve_request(case)
        share = -(-len(texts) // config.clients)
        requests = [
            pb.ExplainRequest(model=name, inputs=[pb.Input(text=t) for t in part], **fields)
            for part in (texts[i : i + share] for i in range(0, len(texts), share))
        ]
        stats = self.registry.get(name).worker.stats
        fields = ("rows", "batches", "padded_tokens", "real_tokens", "busy_seconds")
        before = [getattr(stats, f) for f in fields]
        errors: list[BaseException] = []
        start = threading.Barrier(len(requests) + 1)

        def client(stub: Any, request: Any) -> None:
            start.wait()
            try:
                stub.Explain(request, timeout=3600)
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        threads = [
            threading.Thread(target=client, args=(self.stubs[i], r)) for i, r in enumerate(requests)
        ]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise errors[0]
        rows, batches, padded, real, busy = (
            getattr(stats, f) - b for f, b in zip(fields, before, strict=True)
        )
        return {
            "seconds": seconds,
            "rows": rows,
            "batches": batches,
            "padded": padded,
            "real": real,
            "model_seconds": busy,
        }

    def close(self) -> None:
        """Stops the server and the models' workers."""
        for c in self.channels:
            c.close()
        self.running.stop(grace=None)
        self.registry.close()


def model_sweep(model_dir: Path, the_texts: list[str], repeats: int) -> str:
    """The bare model's rows/s on the Occlusion rows of `the_texts` (every word replaced by the
    mask token in turn, plus the unperturbed rows), sorted by length, cut into batches of a fixed
    row count or of a token budget (rows x padded length, as the worker cuts them), and each
    text's rows alone by a fixed row count: what the batch shape alone costs on this machine,
    without any explainer. Interleaved repeats."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    per_text: list[list[list[int]]] = []
    for text in the_texts:
        enc = tok(text)
        ids, words = enc["input_ids"], enc.word_ids()
        per_text.append([list(ids)])
        for w in sorted({w for w in words if w is not None}):
            per_text[-1].append(
                [tok.mask_token_id if wi == w else t for t, wi in zip(ids, words, strict=True)]
            )
    rows = sorted((r for text_rows in per_text for r in text_rows), key=len)

    def cut(limit: int, by_tokens: bool, these: list[list[int]]) -> list[list[list[int]]]:
        batches: list[list[list[int]]] = [[]]
        for r in these:
            size = len(r) * (len(batches[-1]) + 1) if by_tokens else len(batches[-1]) + 1
            if batches[-1] and size > limit:
                batches.append([])
            batches[-1].append(r)
        return batches

    shapes = {f"{b} rows": cut(b, False, rows) for b in INTERPRETO_BATCH_SIZES}
    # In the texts' order, `b` at a time (Interpreto's batches: its padded / real tokens match),
    # and each text's rows alone (no padding).
    in_order = [r for text_rows in per_text for r in text_rows]
    shapes |= {f"{b} rows, texts in order": cut(b, False, in_order) for b in (16, 64)}
    shapes |= {
        f"{b} rows of one text": [x for t in per_text for x in cut(b, False, t)] for b in (16, 64)
    }
    # The sizes the calibration chooses on this CPU (256-1024 tokens), and the budgets.
    shapes |= {
        f"budget {t} tokens": cut(t, True, rows)
        for t in (256, 512, 1024, SMALL_BUDGET, DEFAULT_BUDGETS[0])
    }

    def width(b: list[list[int]]) -> int:
        return max(len(r) for r in b)

    tensors = {
        name: [
            (
                torch.tensor([r + [tok.pad_token_id] * (width(b) - len(r)) for r in b]),
                torch.tensor([[1] * len(r) + [0] * (width(b) - len(r)) for r in b]),
            )
            for b in batches
        ]
        for name, batches in shapes.items()
    }
    times: dict[str, list[float]] = {name: [] for name in tensors}
    with torch.inference_mode():
        for rep in range(repeats + 1):
            for name, batches in tensors.items():
                t0 = time.perf_counter()
                for ids, att in batches:
                    model(input_ids=ids, attention_mask=att)
                if rep:  # the first round is the warm-up
                    times[name].append(time.perf_counter() - t0)
    lines = [
        f"Bare model, {len(rows)} Occlusion rows of {len(the_texts)} texts, sorted by length:",
        "",
        "| batches of | batches | mean rows / batch | padded / real tokens | rows/s (median) "
        "| min-max | s for these rows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    real = sum(len(r) for r in rows)
    for name, batches in shapes.items():
        rates = [len(rows) / t for t in times[name]]
        padded = sum(len(b) * max(len(r) for r in b) for b in batches)
        lines.append(
            f"| {name} | {len(batches)} | {len(rows) / len(batches):.0f} | {padded / real:.3f} | "
            f"{statistics.median(rates):.0f} | {min(rates):.0f}-{max(rates):.0f} | "
            f"{statistics.median(times[name]):.3f} |"
        )
    return "\n".join(lines)


def configs(
    sizes: Sequence[int], captum: bool = True, untimed: bool = False, full_layer: bool = False
) -> list[Config]:
    """Every configuration measured for a method (Captum is dropped where it has none)."""
    out = [Config("interpreto", batch_size=b) for b in sizes]
    if captum:
        out.append(Config("captum", batch_size=CAPTUM_BATCH_SIZE))
    for budget in (DEFAULT_BUDGETS[0], SMALL_BUDGET):
        for clients in (1, CLIENTS):
            out.append(Config("explainserve", token_budget=budget, clients=clients))
    if untimed:
        out.append(Config("explainserve", token_budget=DEFAULT_BUDGETS[0], untimed=True))
    if full_layer:
        out.append(Config("explainserve", token_budget=DEFAULT_BUDGETS[0], full_layer=True))
    return out


def measure(
    peers: Peers,
    server: ExplainServeSide,
    all_cases: Sequence[Case],
    all_configs: Sequence[Config],
    the_texts: list[str],
    repeats: int,
    warmup_texts: int,
    save: Callable[[dict[str, dict[str, dict[str, Any]]]], None],
) -> dict[str, dict[str, dict[str, Any]]]:
    """{method label: {config label: {"times": [s/text per repeat], "rows": rows per run}}}."""

    def runner(config: Config, case: Case) -> Callable[[list[str]], dict[str, float]]:
        if config.tool == "explainserve":
            return lambda t: server.run(config, case, t)
        return lambda t: peers.run(config.tool, case, config.batch_size, t)

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for case in all_cases:
        todo = [c for c in all_configs if c.tool != "captum" or captum_call(case)]
        per: dict[str, dict[str, Any]] = {
            c.label: {"times": [], "model": [], "rows": 0, "batches": 0, "padded": 0.0}
            for c in todo
        }
        for config in todo:
            runner(config, case)(the_texts[:warmup_texts])
        for rep in range(repeats):
            # Rotated each repeat, so no configuration always follows the same one.
            shift = rep % len(todo)
            for config in todo[shift:] + todo[:shift]:
                run = runner(config, case)(the_texts)
                r = per[config.label]
                r["times"].append(run["seconds"] / len(the_texts))
                r["model"].append(run["model_seconds"] / len(the_texts))
                r["rows"], r["batches"] = int(run["rows"]), int(run["batches"])
                r["padded"] = run["padded"] / max(run["real"], 1)
            print(f"# {case.label}: repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
        results[case.label] = per
        save(results)
    return results


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _spread(times: list[float]) -> str:
    return f"{min(times):.4f}-{max(times):.4f}"


def report(results: dict[str, dict[str, dict[str, Any]]], n_texts: int) -> str:
    """The markdown tables: every configuration's s/text, then the ratios and the goal."""
    lines = [
        "| method | configuration | model rows / run | rows / batch | padded / real tokens "
        "| s/text (median) | min-max | rows/s | model s/text | model / total |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method, per in results.items():
        for label, r in per.items():
            med = statistics.median(r["times"])
            batches = r.get("batches", 0)
            per_batch = f"{r['rows'] / batches:.0f}" if batches else "-"
            padded = f"{r['padded']:.3f}" if r.get("padded") else "-"
            model = "- | -"
            if r.get("model"):
                share = [m / t for m, t in zip(r["model"], r["times"], strict=True)]
                model = f"{statistics.median(r['model']):.4f} | {statistics.median(share):.2f}"
            lines.append(
                f"| {method} | {label} | {r['rows']} | {per_batch} | {padded} | {med:.4f} | "
                f"{_spread(r['times'])} | {r['rows'] / (med * n_texts):.0f} | {model} |"
            )
    lines += [
        "",
        "Model s/text: seconds in the model per text; the peers' forward passes only (timed by "
        "hooks on the model: a gradient method's backward passes are not counted), "
        "ExplainServe's worker batches (forward and backward passes, inputs' copies).",
    ]
    lines += [
        "",
        "Speed-up = Interpreto s/text / ExplainServe s/text (ratio of medians; in brackets the "
        "min-max of the same ratio within each repeat). Goal: >= 1.1x Interpreto's best batch "
        "size for perturbation methods, >= 1.0x for gradient methods.",
        "",
        "| method | Interpreto best | ExplainServe | s/text | vs best | vs bs 4 (default) | goal |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for method, per in results.items():
        interp = {k: v for k, v in per.items() if k.startswith("Interpreto")}
        best = min(interp, key=lambda k: statistics.median(interp[k]["times"]))
        default = f"Interpreto bs {INTERPRETO_DEFAULT_BATCH_SIZE}"
        goal = (
            1.0 if method.split()[0] in ("saliency", "integrated_gradients", "smooth_grad") else 1.1
        )
        for label, r in per.items():
            if not label.startswith("ExplainServe"):
                continue
            es = statistics.median(r["times"])
            ratio = statistics.median(interp[best]["times"]) / es
            paired = [b / e for b, e in zip(interp[best]["times"], r["times"], strict=True)]
            vs_default = (
                f"{statistics.median(interp[default]['times']) / es:.2f}x"
                if default in interp
                else "-"
            )
            lines.append(
                f"| {method} | {best.removeprefix('Interpreto ')} | "
                f"{label.removeprefix('ExplainServe ')} | {es:.4f} | {ratio:.2f}x "
                f"({min(paired):.2f}-{max(paired):.2f}) | {vs_default} | "
                f"{'met' if ratio >= goal else 'NOT met'} (>= {goal}x) |"
            )
    return "\n".join(lines)


def main() -> int:
    """Runs the comparison and prints markdown tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 texts, small parameters, 1 repeat, bs 4 and 64"
    )
    parser.add_argument("--repeats", type=int, default=0, help="default 3 (1 with --quick)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on both sides (default 1: see RESULTS.md, 2 threads on a "
        "shared 2-core machine are 2-3x slower whenever another process is busy)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-dir", type=Path, help="default: the embedded default model")
    parser.add_argument("--peers-venv", type=Path, default=Path(".venv-peers"))
    parser.add_argument(
        "--peers-python",
        type=Path,
        help="run the peers' worker with this python instead of making --peers-venv "
        "(with --peers-path: bench/gpu.sh on a machine without a package registry)",
    )
    parser.add_argument(
        "--peers-path",
        type=Path,
        help="a directory put first on the PYTHONPATH of the peers' worker (the packages "
        "bench/peers-wheels.txt names, installed with pip --target)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32"],
        default="float32",
        help="every side runs in float32 (accepted for bench/gpu.sh, which passes a dtype to "
        "every bench)",
    )
    parser.add_argument("--n-texts", type=int, help="texts explained (default 32, 8 with --quick)")
    parser.add_argument(
        "--small",
        action="store_true",
        help="--quick's method parameters (LIME/KernelSHAP n=32, "
        "Sobol k=4, IG/SmoothGrad 8), with the full batch sizes and repeats",
    )
    parser.add_argument(
        "--batch-sizes", help="Interpreto's batch sizes, e.g. 4,16,64 (default 4,16,64,256)"
    )
    parser.add_argument("--no-captum", action="store_true", help="leave Captum out")
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="ExplainServe without the warm-up calibration of batch sizes (on in `serve`)",
    )
    parser.add_argument(
        "--untimed",
        action="store_true",
        help="also ExplainServe (1 request, budget 8192) without the scheduler's time bound",
    )
    parser.add_argument(
        "--full-final-layer",
        action="store_true",
        help="also ExplainServe (1 request, budget 8192) with the final layer at every "
        "position (--no-read-position-only)",
    )
    parser.add_argument(
        "--model-sweep", action="store_true", help="only the bare model's rows/s by batch shape"
    )
    parser.add_argument("--methods", help="comma-separated subset, e.g. occlusion,lime")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    parser.add_argument(
        "--report",
        type=Path,
        help="only print the tables of a --json file (a finished run's, "
        "or the methods a stopped run had finished)",
    )
    parser.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker:
        return peer_main(str(args.model_dir), args.threads, args.device)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(saved["header"], "\n")
        print(report(saved["results"], saved["n_texts"]))
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    if args.model_dir is None:
        from explainserve.models.default_model import default_model_dir

        args.model_dir = default_model_dir()
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = (
        [int(b) for b in args.batch_sizes.split(",")]
        if args.batch_sizes
        else ((4, 64) if args.quick else INTERPRETO_BATCH_SIZES)
    )
    the_texts = texts(args.n_texts or (8 if args.quick else 32))
    all_cases = cases(args.quick or args.small)
    if args.methods:
        wanted = set(args.methods.split(","))
        all_cases = [c for c in all_cases if c.method in wanted]
    if args.model_sweep:
        print(
            f"# bench/peers.py --model-sweep, {args.threads} threads, load average {_load()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        )
        print(model_sweep(args.model_dir, the_texts, repeats))
        return 0
    python = args.peers_python or ensure_peers_venv(args.peers_venv)
    peers = Peers(python, args.model_dir, args.threads, args.device, args.peers_path)
    server = ExplainServeSide(
        args.model_dir, args.device, args.untimed, not args.no_calibrate, args.full_final_layer
    )
    from importlib.metadata import version

    # The server's worker threads must run with the same intra-op threads as the peers.
    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    header = (
        f"# bench/peers.py on {platform.processor() or platform.machine()}, {os.cpu_count()} cpus,"
        f" device {args.device}; ExplainServe: torch {torch.__version__}, transformers "
        f"{version('transformers')}, {seen[0]} threads (worker threads); peers: "
        f"{json.dumps(peers.info)}; {len(the_texts)} texts, WORD granularity, {repeats} "
        f"interleaved repeats; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load "
        f"average {_load()}; calibration: {server.calibrations or 'off'}"
    )
    print(header, flush=True)

    def save(results: dict[str, dict[str, dict[str, Any]]]) -> None:
        if args.json:
            done = {"header": header, "n_texts": len(the_texts), "results": results}
            args.json.write_text(json.dumps(done, indent=1))

    try:
        results = measure(
            peers,
            server,
            all_cases,
            configs(
                sizes,
                captum=not args.no_captum,
                untimed=args.untimed,
                full_layer=args.full_final_layer,
            ),
            the_texts,
            repeats,
            warmup_texts=4,
            save=save,
        )
    finally:
        peers.close()
        server.close()
    print()
    print(report(results, len(the_texts)), flush=True)
    print(f"\n# load average at the end: {_load()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
