"""Activation capture by hooks.

A split point is a module name, whose output is captured by a forward hook (the first tensor of a
tuple output), or `"<head>:input"`, the input of the classification head (the module under
`classifier`, `classification_head` or `score`), captured by a forward pre-hook. When nothing
after the split points is needed, the hook that completes the capture raises `StopForward`, which
`capture` catches: the rest of the forward pass never runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

#: Where sequence classifiers keep their head, in the order they are looked for (as Interpreto's
#: SplitterForClassification does).
HEAD_ATTRIBUTES = ("classifier", "classification_head", "score")
#: Suffix of the split point that names a module's input instead of its output.
INPUT_SUFFIX = ":input"

T = TypeVar("T")


class StopForward(Exception):
    """Raised by a capture hook once every split point is captured; never leaves `capture`."""


def find_head(model: torch.nn.Module) -> str | None:
    """The attribute name of the model's classification head, or None when it has none."""
    for name in HEAD_ATTRIBUTES:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return name
    return None


def head_input_name(head: str) -> str:
    """The split point of a head's input, e.g. "classifier:input"."""
    return f"{head}{INPUT_SUFFIX}"


def first_tensor(value: Any) -> torch.Tensor | None:
    """`value` if it is a tensor, the first element of a tuple output if that is one, else None
    (modules returning a ModelOutput or nothing tensor-like are not split points)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The first positional tensor argument of a call, else the first tensor keyword argument."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def capture(
    model: torch.nn.Module,
    names: Iterable[str],
    run: Callable[[], T],
    *,
    stop_early: bool,
) -> tuple[dict[str, torch.Tensor], T | None]:
    """Runs `run()` (a forward pass of `model`) with hooks on the split points `names`.

    Returns the captured tensors by name (a module called twice keeps its first call) and what
    `run` returned, or None when `stop_early` cut the pass short once all were captured. The hooks
    are removed before returning, whatever happens. A split point the pass never reached is an
    error (RuntimeError): the names must come from the probed split points.
    """
    wanted = list(dict.fromkeys(names))
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def record(name: str, tensor: torch.Tensor | None) -> None:
        if tensor is None or name in captured:
            return
        captured[name] = tensor
        if stop_early and len(captured) == len(wanted):
            raise StopForward

    def output_hook(name: str) -> Callable[[torch.nn.Module, Any, Any], None]:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            record(name, first_tensor(output))

        return hook

    def input_hook(
        name: str,
    ) -> Callable[[torch.nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            record(name, _input_tensor(args, kwargs))

        return hook

    handles = []
    try:
        for name in wanted:
            if name.endswith(INPUT_SUFFIX):
                module = modules[name.removesuffix(INPUT_SUFFIX)]
                handles.append(module.register_forward_pre_hook(input_hook(name), with_kwargs=True))
            else:
                handles.append(modules[name].register_forward_hook(output_hook(name)))
        result: T | None
        try:
            result = run()
        except StopForward:
            result = None
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in wanted if name not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached split points {missing}")
    return captured, result


def edited(
    model: torch.nn.Module,
    name: str,
    edit: Callable[[torch.Tensor], torch.Tensor],
    run: Callable[[], T],
) -> T:
    """Runs `run()` (a forward pass of `model`) with module `name`'s output replaced by
    `edit(output)` (the first tensor of a tuple output: the rest of the tuple is kept); the hook
    is removed before returning, whatever happens."""

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return edit(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (edit(output[0]), *output[1:])
        raise RuntimeError(f"split point {name} has no tensor output to edit")

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        return run()
    finally:
        handle.remove()
