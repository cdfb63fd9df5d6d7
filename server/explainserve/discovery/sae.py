"""Sparse autoencoders trained in torch over an activation store's shards (out of core: one
shard in memory at a time), seeded and reproducible.

Written here rather than taken from Overcomplete (whose SAEs Interpreto vendors) because its
training loop takes an in-memory DataLoader and does not stream a store of shards; the models
are Overcomplete's, so their files mean the same: a linear encoder with a bias on the
activations minus a learnt pre-bias (the decoder's bias, as in Anthropic's and OpenAI's SAEs),
codes ReLU(pre) (L1 penalty), the top k of ReLU(pre) (TopK), or ReLU(pre) where it reaches a
learnt per-concept threshold (JumpReLU, with the rectangle-kernel pseudo-gradient and an L0
penalty, as in Rajamanoharan et al. 2024), and a dictionary whose rows are kept at unit norm.
The reconstruction loss is the mean squared error divided by the activations' variance, so the
penalties' weights do not depend on the activations' scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from explainserve.concepts.sets import Encoder
from explainserve.discovery.base import FitOptions, Fitted, Rows


class _Jump(torch.autograd.Function):
    """H(a - θ): the step, with the rectangle kernel's pseudo-gradient for θ (and none for a,
    whose gradient flows through the ReLU it multiplies)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(a, theta)
        ctx.bandwidth = bandwidth
        return (a >= theta).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        a, theta = ctx.saved_tensors
        near = ((a - theta).abs() < ctx.bandwidth / 2).to(a.dtype)
        return None, (-grad * near / ctx.bandwidth).sum(dim=0), None


def train_sae(
    rows: Rows, features: int, kind: str, options: FitOptions, say: Callable[[str], None]
) -> Fitted:
    """A `kind` ("relu", "topk", "jumprelu") SAE of `options.concepts` concepts."""
    k = options.concepts
    top_k = options.top_k or max(k // 10, 1)
    if kind == "topk" and not 1 <= top_k <= k:
        raise ValueError(f"--top-k must be in 1..{k}")
    generator = torch.Generator().manual_seed(options.seed)
    first = next(rows())
    mean = torch.from_numpy(first.mean(axis=0))
    variance = float(first.var(axis=0).mean()) or 1.0
    dictionary = torch.randn((k, features), generator=generator)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    params = {
        "weight": torch.nn.Parameter(dictionary.clone()),
        "bias": torch.nn.Parameter(torch.zeros(k)),
        "dictionary": torch.nn.Parameter(dictionary),
        "pre_bias": torch.nn.Parameter(mean.clone()),
        # JumpReLU's thresholds, as logs (positive once exponentiated).
        "log_threshold": torch.nn.Parameter(torch.full((k,), float(np.log(0.1 * variance**0.5)))),
    }
    trained = [p for name, p in params.items() if kind == "jumprelu" or name != "log_threshold"]
    optimizer = torch.optim.Adam(trained, lr=options.learning_rate)
    loss = torch.tensor(0.0)
    for _ in range(options.epochs):
        for block in rows():
            x_all = torch.from_numpy(block)
            order = torch.randperm(len(x_all), generator=generator)
            for start in range(0, len(x_all), options.batch_size):
                x = x_all[order[start : start + options.batch_size]]
                pre = (x - params["pre_bias"]) @ params["weight"].T + params["bias"]
                codes = torch.relu(pre)
                penalty = torch.tensor(0.0)
                if kind == "topk":
                    top = torch.topk(codes, top_k, dim=-1)
                    codes = torch.zeros_like(codes).scatter(-1, top.indices, top.values)
                elif kind == "jumprelu":
                    gate = _Jump.apply(codes, params["log_threshold"].exp(), options.bandwidth)
                    codes = codes * gate
                    penalty = options.l0 * gate.sum(dim=-1).mean()
                else:
                    penalty = options.l1 * codes.abs().sum(dim=-1).mean() / variance**0.5
                recon = codes @ params["dictionary"] + params["pre_bias"]
                loss = ((recon - x) ** 2).mean() / variance + penalty
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                with torch.no_grad():
                    d = params["dictionary"]
                    d.div_(d.norm(dim=1, keepdim=True).clamp_min(1e-12))
    say(f"{kind} SAE: {options.epochs} epochs, last batch loss {float(loss):.4g}")

    def out(name: str) -> np.ndarray:
        return np.ascontiguousarray(params[name].detach().numpy(), dtype=np.float32)

    pre_bias = out("pre_bias")
    threshold = None
    if kind == "jumprelu":
        threshold = np.exp(out("log_threshold")).astype(np.float32)
    encoder = Encoder(
        kind,  # type: ignore[arg-type]
        weight=out("weight"),
        bias=out("bias"),
        center=pre_bias,
        threshold=threshold,
        top_k=top_k if kind == "topk" else 0,
    )
    notes = {
        "algorithm": f"{kind} sparse autoencoder (torch, Adam)",
        "epochs": options.epochs,
        "learning_rate": options.learning_rate,
        "final_loss": float(loss),
    }
    return Fitted(encoder, out("dictionary"), pre_bias, notes)
