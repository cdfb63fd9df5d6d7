"""JSON bodies <-> protobuf messages by proto3's canonical JSON mapping (`json_format`): field
names in lowerCamelCase out (either spelling in), 64-bit integers as strings, bytes as base64,
enums by name. Every failure to read a body is an InvalidArgument naming what is wrong, so a
malformed body is a 400, never a 500."""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from explainserve.errors import InvalidArgument, quote

M = TypeVar("M", bound=Message)

#: Nesting depth of a request's JSON at most (json_format's own bound on messages).
MAX_DEPTH = 100


def loads(body: bytes, what: str = "the request body") -> Any:
    """The JSON value of `body` (UTF-8); InvalidArgument for anything that is not JSON (bad
    syntax, bad UTF-8, nesting too deep, integers of more digits than Python reads)."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise InvalidArgument(
            f"{what} is not valid JSON: {quote(e.msg, 100)} at byte {e.pos}"
        ) from None
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{what} is not UTF-8 (byte {e.start})") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise InvalidArgument(f"{what} is not valid JSON: {quote(e, 100)}") from None


def load_object(body: bytes, what: str = "the request body") -> dict[str, Any]:
    """`loads`, which must give a JSON object; an empty body is the empty object."""
    if not body.strip():
        return {}
    value = loads(body, what)
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, not {_kind(value)}")
    return value


def parse(value: Any, cls: type[M], field: str | None = None) -> M:
    """`value` (a decoded JSON object) as a message of `cls`; unknown fields are refused (a
    misspelt field would otherwise pass unnoticed). InvalidArgument names `field` when given."""
    where = field or "the request body"
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object, not {_kind(value)}", field=field)
    message: M = cls()
    try:
        json_format.ParseDict(value, message, max_recursion_depth=MAX_DEPTH)
    except (json_format.ParseError, TypeError, ValueError, RecursionError) as e:
        raise InvalidArgument(
            f"{where} is not a valid {cls.DESCRIPTOR.name}: {quote(e, 300)}", field=field
        ) from None
    return message


def to_dict(message: Message) -> dict[str, Any]:
    """A message as a JSON object by the canonical mapping. Fields without presence are printed
    at their default too (grpc-gateway's default): a client reads `inputIndex: 0`, not a
    missing key."""
    out: dict[str, Any] = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True
    )
    return out


def dumps(value: Any) -> bytes:
    """Compact JSON of `value` as UTF-8 bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def short_enum_names(value: Any, message: descriptor.Descriptor) -> Any:
    """`value` (a JSON object for `message`) with enum values also given by their short names:
    "word" for GRANULARITY_WORD, "softmax" for INFERENCE_MODE_SOFTMAX (the enum's value names
    less their common prefix, any case), in every nested message. Other values are left for
    `parse` to judge."""
    if not isinstance(value, dict):
        return value
    by_name = {**message.fields_by_name, **{f.json_name: f for f in message.fields}}
    out: dict[str, Any] = {}
    for key, item in value.items():
        field = by_name.get(key)
        if field is None:
            out[key] = item
        elif field.enum_type is not None:
            out[key] = (
                [_enum_value(v, field.enum_type) for v in item]
                if isinstance(item, list)
                else _enum_value(item, field.enum_type)
            )
        elif field.message_type is not None:
            if isinstance(item, list):
                out[key] = [short_enum_names(v, field.message_type) for v in item]
            else:
                out[key] = short_enum_names(item, field.message_type)
        else:
            out[key] = item
    return out


def _enum_value(value: Any, enum: descriptor.EnumDescriptor) -> Any:
    if not isinstance(value, str) or value in enum.values_by_name:
        return value
    # The longest prefix all the value names share, cut after its last underscore.
    common = os.path.commonprefix(list(enum.values_by_name))  # noqa: RUF071 (names, not paths)
    candidate = common[: common.rfind("_") + 1] + value.upper()
    return candidate if candidate in enum.values_by_name else value


def _kind(value: Any) -> str:
    """What a JSON value is, for messages."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) else "an object"
