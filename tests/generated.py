"""What the tests of generated files share: scripts/gen_proto.py loaded as a module (it is a
script, not a package), and `buf generate` of a template into a folder with the pinned plugins
the Makefile installs."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

from tools import missing_tool

ROOT = Path(__file__).resolve().parents[1]


def gen_proto() -> ModuleType:
    """scripts/gen_proto.py as a module."""
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def buf_generate(template: str, plugins: list[Path], out: Path) -> list[Path]:
    """`buf generate --template TEMPLATE -o OUT` from the repository; fails the test, saying
    what to run, when buf or a plugin is missing. Returns the files written, relative to
    `out`."""
    buf = ROOT / ".make" / "bin" / "buf"
    missing = [str(p.relative_to(ROOT)) for p in [buf, *plugins] if not p.exists()]
    if missing:
        missing_tool(f"missing {missing}: run `make clients .make/bin/buf` (make test does)")
    subprocess.run(
        [str(buf), "generate", "--template", template, "-o", str(out)],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
