"""The shared vocabulary of the domain: what an input is, how it becomes tokens and units, and
how the model's outputs are read. `explain/`, `activations/`, `scheduling/` and the transport
import these terms; none of them owns them.

- `InputSpec`: one input of a request (text or token ids, targets, a causal LM's continuation).
- `Granularity`, `Aggregation`, `InferenceMode`: the request's choices every layer understands.
- `Encoded` / `Units` and `make_units`: tokens with character offsets, grouped into units by the
  native core. A text input is tokenized with offsets; a token-id input is decoded and
  re-tokenized so that units still get text and character spans (when the round trip does not
  give the same ids, each token's decoded string is laid end to end to make the text).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from transformers import PreTrainedTokenizerBase

from explainserve import _native
from explainserve.errors import InvalidArgument

#: ALL_TOKENS (special tokens included), TOKEN (special tokens excluded), WORD, SENTENCE.
Granularity = Literal["all_tokens", "token", "word", "sentence"]
#: How a unit's score is combined from its tokens' (and a causal LM's target unit's rows).
Aggregation = Literal["mean", "max", "min", "sum", "signed_max"]
#: What is explained of the model's output: the logits, or their (log-)softmax.
InferenceMode = Literal["logits", "softmax", "log_softmax"]
#: "interactive" requests' rows are batched before queued "batch" rows.
Priority = Literal["interactive", "batch"]


@dataclass(frozen=True)
class InputSpec:
    """One input: text, or token ids (+ optional attention mask); targets by index or label.

    Causal LMs: the input is the prompt, and the target is a continuation given as text or token
    ids (at most one of the two); with neither, the model's own continuation is generated.
    """

    text: str | None = None
    ids: list[int] | None = None
    attention: list[int] | None = None
    targets: list[int | str] = dataclasses.field(default_factory=list)
    continuation_text: str | None = None
    continuation_ids: list[int] | None = None

    @property
    def has_continuation(self) -> bool:
        """True when a continuation is given (text or ids)."""
        return self.continuation_text is not None or self.continuation_ids is not None


def check_input_count(inputs: list[InputSpec], limit: int) -> None:
    """A request has at least one input and at most `limit` (INVALID_ARGUMENT on `inputs`)."""
    if not inputs:
        raise InvalidArgument("the request has no inputs", field="inputs")
    if len(inputs) > limit:
        raise InvalidArgument(
            f"the request has {len(inputs)} inputs, the limit is {limit}", field="inputs"
        )


@dataclass(frozen=True)
class Encoded:
    """One tokenized input."""

    text: str
    ids: NDArray[np.int64]
    attention: NDArray[np.int64]
    special: NDArray[np.bool_]
    offsets: NDArray[np.int64]
    word_ids: NDArray[np.int64] | None

    @property
    def n_tokens(self) -> int:
        """Number of tokens, specials included."""
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class Units:
    """The units of one input: what each score is about."""

    token_to_unit: NDArray[np.int64]
    spans: NDArray[np.int64]
    texts: list[str]
    token_indices: list[list[int]]

    @property
    def n_units(self) -> int:
        """Number of units."""
        return len(self.texts)


def _check_length(n: int, max_length: int, field: str) -> None:
    if n > max_length:
        # `field` is "inputs[i]" for a request's input: name it, and say how to get past.
        index = re.fullmatch(r"inputs\[(\d+)\].*", field)
        what = f"input {index.group(1)}" if index else field
        fix = ": shorten it, or set truncate to cut it" if index else ""
        raise InvalidArgument(
            f"{what} has {n} tokens, more than the model's maximum of {max_length}{fix}",
            field=field,
        )


def encode_text(
    tokenizer: PreTrainedTokenizerBase, text: str, max_length: int, field: str
) -> Encoded:
    """Tokenizes `text` (special tokens added) with character offsets and word ids."""
    enc = tokenizer(
        text,
        add_special_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=True,
        truncation=False,
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    _check_length(len(ids), max_length, field)
    word_ids = np.asarray([-1 if w is None else w for w in enc.word_ids()], dtype=np.int64)
    return Encoded(
        text=text,
        ids=ids,
        attention=np.asarray(enc["attention_mask"], dtype=np.int64),
        special=np.asarray(enc["special_tokens_mask"], dtype=bool),
        offsets=np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2),
        word_ids=word_ids,
    )


@dataclass(frozen=True)
class TokenTable:
    """Many texts' tokens laid end to end, as `encode_text` gives them: text `k` owns
    `[starts[k], starts[k + 1])`. Ids always (4 bytes a token); character offsets, word ids
    (-1 = none) and special-token flags (13 more bytes a token) when asked for."""

    ids: NDArray[np.int32]
    starts: NDArray[np.int64]
    offsets: NDArray[np.int32] | None = None
    word_ids: NDArray[np.int32] | None = None
    special: NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.starts) - 1

    def token_ids(self, k: int) -> NDArray[np.int64]:
        """Text `k`'s token ids."""
        return self.ids[self.starts[k] : self.starts[k + 1]].astype(np.int64)

    def encoded(self, k: int, text: str) -> Encoded:
        """Text `k` (which is `text`) as `encode_text` encodes it; needs the offsets."""
        if self.offsets is None or self.word_ids is None or self.special is None:
            raise ValueError("this token table was built without offsets")
        lo, hi = int(self.starts[k]), int(self.starts[k + 1])
        return Encoded(
            text=text,
            ids=self.ids[lo:hi].astype(np.int64),
            attention=np.ones(hi - lo, dtype=np.int64),
            special=self.special[lo:hi].copy(),
            offsets=self.offsets[lo:hi].astype(np.int64),
            word_ids=self.word_ids[lo:hi].astype(np.int64),
        )

    @staticmethod
    def concatenate(tables: list[TokenTable]) -> TokenTable:
        """The tables' texts one after the other."""
        if not tables:
            return TokenTable(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64))
        starts = [np.zeros(1, dtype=np.int64)]
        for t in tables:
            starts.append(t.starts[1:] + starts[-1][-1])
        with_offsets = all(t.offsets is not None for t in tables)
        return TokenTable(
            ids=np.concatenate([t.ids for t in tables]),
            starts=np.concatenate(starts),
            offsets=np.concatenate([t.offsets for t in tables if t.offsets is not None])
            if with_offsets
            else None,
            word_ids=np.concatenate([t.word_ids for t in tables if t.word_ids is not None])
            if with_offsets
            else None,
            special=np.concatenate([t.special for t in tables if t.special is not None])
            if with_offsets
            else None,
        )


