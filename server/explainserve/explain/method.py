"""What an attribution method is: one object that declares its parameters (dataclass fields with
their defaults), their validation, the rows it sends through the model, and how it plans those
rows and turns their outputs into unit scores (`start`, which emits the worker jobs).

Each method lives in a module of its own under `explain/methods/` and registers its class under
its name (the field name of the request's `method` oneof). The request flow asks the method,
never which method it is: adding a method is adding its module (and its proto message).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from explainserve.errors import InvalidArgument
from explainserve.explain.run import Item, Pending, RunContext


@dataclass(frozen=True)
class Method(ABC):
    """An attribution method with its parameters (subclasses: frozen dataclasses whose fields
    are the parameters, defaults included, named as in the proto message)."""

    #: The method's name: its field in the request's `method` oneof, and its registry key.
    name: ClassVar[str]
    #: Rows and scores depend only on an input's tokens, units and targets (and the request's
    #: parameters), so an input identical to an earlier one of the request may share its run.
    shares_identical_inputs: ClassVar[bool] = False
    #: Classifiers: a run of an input with a `TargetChoice` carries the unperturbed row and
    #: picks its targets once its rows are in (one round through the worker), instead of being
    #: started once a first forward has picked them.
    picks_targets_late: ClassVar[bool] = False

    def validate(self) -> None:  # noqa: B027 (a method without parameters has nothing to check)
        """Checks the parameters (ranges, NaN); raises InvalidArgument naming the field."""

    @abstractmethod
    def n_rows(self, n_units: int, n_targets: int) -> int:
        """Sequences the method sends through the model for one input."""

    @abstractmethod
    def start(self, item: Item, ctx: RunContext) -> Pending:
        """Plans one input's rows as worker jobs (not yet submitted) and how to finish them."""

    def field_name(self, parameter: str) -> str:
        """The request field of one of the method's parameters (`lime.n_perturbations`)."""
        return f"{self.name}.{parameter}"

    def check_at_least(self, parameter: str, bound: int) -> None:
        """The integer parameter is at least `bound`."""
        value = getattr(self, parameter)
        if value < bound:
            raise InvalidArgument(
                f"{self.field_name(parameter)} must be at least {bound}, got {value}",
                field=self.field_name(parameter),
            )

    def check_finite(self, parameter: str, *, allow_zero: bool = False) -> None:
        """The float parameter is finite and > 0 (>= 0 with `allow_zero`)."""
        value = getattr(self, parameter)
        ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
        if not ok:
            bound = ">= 0" if allow_zero else "> 0"
            name = self.field_name(parameter)
            raise InvalidArgument(
                f"{name} must be a finite number {bound}, got {value}", field=name
            )


_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator of a method module: the method is served under `cls.name`."""
    if cls.name in _REGISTRY:
        raise RuntimeError(f"two methods named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def methods() -> dict[str, type[Method]]:
    """Every method by name. Imports each module of `explain/methods/` once: a method's module
    is all there is to add (no list of methods to keep in step)."""
    import explainserve.explain.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(_REGISTRY)
