"""A concept set's encoder t and decoder t⁻¹ as torch functions on the model's device, in
float32 (whatever the model's dtype: a dictionary's small coefficients would lose their meaning
in bfloat16). The formulas are `concepts.sets`' and docs/concepts.md's; they are those of the
peers the converters read (scikit-learn's transforms, Overcomplete's SAEs as Interpreto uses
them), operation for operation, so that the same dictionary gives the same concepts."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls
from torch.nn import functional

from explainserve.concepts.sets import ConceptSet


class Codec:
    """Encode activation rows into concept activations and decode them back, for one set on one
    device. Thread-safe (no state changes after construction)."""

    def __init__(self, concept_set: ConceptSet, device: torch.device) -> None:
        self.concept_set = concept_set
        self.device = device

        def put(value: np.ndarray | None) -> torch.Tensor | None:
            return None if value is None else torch.from_numpy(np.array(value)).to(device)

        enc = concept_set.encoder
        self._weight = put(enc.weight)
        self._bias = put(enc.bias)
        self._center = put(enc.center)
        self._threshold = put(enc.threshold)
        decoder = put(concept_set.decoder_weight)
        assert decoder is not None  # a checked set always has one
        self._decoder = decoder
        self._decoder_bias = put(concept_set.decoder_bias)
        # NNLS runs on the CPU in float64 (scipy's active-set solver: exact and deterministic,
        # where an iterative solver started from random codes, as Overcomplete's NMF encode is,
        # gives different codes from run to run).
        self._dictionary_t = np.ascontiguousarray(concept_set.decoder_weight.T, dtype=np.float64)
        self._nnls_offset = (
            None
            if concept_set.decoder_bias is None
            else concept_set.decoder_bias.astype(np.float64)
        )

    @property
    def differentiable(self) -> bool:
        """Whether `encode` has a gradient (every kind but NNLS)."""
        return self.concept_set.encoder.differentiable

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`(n, d)` activations (any float dtype) -> `(n, K)` float32 concept activations."""
        x = x.float()
        enc = self.concept_set.encoder
        if enc.kind == "nnls":
            return self._nnls(x)
        assert self._weight is not None
        if self._center is not None:
            x = x - self._center
        pre = functional.linear(x, self._weight, self._bias)
        if enc.kind == "linear":
            return pre
        codes = torch.relu(pre)
        if enc.kind == "topk":
            top = torch.topk(codes, enc.top_k, dim=-1)
            return torch.zeros_like(codes).scatter(-1, top.indices, top.values)
        if enc.kind == "jumprelu":
            assert self._threshold is not None
            return codes * (codes >= self._threshold).to(codes.dtype)
        return codes

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """`(n, K)` concept activations -> `(n, d)` float32 activations: C · D + b."""
        out = c.float() @ self._decoder
        if self._decoder_bias is not None:
            out = out + self._decoder_bias
        return out

    def _nnls(self, x: torch.Tensor) -> torch.Tensor:
        """Row by row: argmin_{C >= 0} ||x' - (C D + b)||, x' = ReLU(x) with `relu_input`."""
        if self.concept_set.encoder.relu_input:
            x = torch.relu(x)
        rows = x.detach().double().cpu().numpy()
        if self._nnls_offset is not None:
            rows = rows - self._nnls_offset
        out = np.empty((rows.shape[0], self.concept_set.n_concepts), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = nnls(self._dictionary_t, row)[0]
        return torch.from_numpy(out).to(x.device)