def tokenize_table(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    fields: list[str],
    *,
    with_offsets: bool,
) -> TokenTable:
    """Tokenizes many texts in one batched call (the fast tokenizer spreads it over the cores)
    into a `TokenTable`; raises the length error `encode_text` would, naming `fields[k]`."""
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    if not texts:
        return TokenTable(np.zeros(0, dtype=np.int32), starts)
    enc = tokenizer(
        texts,
        add_special_tokens=True,
        truncation=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_offsets_mapping=with_offsets,
        return_special_tokens_mask=with_offsets,
    )
    rows = enc["input_ids"]
    for k, (row, field) in enumerate(zip(rows, fields, strict=True)):
        _check_length(len(row), max_length, field)
        starts[k + 1] = starts[k] + len(row)
    total = int(starts[-1])
    ids = np.fromiter((t for row in rows for t in row), dtype=np.int32, count=total)
    if not with_offsets:
        return TokenTable(ids, starts)
    offsets = np.fromiter(
        (x for row in enc["offset_mapping"] for span in row for x in span),
        dtype=np.int32,
        count=2 * total,
    ).reshape(-1, 2)
    special = np.fromiter(
        (f for row in enc["special_tokens_mask"] for f in row), dtype=bool, count=total
    )
    word_ids = np.fromiter(
        (-1 if w is None else w for k in range(len(texts)) for w in enc.word_ids(k)),
        dtype=np.int32,
        count=total,
    )
    return TokenTable(ids, starts, offsets, word_ids, special)


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, fields: list[str]
) -> list[Encoded]:
    """`encode_text` of many texts in one batched tokenizer call: the same `Encoded` values,
    the same length errors."""
    table = tokenize_table(tokenizer, texts, max_length, fields, with_offsets=True)
    return [table.encoded(k, text) for k, text in enumerate(texts)]


