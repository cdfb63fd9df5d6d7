"""Settings declared once (`explainserve.settings`): each option's type is read from its field's
annotation with `typing`, whatever its spelling (`int | None`, `None | int`, `Optional[int]`,
a `Literal`), and the flags and TOML checks take values of that type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import pytest

from explainserve.cli import build_parser
from explainserve.config import ConfigError, ServeConfig, check_value, option_specs
from explainserve.settings import OptionSpec, option, specs_of

Colour = Literal["red", "green"]


@dataclass(frozen=True)
class Spellings:
    """One option per way of writing a type (the old parser read `None | int` and
    `Optional[int]` as strings)."""

    plain: int = option(1, "an int")
    union_none_last: int | None = option(None, "an int or none")
    union_none_first: None | int = option(None, "an int or none")  # noqa: RUF036
    optional: Optional[int] = option(None, "an int or none")  # noqa: UP045 (the spelling tested)
    typing_union: Union[float, None] = option(None, "a float or none")  # noqa: UP007
    path: Path | None = option(None, "a path or none")
    colour: Colour = option("red", "a Literal")
    words: tuple[str, ...] = option((), "strings", flag=False)
    table: dict[str, Path] = option({}, "a table", flag=False)
    flag: bool = option(False, "a bool")


def test_each_spelling_of_a_type_gives_its_kind() -> None:
    specs = {spec.name: spec for spec in specs_of(Spellings)}
    assert {name: spec.kind for name, spec in specs.items()} == {
        "plain": int,
        "union_none_last": int,
        "union_none_first": int,
        "optional": int,
        "typing_union": float,
        "path": Path,
        "colour": str,
        "words": tuple,
        "table": dict,
        "flag": bool,
    }
    # A Literal's strings are its choices, declared once (the annotation).
    assert specs["colour"].choices == ("red", "green")
    assert specs["plain"].choices is None


@dataclass(frozen=True)
class _TwoTypes:
    value: int | str = option(1, "two types")


@dataclass(frozen=True)
class _Unknown:
    value: complex = option(1j, "no setting takes it")


@pytest.mark.parametrize("cls", [_TwoTypes, _Unknown])
def test_a_type_no_setting_takes_is_an_error(cls: type[Any]) -> None:
    with pytest.raises(TypeError, match="a setting"):
        specs_of(cls)


def _declared(spec: OptionSpec) -> Any:
    """The resolved type of `spec`'s field, found along its path from a default ServeConfig."""
    owner: Any = ServeConfig()
    for name in spec.path[:-1]:
        owner = getattr(owner, name)
    return get_type_hints(type(owner))[spec.path[-1]]


SAMPLE = {int: "7", float: "0.5", str: "text", Path: "/tmp/settings-test"}


@pytest.mark.parametrize("spec", option_specs(), ids=lambda spec: spec.name)
def test_every_option_takes_values_of_its_declared_type(spec: OptionSpec) -> None:
    """Per option: its kind is its annotation's type (None aside; a Literal's strings: str), its
    default is of that kind, the TOML check accepts a value of it and refuses another kind's,
    and its flag parses to it."""
    hint = _declared(spec)
    if get_origin(hint) in (Union, type(int | None)):
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
    if get_origin(hint) is Literal:
        assert spec.kind is str
        assert set(spec.choices or ()) == set(get_args(hint))
    else:
        assert spec.kind is (get_origin(hint) or hint)
    if spec.default is not None:
        assert isinstance(spec.default, spec.kind) or (
            spec.kind is float and type(spec.default) is int
        )
    if spec.kind is bool:
        assert check_value(spec, not spec.default) is (not spec.default)
        with pytest.raises(ConfigError):
            check_value(spec, "yes")
        return
    if spec.kind in (int, float):
        value = max(spec.minimum or 0, 7)
        assert check_value(spec, value) == value
        with pytest.raises(ConfigError):
            check_value(spec, str(value))
    if spec.kind is str:
        value = spec.choices[0] if spec.choices else "text"
        assert check_value(spec, value) == value
        with pytest.raises(ConfigError):
            check_value(spec, 7)
    if not spec.flag or spec.kind not in SAMPLE:
        return
    text = spec.choices[0] if spec.choices else SAMPLE[spec.kind]
    if spec.name == "log_level":
        text = text.lower()  # the flag takes any case
    args = build_parser().parse_args(["serve", spec.flag_name, text])
    parsed = getattr(args, spec.name)
    assert type(parsed) is spec.kind or isinstance(parsed, spec.kind), (spec.name, parsed)
