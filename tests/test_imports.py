"""No import cycle in the library: the import graph of threestudio/ and zeronvs_diffusion/ is acyclic — counting the
imports inside functions too, so a cycle cannot hide behind a lazy import — and every module imports first in a fresh
process."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("threestudio", "zeronvs_diffusion")


def library_modules() -> Dict[str, Path]:
    """Dotted module name → file, for every module of the library packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def library_imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """Library modules that ``name`` imports anywhere in its file (``from a import b`` counts ``a.b`` when that is a
    module, else ``a``), including a package's ``__init__`` for each dotted parent except ``name``'s own."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for k in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
                prefix = ".".join(parts[:k])
                # a module's own parent packages are initialised before it (not a cycle)
                if prefix in known and prefix != name and not name.startswith(prefix + "."):
                    found.add(prefix)
    return found


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of ``graph`` as a list of modules (empty when there is none)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_import_graph_has_no_cycle():
    modules = library_modules()
    graph = {name: library_imports(name, path, set(modules)) for name, path in modules.items()}
    assert "threestudio.data.posed_views" in graph and "zeronvs_diffusion.sources" in graph
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_process():
    """``python -c 'import M'`` for every library module M (a cycle fails when its module is imported first)."""
    failures = []
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1")
    for name in library_modules():
        if name.startswith("threestudio.kernels.") and subprocess.run(
            [sys.executable, "-c", "import triton"], capture_output=True, env=env
        ).returncode:
            continue  # the kernels import triton at their top; without triton only fast_paths may import them
        res = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                             env=env)
        if res.returncode:
            failures.append(f"{name}: {res.stderr.strip().splitlines()[-1]}")
    assert not failures, "\n".join(failures)
