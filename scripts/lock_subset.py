"""Prints the part of requirements.lock that some packages need: their entries (pins, markers,
hashes) and those of everything they depend on, transitively, as `pip install --require-hashes
--no-deps -r` takes them.

    python3 scripts/lock_subset.py requirements.lock --runtime      # what the server needs
    python3 scripts/lock_subset.py requirements.lock maturin uv     # named packages

`--runtime` starts from pyproject.toml's `[project] dependencies` (not the dev and test extras),
so the container image gets torch, grpcio, ... from the same hash-checked lock that `make install`
uses, without pytest, ruff or mypy. The dependency edges are the lock's own `# via` annotations
(uv writes, for every package, the packages that require it), so nothing is resolved again and
no network is needed. Standard library only: it runs in a bare build stage before anything is
installed. (No packaging tool exports a subset of a pip-style lock; uv's `export` works from a
uv.lock, which this project does not use.)
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503: `Foo_Bar.baz` -> `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    """One package of the lock: its lines (each pin with its hashes and annotations) and the
    packages that require it."""

    name: str
    lines: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Entry]:
    """The lock's entries by normalized name."""
    entries: dict[str, Entry] = {}
    current: Entry | None = None
    in_via = False
    for line in text.splitlines():
        pin = _PIN.match(line)
        if pin:
            # A package can have several entries, one per marker (scipy for Python 3.11 and
            # for newer ones): they are kept together, and pip picks by marker.
            name = normalize(pin.group(1))
            current = entries.setdefault(name, Entry(name))
            current.lines.append(line)
            in_via = False
            continue
        if current is None or not line.startswith(" "):
            current = None if not line.startswith(" ") else current
            continue
        current.lines.append(line)
        comment = line.strip()
        if comment.startswith("# via"):
            rest = comment.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.add(normalize(rest.split()[0]))
        elif in_via and comment.startswith("#   "):
            current.via.add(normalize(comment.removeprefix("#").strip().split()[0]))
        else:
            in_via = False
    return entries


def runtime_roots(pyproject: Path) -> list[str]:
    """The names in `[project] dependencies`."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    out = []
    for requirement in data["project"]["dependencies"]:
        match = _NAME.match(requirement)
        if match is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        out.append(normalize(match.group(1)))
    return out


def closure(entries: dict[str, Entry], roots: list[str]) -> list[str]:
    """`roots` and everything they require, transitively, in the lock's order."""
    children: dict[str, set[str]] = {}
    for entry in entries.values():
        for parent in entry.via:
            children.setdefault(parent, set()).add(entry.name)
    missing = [r for r in roots if r not in entries]
    if missing:
        raise KeyError(f"not in the lock: {', '.join(missing)}")
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(children.get(name, ()))
    return [name for name in entries if name in seen]


def subset(lock_text: str, roots: list[str]) -> str:
    """The lock's entries of `roots` and their dependencies, as a requirements file."""
    entries = parse_lock(lock_text)
    names = closure(entries, [normalize(r) for r in roots])
    return "".join("\n".join(entries[n].lines) + "\n" for n in names)


def main(argv: list[str] | None = None) -> int:
    """Prints the subset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path, help="requirements.lock")
    parser.add_argument("packages", nargs="*", help="package names (with or instead of --runtime)")
    parser.add_argument(
        "--runtime",
        action="store_true",
        help="start from pyproject.toml's dependencies (pyproject.toml beside the lock)",
    )
    args = parser.parse_args(argv)
    roots = list(args.packages)
    if args.runtime:
        roots += runtime_roots(args.lock.parent / "pyproject.toml")
    if not roots:
        parser.error("name packages or give --runtime")
    sys.stdout.write(subset(args.lock.read_text(encoding="utf-8"), roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
