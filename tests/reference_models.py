"""The one reference every domain test compares the server with: a served model's weights loaded
a second time with Hugging Face's Auto class (sequence classifier or causal LM, as its config's
architectures say) and called directly, on unpadded rows of one input, never through the worker
or the capture code. A bug in padding, position ids, batching, masking, capture or estimation
then shows up as a mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)


def mode_ref(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """The explained function of the logits over their last dimension, in float64."""
    x = logits.double()
    if mode == "softmax":
        return torch.softmax(x, dim=-1)
    if mode == "log_softmax":
        return torch.log_softmax(x, dim=-1)
    return x


class Direct:
    """A served model's weights loaded a second time, in float32, and called directly."""

    def __init__(self, path: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        architectures = list(getattr(config, "architectures", None) or [])
        #: True for a causal LM (teacher-forced `scores`, `greedy`), else a classifier.
        self.causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        auto = AutoModelForCausalLM if self.causal else AutoModelForSequenceClassification
        model = auto.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        self.model: Any = model.eval()
        self.model.requires_grad_(False)
        #: Class names (classifiers; empty for a causal LM).
        self.labels = (
            []
            if self.causal
            else [model.config.id2label[i] for i in range(model.config.num_labels)]
        )

    # -- inputs -----------------------------------------------------------------------------

    def encode(self, text: str) -> NDArray[np.int64]:
        """Token ids of `text`, special tokens included."""
        return np.asarray(self.tokenizer(text)["input_ids"], dtype=np.int64)

    def embed(self, ids: NDArray[np.int64]) -> torch.Tensor:
        """`(b, n, h)` word embeddings of `(b, n)` (or `(n,)`, then b = 1) ids."""
        t = torch.as_tensor(np.atleast_2d(ids))
        with torch.no_grad():
            out: torch.Tensor = self.model.get_input_embeddings()(t).float()
        return out

    # -- classifiers: logits, explained scores, gradients -----------------------------------

    def logits(
        self, ids: NDArray[np.int64] | None = None, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`(b, C)` logits of unpadded rows of equal length, from ids or from embeddings."""
        with torch.no_grad():
            if embeds is not None:
                mask = torch.ones(embeds.shape[:2], dtype=torch.long)
                out = self.model(inputs_embeds=embeds, attention_mask=mask)
            else:
                assert ids is not None
                t = torch.as_tensor(np.atleast_2d(ids))
                out = self.model(input_ids=t, attention_mask=torch.ones_like(t))
        logits: torch.Tensor = out.logits
        return logits

    def f(
        self,
        target: int,
        mode: str = "logits",
        *,
        ids: NDArray[np.int64] | None = None,
        embeds: torch.Tensor | None = None,
    ) -> NDArray[np.float64]:
        """`(b,)` explained score of `target` for each row."""
        out: NDArray[np.float64] = mode_ref(self.logits(ids, embeds), mode)[:, target].numpy()
        return out

    def grad(
        self, embeds: torch.Tensor, target: int, mode: str = "logits"
    ) -> tuple[torch.Tensor, NDArray[np.float64]]:
        """Gradients `(b, n, h)` of each row's target score w.r.t. its input embeddings."""
        e = embeds.detach().clone().requires_grad_(True)
        mask = torch.ones(e.shape[:2], dtype=torch.long)
        with torch.enable_grad():
            logits = self.model(inputs_embeds=e, attention_mask=mask).logits
            score = mode_ref(logits, mode)[:, target]
            (g,) = torch.autograd.grad(score.sum(), e)
        return g.double(), score.detach().numpy()

    # -- classifiers: activations and the head ----------------------------------------------

    def forward(self, text: str) -> Any:
        """The model's output on `text` alone, hidden states included."""
        ids = torch.as_tensor(self.encode(text))[None]
        with torch.no_grad():
            return self.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True
            )

    def module_output(self, text: str, name: str) -> NDArray[np.float32]:
        """Output of module `name` on `text` alone (`(n, *features)` or `(*features,)`)."""
        seen: list[torch.Tensor] = []

        def hook(_m: torch.nn.Module, _i: Any, out: Any) -> None:
            seen.append(out[0] if isinstance(out, tuple) else out)

        handle = self.model.get_submodule(name).register_forward_hook(hook)
        try:
            self.forward(text)
        finally:
            handle.remove()
        out: NDArray[np.float32] = seen[0][0].numpy()
        return out

    def hidden(self, text: str, index: int) -> NDArray[np.float32]:
        """`(n, h)` hidden states number `index` (0 = embeddings, k = after layer k - 1)."""
        out: NDArray[np.float32] = self.forward(text).hidden_states[index][0].numpy()
        return out

    def head_input(self, text: str) -> NDArray[np.float32]:
        """`(h,)` what the classification head reads for `text` alone (`head_inputs`)."""
        return self.head_inputs(embeds=self.embed(self.encode(text)))[0]

    def head_inputs(self, embeds: torch.Tensor) -> NDArray[np.float32]:
        """`(b, h)` what the classification head reads for unpadded rows of input embeddings of
        equal length, computed from the last hidden states the way each architecture's forward
        does it (eval mode: dropout is the identity)."""
        model = self.model
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        with torch.no_grad():
            out = model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
            last = out.hidden_states[-1]
            kind = type(model).__name__
            if kind == "BertForSequenceClassification":
                rows = model.bert.pooler(last)
            elif kind == "RobertaForSequenceClassification":
                rows = last[:, 0]
            elif kind == "DistilBertForSequenceClassification":
                rows = torch.relu(model.pre_classifier(last[:, 0]))
            elif kind == "GPT2ForSequenceClassification":
                rows = last[:, -1]  # unpadded rows: the last token is the last non-pad token
            else:
                raise AssertionError(kind)
        result: NDArray[np.float32] = rows.numpy()
        return result

    def head(self, rows: NDArray[np.float32]) -> NDArray[np.float32]:
        """`(r, C)` the classification head module called directly on `(r, h)` rows."""
        model = self.model
        x = torch.from_numpy(np.ascontiguousarray(rows))
        with torch.no_grad():
            if hasattr(model, "score"):
                out = model.score(x)
            elif type(model).__name__ == "RobertaForSequenceClassification":
                out = model.classifier(x[:, None, :])  # the head reads position 0
            else:
                out = model.classifier(x)
        result: NDArray[np.float32] = out.numpy()
        return result

    def text_logits(self, text: str) -> NDArray[np.float32]:
        """`(C,)` logits of `text` alone."""
        out: NDArray[np.float32] = self.forward(text).logits[0].numpy()
        return out

    # -- causal LMs: teacher-forced scores and greedy continuations --------------------------

    def scores(
        self,
        ids: NDArray[np.int64],
        p: int,
        mode: str,
        embeds: torch.Tensor | None = None,
        targets: NDArray[np.int64] | None = None,
    ) -> NDArray[np.float64]:
        """`(t,)` teacher-forced scores of the continuation `targets` (default `ids[p:]`) after
        the (perturbed) row `ids`, or its `(n, h)` `embeds`."""
        with torch.no_grad():
            if embeds is None:
                logits = self.model(input_ids=torch.as_tensor(ids)[None]).logits[0]
            else:
                logits = self.model(inputs_embeds=embeds[None]).logits[0]
        t = len(ids) - p
        rows = mode_ref(logits[p - 1 : p - 1 + t], mode)
        wanted = torch.as_tensor(ids[p:] if targets is None else targets)
        out: NDArray[np.float64] = rows[torch.arange(t), wanted].numpy()
        return out

    def greedy(self, prompt: NDArray[np.int64], n: int) -> list[int]:
        """Greedy continuation without the cache (the reference for the worker's KV loop)."""
        ids = list(prompt)
        out = []
        eos = self.tokenizer.eos_token_id
        for _ in range(n):
            with torch.no_grad():
                logits = self.model(input_ids=torch.as_tensor(ids)[None]).logits[0, -1]
            token = int(torch.argmax(logits))
            if token == eos:
                break
            out.append(token)
            ids.append(token)
        return out
