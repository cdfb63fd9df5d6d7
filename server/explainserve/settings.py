"""Settings declared once: an option dataclass marks the fields an operator may set with
`option(...)` (default, help text, choices, unit, lower bound), and everything else is derived
from those fields: the TOML keys and `explainserve serve`'s flags (`config.option_specs`), their
help and defaults, and the checks of the values given. No torch here (nor in the modules that
declare options): `explainserve --help` stays instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def option(
    default: Any,
    help: str,
    *,
    key: str | None = None,
    choices: tuple[str, ...] | None = None,
    unit: str = "",
    scale: float = 1.0,
    minimum: float | None = None,
    flag: bool = True,
) -> Any:
    """A dataclass field that is a setting: its TOML key and flag are `key` (default: the
    field's name), `help` and the default show in `--help`. `unit="bytes"` prints 64 MiB
    instead of 67108864; `scale`: the key's value is the field's times it (a key in
    milliseconds for a field in seconds: 1000); `minimum`: the smallest value accepted;
    `flag=False`: TOML only. A list or dict default is copied for each instance."""
    meta = {
        "help": help,
        "key": key,
        "choices": choices,
        "unit": unit,
        "scale": scale,
        "minimum": minimum,
        "flag": flag,
    }
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=type(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionSpec:
    """One setting as the TOML file and the command line show it."""

    #: The TOML key (`max_inputs`); the flag is `--max-inputs`.
    name: str
    #: Where the value lives: attribute names from the configuration down to the field.
    path: tuple[str, ...]
    kind: type
    #: In the key's unit (the field's default times `scale`).
    default: Any
    help: str
    choices: tuple[str, ...] | None
    unit: str
    scale: float
    minimum: float | None
    flag: bool

    @property
    def flag_name(self) -> str:
        """`--max-inputs` for `max_inputs`."""
        return "--" + self.name.replace("_", "-")

    def default_text(self) -> str:
        """The default as the help shows it."""
        d = self.default
        if d is None or d == [] or d == {} or d == ():
            return "none"
        if isinstance(d, bool):
            return "on" if d else "off"
        if self.unit == "bytes" and isinstance(d, int):
            for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
                if d >= size and d % size == 0:
                    return f"{d // size} {name}"
        if isinstance(d, float) and d.is_integer():
            return str(int(d))
        return str(d)

    def to_field(self, value: Any) -> Any:
        """A checked value of the key to the field's value (its unit, a tuple for a list)."""
        if self.scale != 1.0:
            return value / self.scale
        if isinstance(value, list) and self.kind is tuple:
            return tuple(value)
        return value


_SCALARS = (str, int, float, bool, Path)


def _kind(hint: Any) -> tuple[type, tuple[str, ...] | None]:
    """The type of a setting's values from its field's type (resolved, `typing.get_type_hints`):
    `int | None`, `None | int` and `Optional[int]` are int, `tuple[str, ...]` is tuple, and a
    `Literal` of strings is str with those strings as its choices. Anything else is an error
    (a setting's value is checked and parsed by its type: none must be guessed)."""
    if get_origin(hint) in (Union, UnionType):
        hint, *others = [arg for arg in get_args(hint) if arg is not type(None)]
        if others:
            raise TypeError(f"a setting takes values of one type (or none), not {hint} | {others}")
    origin = get_origin(hint)
    if origin is Literal:
        values = get_args(hint)
        if not all(isinstance(value, str) for value in values):
            raise TypeError(f"a setting's Literal type takes strings, not {values}")
        return str, values
    if origin in (list, tuple, dict):
        return origin, None
    if hint in _SCALARS:
        return hint, None
    raise TypeError(f"a setting's type is one of {_SCALARS}, a list, tuple or dict, not {hint}")


def specs_of(cls: type[Any], path: tuple[str, ...] = ()) -> list[OptionSpec]:
    """The settings of dataclass `cls`, in declaration order; a field whose default is a
    dataclass contributes that dataclass's settings (under its name in `path`)."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
        if dataclasses.is_dataclass(default):
            out += specs_of(type(default), (*path, f.name))
            continue
        if "help" not in f.metadata:
            continue  # not a setting: an internal knob of its layer
        scale = f.metadata["scale"]
        kind, values = _kind(hints[f.name])
        out.append(
            OptionSpec(
                name=f.metadata["key"] or f.name,
                path=(*path, f.name),
                kind=kind,
                default=default * scale if scale != 1.0 else default,
                help=f.metadata["help"],
                choices=f.metadata["choices"] or values,
                unit=f.metadata["unit"],
                scale=scale,
                minimum=f.metadata["minimum"],
                flag=f.metadata["flag"],
            )
        )
    return out
