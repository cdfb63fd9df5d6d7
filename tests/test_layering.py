"""The layering the README's Layout section states, checked from the source's imports (type-only
imports included: a layer that names another's types depends on it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "server" / "explainserve"

#: Per layer, the explainserve modules or packages it must never import.
FORBIDDEN: dict[str, set[str]] = {
    "vocabulary.py": {"scheduling", "models", "explain", "activations", "grpc", "config", "cli"},
    "settings.py": {"scheduling", "models", "explain", "activations", "grpc", "config", "cli"},
    "errors.py": {"scheduling", "models", "explain", "activations", "grpc", "config", "cli"},
    "scheduling": {"models", "explain", "activations", "grpc", "config", "cli"},
    "models": {"explain", "activations", "grpc", "config", "cli"},
    "explain": {"activations", "grpc", "config", "cli"},
    "activations": {"explain", "grpc", "config", "cli"},
    "grpc": {"cli", "viewer"},
    "viewer": {"scheduling", "models", "explain", "activations", "grpc"},
}


def imported(path: Path) -> set[str]:
    """The first component after `explainserve.` of every import in `path`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        for module in modules:
            parts = module.split(".")
            if parts[0] == "explainserve" and len(parts) > 1:
                names.add(parts[1])
    return names


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
