"""The server's token limit on inputs, and truncation when a request asks for it.

This runs before Explain and GetActivations see the inputs (which check the model's own
maximum): an input over the limit is rejected with a message saying how to fix it, or, with
`truncate`, cut to its first tokens that fit, special tokens kept. A text is cut at the end of
the last token kept, so the explanation's spans index into the text explained; token ids keep
their trailing template tokens ([SEP], </s>). Before any of that, and before anything tokenizes
it, a text longer than a character bound derived from the token limit (`CHARS_PER_TOKEN` per
token) is refused, or cut to that bound first.
"""

from __future__ import annotations

import dataclasses

from explainserve.errors import InvalidArgument
from explainserve.models.registry import ServedModel
from explainserve.vocabulary import InputSpec, template_token_ids


def token_limit(model: ServedModel, max_tokens_per_input: int) -> int:
    """Tokens an input of `model` may have: the model's maximum, or the server's lower limit
    (`max_tokens_per_input`, 0 = none)."""
    if max_tokens_per_input > 0:
        return min(model.max_length, max_tokens_per_input)
    return model.max_length


#: Characters of text per token of the limit that an input may have. Checked before any
#: tokenizing, so a huge text costs nothing to refuse: tokenizing 10 MB takes seconds of CPU.
#: English averages about 4 characters per token; 16 leaves room for long words, URLs and
#: runs of whitespace, while the tokenizer sees at most 16 x 512 = 8,192 characters for a
#: 512-token model.
CHARS_PER_TOKEN = 16


def fit_inputs(
    model: ServedModel, specs: list[InputSpec], max_tokens_per_input: int, *, truncate: bool
) -> list[InputSpec]:
    """`specs` with every input within the token limit: unchanged when it already is, cut when
    `truncate`, otherwise InvalidArgument naming the input.

    First, without tokenizing, every text within the character bound (`CHARS_PER_TOKEN` per
    token of the limit): a longer text is refused, or cut to the bound when `truncate` (then to
    the token limit below), and a longer continuation is refused. Then nothing more to do (and
    no tokenizing) when the limit is the model's own and truncation is off: the explainers check
    that."""
    limit = token_limit(model, max_tokens_per_input)
    specs = _within_chars(specs, limit, truncate)
    if not truncate and limit >= model.max_length:
        return specs
    out = list(specs)
    texts = [i for i, s in enumerate(specs) if s.text is not None and s.text.strip()]
    if texts:
        enc = model.tokenizer(
            [str(specs[i].text) for i in texts],
            add_special_tokens=True,
            truncation=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        for k, i in enumerate(texts):
            n = len(enc["input_ids"][k])
            if n > limit:
                _too_long(i, n, limit, truncate, "text")
                out[i] = _cut_text(model, specs[i], enc, k, limit, i)
    for i, spec in enumerate(specs):
        if spec.text is None and spec.ids is not None and len(spec.ids) > limit:
            _too_long(i, len(spec.ids), limit, truncate, "token_ids.ids")
            out[i] = _cut_ids(model, spec, limit, i)
    return out


def _within_chars(specs: list[InputSpec], limit: int, truncate: bool) -> list[InputSpec]:
    chars = CHARS_PER_TOKEN * limit
    out = list(specs)
    for i, spec in enumerate(specs):
        if spec.continuation_text is not None and len(spec.continuation_text) > chars:
            raise InvalidArgument(
                f"the continuation of input {i} has {len(spec.continuation_text)} characters, "
                f"more than the limit of {chars} ({CHARS_PER_TOKEN} per token of the "
                f"{limit}-token limit)",
                field=f"inputs[{i}].continuation.text",
            )
        if spec.text is None or len(spec.text) <= chars:
            continue
        if not truncate:
            raise InvalidArgument(
                f"input {i} has {len(spec.text)} characters, more than the limit of {chars} "
                f"({CHARS_PER_TOKEN} per token of the {limit}-token limit): shorten it, or set "
                "truncate to cut it",
                field=f"inputs[{i}].text",
            )
        out[i] = dataclasses.replace(spec, text=spec.text[:chars])
    return out


def _too_long(i: int, n: int, limit: int, truncate: bool, field: str) -> None:
    if not truncate:
        raise InvalidArgument(
            f"input {i} has {n} tokens, more than the limit of {limit}: shorten it, or set "
            "truncate to cut it",
            field=f"inputs[{i}].{field}",
        )


def _cut_text(
    model: ServedModel, spec: InputSpec, enc: object, k: int, limit: int, i: int
) -> InputSpec:
    text = str(spec.text)
    special = enc["special_tokens_mask"][k]  # type: ignore[index]
    offsets = enc["offset_mapping"][k]  # type: ignore[index]
    content = [pos for pos, s in enumerate(special) if not s]
    keep = limit - (len(special) - len(content))
    while keep >= 1:
        cut = text[: offsets[content[keep - 1]][1]]
        # A prefix ending on a token boundary tokenizes to the same tokens, nearly always;
        # check, and keep one token fewer when it does not.
        n = len(model.tokenizer(cut, add_special_tokens=True, truncation=False).input_ids)
        if n <= limit and cut.strip():
            return dataclasses.replace(spec, text=cut)
        keep -= 1
    raise InvalidArgument(
        f"input {i} cannot be truncated to {limit} tokens: the model's special tokens alone "
        "take that many",
        field=f"inputs[{i}].text",
    )


def _cut_ids(model: ServedModel, spec: InputSpec, limit: int, i: int) -> InputSpec:
    ids = list(spec.ids or [])
    template = template_token_ids(model.tokenizer)
    tail = 0
    while tail < len(ids) - 1 and ids[len(ids) - 1 - tail] in template:
        tail += 1
    head = limit - tail
    if head < 1:
        raise InvalidArgument(
            f"input {i} cannot be truncated to {limit} tokens: its trailing special tokens alone "
            "take that many",
            field=f"inputs[{i}].token_ids.ids",
        )
    cut = ids[:head] + ids[len(ids) - tail :]
    attention = None
    if spec.attention:
        mask = list(spec.attention)
        attention = mask[:head] + mask[len(mask) - tail :] if len(mask) == len(ids) else mask
    return dataclasses.replace(spec, ids=cut, attention=attention)
