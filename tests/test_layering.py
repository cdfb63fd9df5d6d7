"""The layering the README's Layout section states, checked from the source's imports (type-only
imports included: a layer that names another's types depends on it), and no import circle
between modules: where two modules need each other's types, the types go in a leaf module that
both import (DESIGN.md, "Shared types live below their users")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "explainserve"

#: Per layer, the explainserve modules or packages it must never import.
FORBIDDEN: dict[str, set[str]] = {
    "vocabulary.py": {
        "scheduling",
        "models",
        "explain",
        "activations",
        "concepts",
        "grpc",
        "http",
        "config",
        "cli",
    },
    "settings.py": {
        "scheduling",
        "models",
        "explain",
        "activations",
        "concepts",
        "grpc",
        "http",
        "config",
        "cli",
    },
    "errors.py": {
        "scheduling",
        "models",
        "explain",
        "activations",
        "concepts",
        "grpc",
        "http",
        "config",
        "cli",
    },
    "scheduling": {"models", "explain", "activations", "concepts", "grpc", "http", "config", "cli"},
    "models": {"explain", "activations", "concepts", "grpc", "http", "config", "cli"},
    "concepts": {"explain", "activations", "grpc", "http", "config", "cli", "viewer", "discovery"},
    "explain": {"activations", "grpc", "http", "config", "cli"},
    "activations": {"explain", "concepts", "grpc", "http", "config", "cli"},
    "grpc": {"http", "cli", "viewer", "discovery"},
    # HTTP/JSON: the same servicers as gRPC (it imports grpc/), never the CLI's layers.
    "http": {"cli", "config", "viewer", "discovery"},
    "viewer": {"scheduling", "models", "explain", "activations", "grpc", "http"},
    "discovery": {
        "scheduling",
        "models",
        "explain",
        "activations",
        "grpc",
        "http",
        "config",
        "cli",
    },
}


def _imports(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (function bodies and TYPE_CHECKING blocks
    included): `from a import b` names both `a` and `a.b` (`b` may be a module or a name)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def imported(path: Path) -> set[str]:
    """The first component after `explainserve.` of every import in `path`."""
    names = set()
    for module in _imports(path):
        parts = module.split(".")
        if parts[0] == "explainserve" and len(parts) > 1:
            names.add(parts[1])
    return names


def module_graph(root: Path) -> dict[str, set[str]]:
    """The modules of the package at `root` (dotted names, a package by its `__init__`) and,
    per module, the package's modules it imports (`from a import b`: `a`, and `a.b` when it is
    a module)."""

    def name(path: Path) -> str:
        parts = path.relative_to(root.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name(path): path for path in sorted(root.rglob("*.py"))}
    return {
        module: {target for target in _imports(path) if target in files and target != module}
        for module, path in files.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph`: its strongly connected components of more than one module
    (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    root = PACKAGE / layer
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    assert files
    wrong = {
        f"{path.relative_to(PACKAGE)} imports explainserve.{name}"
        for path in files
        for name in imported(path) & FORBIDDEN[layer]
    }
    assert not wrong, sorted(wrong)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from explainserve.models.registry import Registry\nimport explainserve.grpc\n")
    assert imported(bad) == {"models", "grpc"}


def test_no_import_circle_between_modules() -> None:
    """Inside a package or across packages, no module imports itself through others."""
    found = circles(module_graph(PACKAGE))
    assert not found, [" <-> ".join(circle) for circle in found]


def test_the_checker_sees_an_import_circle(tmp_path: Path) -> None:
    package = tmp_path / "explainserve"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from explainserve.sub.b import B\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from explainserve.sub import c\n"
    )
    (package / "sub" / "c.py").write_text("def f():\n    from explainserve.sub.a import A\n")
    (package / "leaf.py").write_text("from explainserve.sub import a\n")
    assert circles(module_graph(package)) == [
        ["explainserve.sub.a", "explainserve.sub.b", "explainserve.sub.c"]
    ]