def template_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Ids the tokenizer adds around content (CLS, SEP, BOS, EOS) or pads with: special in a
    token-id input. Unknown and mask tokens are content there, as they are in tokenized text."""
    ids = {
        getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "bos", "eos", "pad")
    }
    ids -= {None, tokenizer.unk_token_id, tokenizer.mask_token_id}
    return {int(i) for i in ids if i is not None}


def check_ids(
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    attention: list[int] | None,
    max_length: int,
    field: str,
) -> None:
    """The checks of a token-id input (not empty, in the vocabulary, not too long, a 0/1 mask of
    the same length), without the decoding `encode_ids` does."""
    vocab = len(tokenizer)
    if not ids:
        raise InvalidArgument("token_ids is empty", field=f"{field}.token_ids.ids")
    bad = [i for i in ids if i < 0 or i >= vocab]
    if bad:
        raise InvalidArgument(
            f"token id {bad[0]} is outside the vocabulary [0, {vocab})", field=f"{field}.token_ids"
        )
    _check_length(len(ids), max_length, field)
    if attention:
        if len(attention) != len(ids):
            raise InvalidArgument(
                f"attention_mask has {len(attention)} values for {len(ids)} ids",
                field=f"{field}.token_ids.attention_mask",
            )
        if any(a not in (0, 1) for a in attention):
            raise InvalidArgument(
                "attention_mask values must be 0 or 1", field=f"{field}.token_ids.attention_mask"
            )


def encode_ids(
    tokenizer: PreTrainedTokenizerBase,
    ids: list[int],
    attention: list[int] | None,
    max_length: int,
    field: str,
) -> Encoded:
    """An input given as token ids; text and offsets are rebuilt by decoding."""
    check_ids(tokenizer, ids, attention, max_length, field)
    mask = np.asarray(attention if attention else [1] * len(ids), dtype=np.int64)
    id_arr = np.asarray(ids, dtype=np.int64)
    special = np.isin(id_arr, sorted(template_token_ids(tokenizer)))
    content = [i for i, s in zip(ids, special, strict=True) if not s]
    text = str(tokenizer.decode(content, clean_up_tokenization_spaces=False))
    again = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        truncation=False,
    )
    offsets = np.zeros((len(ids), 2), dtype=np.int64)
    positions = np.flatnonzero(~special)
    word_ids: NDArray[np.int64] | None
    if list(again["input_ids"]) == content:
        # The round trip is exact: the tokenizer's own offsets and words apply.
        offsets[positions] = np.asarray(again["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        word_ids = np.full(len(ids), -1, dtype=np.int64)
        word_ids[positions] = [-1 if w is None else w for w in again.word_ids()]
    else:
        # Non-canonical ids: each token spans what it adds to the decoded prefix (a token whose
        # prefix decodes unstably, e.g. half of a UTF-8 character, spans nothing and joins its
        # neighbour); words then come from whitespace.
        at = 0
        for k, position in enumerate(positions):
            prefix = str(tokenizer.decode(content[: k + 1], clean_up_tokenization_spaces=False))
            end = len(prefix) if text.startswith(prefix) else at
            start = at
            while start < end and text[start].isspace():  # the space before a word is not it
                start += 1
            offsets[position] = (start, end)
            at = end
        offsets[special] = at
        word_ids = None
    return Encoded(
        text=text, ids=id_arr, attention=mask, special=special, offsets=offsets, word_ids=word_ids
    )


def place_spans(
    text: str, offsets: NDArray[np.int64], special: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """The character spans units are built from, by one rule whatever the tokenizer:

    - a token's span never starts with whitespace (byte-level BPE and SentencePiece tokenizers
      often count the space before a word in its first token; BERT's do not), and a token of
      whitespace only gets the empty span where the next word starts, so it joins that word;
    - a special or padding token, which has no characters, gets the empty span where it sits:
      at the end of the content token before it, 0 when none is before it. Its unit's text
      (ALL_TOKENS) is then empty, like every unit's text is `text[start:end]`.
    """
    out = offsets.copy()
    content = ~special
    n_text = len(text)
    for k in np.flatnonzero(content).tolist():
        start, end = int(out[k, 0]), int(out[k, 1])
        if start < end and not text[start].isspace():
            continue
        while start < end and text[start].isspace():
            start += 1
        if start == end:
            while start < n_text and text[start].isspace():
                start += 1
            end = start
        out[k] = (start, end)
    if special.any():
        ends = np.where(content, out[:, 1], 0)
        before = np.concatenate([[0], np.maximum.accumulate(ends)[:-1]]) if len(ends) else ends
        out[special, 0] = before[special]
        out[special, 1] = before[special]
    return out


def make_units(
    encoded: Encoded, granularity: Granularity, tokenizer: PreTrainedTokenizerBase
) -> Units:
    """Groups tokens into units with the native core; a unit's text is its span's text (spans
    placed by `place_spans`, so a unit of special tokens only has an empty text where it sits).

    Positions with attention 0 are treated like special tokens (never perturbed, no score),
    except in ALL_TOKENS, where every position is a unit. `tokenizer` is the model's (kept in
    the signature for the units of tokenizers that need it).
    """
    special = encoded.special | (encoded.attention == 0)
    offsets = place_spans(encoded.text, encoded.offsets, special)
    token_to_unit, spans = _native.group_units(
        granularity,
        np.ascontiguousarray(special),
        np.ascontiguousarray(offsets),
        encoded.word_ids,
        encoded.text,
    )
    n_units = int(spans.shape[0])
    token_indices: list[list[int]] = [[] for _ in range(n_units)]
    for position, unit in enumerate(token_to_unit.tolist()):
        if unit >= 0:
            token_indices[unit].append(position)
    texts = [encoded.text[start:end] for start, end in spans.tolist()]
    return Units(token_to_unit=token_to_unit, spans=spans, texts=texts, token_indices=token_indices)
